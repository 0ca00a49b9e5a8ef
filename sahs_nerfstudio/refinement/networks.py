"""Stage II networks: the identity encoder, SPADE residual blocks and the 2-D texture refiner.

Scales (``c1, c2, c3 = RefinerNetworkConfig.channels``, published ``64, 128, 256``; sizes relative
to the padded input):

=====================  ===========  ==========  ====================================
part                   input        output      modulated by identity feature
=====================  ===========  ==========  ====================================
identity stem          photo 1/1    c1 @ 1/2    (conv3x3 + avgpool)
identity block 1       c1 @ 1/2     c1 @ 1/2    -> ``id[0]`` = c1 @ 1/2
identity block 2       c1 @ 1/2     c2 @ 1/4    -> ``id[1]`` = c2 @ 1/4 (downsampling)
identity block 3       c2 @ 1/4     c3 @ 1/8    -> ``id[2]`` = c3 @ 1/8 (downsampling)
refiner stem           render 1/1   c1 @ 1/2    (conv3x3 + avgpool)
SPADE block 1 (down)   c1 @ 1/2     c1 @ 1/4    ``id[0]`` (c1 @ 1/2)
SPADE block 2 (down)   c1 @ 1/4     c2 @ 1/8    ``id[1]`` (c2 @ 1/4)
SPADE block 3          c2 @ 1/8     c3 @ 1/8    ``id[2]`` (c3 @ 1/8)  [+ audio code]
SPADE block 4 (up)     c3 @ 1/8     c3 @ 1/4    ``id[2]`` (c3 @ 1/8)  [+ audio code]
SPADE block 5 (up)     c3 @ 1/4     c2 @ 1/2    ``id[1]`` (c2 @ 1/4)
SPADE block 6 (up)     c2 @ 1/2     c1 @ 1/1    ``id[0]`` (c1 @ 1/2)
output                 c1 @ 1/1     3 @ 1/1     (conv3x3, clamp to [0, 1])
=====================  ===========  ==========  ====================================

Two architectures (``RefinerNetworkConfig.architecture``):

- ``residual`` (the default): the network predicts a *correction* of the render. The stem's
  full-resolution features (before its pooling) are concatenated to block 6's output (a U-Net
  skip, so corrections can be as fine as a pixel), a head (conv3x3 + LeakyReLU) and a
  zero-initialised conv3x3 give ``delta``, and the output is ``render + delta`` (times a learned
  per-pixel mask in [0, 1] with ``blend_mask``). An untrained refiner is therefore exactly the
  identity: training starts from the Stage-I render instead of having to learn to reproduce it,
  which the published network, squeezed through 1/8 resolution, does blurrily.
- ``published``: the table above, the output conv predicting the image itself.

Every SPADE block is modulated at its *input* resolution and resamples at its end (average
pooling down, upsampling up), so each block sees the identity feature of exactly its map size
and its channel count mirrors the identity pyramid. When the identity photo and the render
have different sizes, each identity feature is bilinearly resized to the block's map size.

Any input size works: the render (and the identity photo) are padded (reflect, or replicate
where the image is too small to reflect) at the bottom/right to a multiple of the total stride
8, and at least 16 so the 1/8 map has more than one pixel for instance normalisation; the
output is cropped back to exactly the input size.

Audio variant (``audio=True``): an AudioNet-like Conv1d stack turns a ``[window, audio_dim]``
feature window (published: 16 x 29 DeepSpeech) into a ``audio_code_dim`` (64) code, tiled over
the deepest (1/8) map and either concatenated to the deepest identity feature
(``audio_mode="concat"``, the default: blocks 3 and 4 are conditioned on ``c3 + 64`` channels)
or used instead of it (``audio_mode="replace"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

TOTAL_STRIDE = 8
"""Product of all down-sampling factors of the identity encoder and the refiner."""
MIN_PADDED_SIZE = 16
"""Smallest padded side, so the deepest (1/8) map is at least 2x2 for instance normalisation."""


@dataclass
class RefinerNetworkConfig:
    """Architecture and sizes of the Stage II refiner.

    Defaults suit a CPU: the residual refiner at a quarter of the published widths (about 0.3 s of
    one core per 128x128 training step, against 2.7 s). The published network is
    ``architecture="published", channels=(64, 128, 256), spade_hidden=128``.
    """

    channels: tuple[int, int, int] = (16, 32, 64)
    """Channels at 1/2, 1/4 and 1/8 resolution, shared by the identity encoder pyramid and the refiner blocks (published 64, 128, 256)."""
    spade_hidden: int = 16
    """Hidden channels of the shared conv inside each SPADE normalisation (published 128)."""
    leaky_slope: float = 0.2
    """Negative slope of the LeakyReLU activations of the encoder and refiner (published 0.2)."""
    use_spectral_norm: bool = True
    """Spectral normalisation on the convolutions of the SPADE residual blocks (published on)."""
    upsample_mode: Literal["nearest", "bilinear"] = "nearest"
    """Interpolation used by the up-sampling blocks."""
    architecture: Literal["residual", "published"] = "residual"
    """``residual``: predict a correction of the render through a full-resolution skip, zero-initialised so an untrained refiner is the identity (module docstring); ``published``: the published network without skip connections, which predicts the image itself. Checkpoints written before this field existed load as ``published``."""
    blend_mask: bool = False
    """``residual`` only: gate the correction by a learned per-pixel mask in [0, 1] (``render + mask * delta``)."""
    residual_output: bool = False
    """``published`` only: add the render to the output conv's result (a skip without the zero initialisation; kept so checkpoints that used it still load)."""
    audio: bool = False
    """Audio variant: condition the deepest blocks on a code computed from an audio window."""
    audio_dim: int = 29
    """Feature size per audio frame of the window (29 for DeepSpeech logits)."""
    audio_window: int = 16
    """Frames per audio window (published 16)."""
    audio_conv_channels: tuple[int, ...] = (32, 32, 64, 64)
    """Output channels of the AudioNet Conv1d stack (kernel 3, stride 2); the time axis is average-pooled to 1 at the end when the window is longer than ``2**len(...)``."""
    audio_leaky_slope: float = 0.02
    """Negative slope of the AudioNet LeakyReLUs (AD-NeRF uses 0.02)."""
    audio_code_dim: int = 64
    """Size of the audio code tiled over the deepest map (published 64)."""
    audio_mode: Literal["concat", "replace"] = "concat"
    """``concat``: deepest conditioning = [identity feature, tiled audio code]; ``replace``: the tiled audio code alone conditions the two deepest blocks."""


def pad_to_stride(x: Tensor, stride: int = TOTAL_STRIDE, min_size: int = MIN_PADDED_SIZE) -> tuple[Tensor, int, int]:
    """Pads ``x`` (``[B, C, H, W]``) at the bottom/right to a multiple of ``stride`` (at least ``min_size``).

    Reflection padding is used where the image is large enough, replication otherwise.
    Returns the padded tensor and the original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph = max(-(-h // stride) * stride, min_size) - h
    pw = max(-(-w // stride) * stride, min_size) - w
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


def _conv(cin: int, cout: int, k: int, sn: bool, bias: bool = True) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    return spectral_norm(conv) if sn else conv


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``InstanceNorm(x) * (1 + gamma(c)) + beta(c)``.

    The conditioning map ``c`` is resized (bilinear) to the size of ``x`` when they differ.
    """

    def __init__(self, norm_channels: int, cond_channels: int, hidden: int, leaky_slope: float) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(norm_channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.LeakyReLU(leaky_slope))
        self.gamma = nn.Conv2d(hidden, norm_channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_channels, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if cond.shape[-2:] != x.shape[-2:]:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if cond.shape[0] != x.shape[0]:
            cond = cond.expand(x.shape[0], -1, -1, -1)
        h = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """SPADE residual block, modulated at its input resolution, resampling at its end."""

    def __init__(
        self,
        cin: int,
        cout: int,
        cond_channels: int,
        resample: Literal["none", "down", "up"],
        config: RefinerNetworkConfig,
    ) -> None:
        super().__init__()
        cmid = min(cin, cout)
        sn = config.use_spectral_norm
        hid, slope = config.spade_hidden, config.leaky_slope
        self.resample = resample
        self.upsample_mode = config.upsample_mode
        self.norm_0 = SPADE(cin, cond_channels, hid, slope)
        self.conv_0 = _conv(cin, cmid, 3, sn)
        self.norm_1 = SPADE(cmid, cond_channels, hid, slope)
        self.conv_1 = _conv(cmid, cout, 3, sn)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, cond_channels, hid, slope)
            self.conv_s = _conv(cin, cout, 1, sn, bias=False)
        self.act = nn.LeakyReLU(slope)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            if self.upsample_mode == "nearest":
                return F.interpolate(x, scale_factor=2, mode="nearest")
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(self.act(self.norm_0(x, cond)))
        dx = self.conv_1(self.act(self.norm_1(dx, cond)))
        return self._resample(shortcut + dx)


class ResBlock(nn.Module):
    """Plain residual block of the identity encoder (optionally halving the resolution)."""

    def __init__(self, cin: int, cout: int, down: bool, leaky_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LeakyReLU(leaky_slope),
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.LeakyReLU(leaky_slope),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.down = down

    def forward(self, x: Tensor) -> Tensor:
        out = self.shortcut(x) + self.body(x)
        return F.avg_pool2d(out, 2) if self.down else out


class IdentityEncoder(nn.Module):
    """Identity photo -> features ``[c1 @ 1/2, c2 @ 1/4, c3 @ 1/8]``."""

    def __init__(self, config: RefinerNetworkConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.channels
        self.stem = nn.Conv2d(3, c1, 3, padding=1)
        self.block1 = ResBlock(c1, c1, down=False, leaky_slope=config.leaky_slope)
        self.block2 = ResBlock(c1, c2, down=True, leaky_slope=config.leaky_slope)
        self.block3 = ResBlock(c2, c3, down=True, leaky_slope=config.leaky_slope)

    def forward(self, photo: Tensor) -> list[Tensor]:
        x = F.avg_pool2d(self.stem(photo), 2)
        f1 = self.block1(x)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        return [f1, f2, f3]


class AudioEncoder(nn.Module):
    """AudioNet-like encoder: ``[B, window, audio_dim]`` -> ``[B, audio_code_dim]``."""

    def __init__(self, config: RefinerNetworkConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = config.audio_dim
        for cout in config.audio_conv_channels:
            layers += [nn.Conv1d(cin, cout, 3, stride=2, padding=1), nn.LeakyReLU(config.audio_leaky_slope)]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(cin, config.audio_code_dim),
            nn.LeakyReLU(config.audio_leaky_slope),
            nn.Linear(config.audio_code_dim, config.audio_code_dim),
        )
        self.window = config.audio_window
        self.audio_dim = config.audio_dim

    def forward(self, audio: Tensor) -> Tensor:
        if audio.ndim == 2:
            audio = audio[None]
        if audio.ndim != 3 or audio.shape[-1] != self.audio_dim:
            raise ValueError(
                f"audio window: expected shape [B, {self.window}, {self.audio_dim}], found {tuple(audio.shape)}"
            )
        x = self.convs(audio.transpose(1, 2))  # [B, C, T']
        x = x.mean(dim=-1)
        return self.fc(x)


class RefinerNetwork(nn.Module):
    """The Stage II texture refiner (identity encoder + SPADE encoder/decoder [+ audio encoder])."""

    def __init__(self, config: RefinerNetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RefinerNetworkConfig()
        if len(config.channels) != 3:
            raise ValueError(f"RefinerNetworkConfig.channels: expected 3 values, found {config.channels}")
        c1, c2, c3 = config.channels
        self.identity_encoder = IdentityEncoder(config)
        deep_cond = c3
        self.audio_encoder: AudioEncoder | None = None
        if config.audio:
            self.audio_encoder = AudioEncoder(config)
            deep_cond = c3 + config.audio_code_dim if config.audio_mode == "concat" else config.audio_code_dim
        self.stem = nn.Conv2d(3, c1, 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                SPADEResBlock(c1, c1, c1, "down", config),
                SPADEResBlock(c1, c2, c2, "down", config),
                SPADEResBlock(c2, c3, deep_cond, "none", config),
                SPADEResBlock(c3, c3, deep_cond, "up", config),
                SPADEResBlock(c3, c2, c2, "up", config),
                SPADEResBlock(c2, c1, c1, "up", config),
            ]
        )
        # identity-pyramid level (0: 1/2, 1: 1/4, 2: 1/8) conditioning each block
        self.block_levels = (0, 1, 2, 2, 1, 0)
        self.act = nn.LeakyReLU(config.leaky_slope)
        self.out: nn.Conv2d | None = None
        self.head: nn.Module | None = None
        self.delta: nn.Conv2d | None = None
        self.mask: nn.Conv2d | None = None
        if config.architecture == "published":
            self.out = nn.Conv2d(c1, 3, 3, padding=1)
        else:
            self.head = nn.Sequential(nn.Conv2d(2 * c1, c1, 3, padding=1), nn.LeakyReLU(config.leaky_slope))
            self.delta = nn.Conv2d(c1, 3, 3, padding=1)
            # zero weights and bias: the untrained refiner returns its input exactly
            for param in self.delta.parameters():
                nn.init.zeros_(param)
            if config.blend_mask:
                self.mask = nn.Conv2d(c1, 1, 3, padding=1)

    def encode_identity(self, photo: Tensor) -> list[Tensor]:
        """Identity photo ``[B or 1, 3, H, W]`` in [0, 1] -> feature pyramid (any photo size)."""
        if photo.ndim == 3:
            photo = photo[None]
        padded, _, _ = pad_to_stride(photo)
        return self.identity_encoder(padded)

    def forward(
        self,
        render: Tensor,
        identity: Union[Tensor, Sequence[Tensor]],
        audio: Tensor | None = None,
        clamp: bool = True,
    ) -> Tensor:
        """Refines ``render`` (``[B, 3, H, W]`` in [0, 1]); returns ``[B, 3, H, W]`` in [0, 1].

        Args:
            render: Stage-I renders.
            identity: The identity photo (``[1 or B, 3, h, w]``, any size) or its precomputed
                :meth:`encode_identity` pyramid (cache it when refining many frames).
            audio: ``[B, window, audio_dim]`` audio windows; required by the audio variant.
            clamp: Clamp the output to [0, 1] (the trainer takes its loss before the clamp so
                pixels outside the range still get a gradient).
        """
        if render.ndim != 4 or render.shape[1] != 3:
            raise ValueError(f"render: expected shape [B, 3, H, W], found {tuple(render.shape)}")
        feats = self.encode_identity(identity) if isinstance(identity, Tensor) else list(identity)
        padded, h, w = pad_to_stride(render)
        deep = feats[2]
        if self.audio_encoder is not None:
            if audio is None:
                raise ValueError("audio: this refiner is the audio variant and needs an audio window per frame")
            code = self.audio_encoder(audio.to(render.dtype))
            size = (padded.shape[-2] // TOTAL_STRIDE, padded.shape[-1] // TOTAL_STRIDE)
            tiled = code[:, :, None, None].expand(-1, -1, *size)
            if deep.shape[-2:] != size:
                deep = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)
            if deep.shape[0] != tiled.shape[0]:
                deep = deep.expand(tiled.shape[0], -1, -1, -1)
            deep = torch.cat([deep, tiled], dim=1) if self.config.audio_mode == "concat" else tiled
        conds = [feats[0], feats[1], deep]
        stem = self.stem(padded)
        x = F.avg_pool2d(stem, 2)
        for block, level in zip(self.blocks, self.block_levels, strict=True):
            x = block(x, conds[level])
        out = self._residual(padded, stem, x) if self.out is None else self._published(padded, x)
        out = out[:, :, :h, :w]
        return out.clamp(0.0, 1.0) if clamp else out

    def _published(self, padded: Tensor, x: Tensor) -> Tensor:
        assert self.out is not None
        out = self.out(self.act(x))
        return out + padded if self.config.residual_output else out

    def _residual(self, padded: Tensor, stem: Tensor, x: Tensor) -> Tensor:
        assert self.head is not None and self.delta is not None
        h = self.head(torch.cat([self.act(x), self.act(stem)], dim=1))
        delta = self.delta(h)
        if self.mask is not None:
            delta = torch.sigmoid(self.mask(h)) * delta
        return padded + delta
