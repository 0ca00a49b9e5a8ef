"""AD-NeRF's audio networks: a per-frame conv encoder (AudioNet) and the temporal smoother (AudioAttNet)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

_SLOPE = 0.02  # AD-NeRF's LeakyReLU slope throughout


class AudioNet(nn.Module):
    """Audio feature window -> driving code (AD-NeRF's AudioNet).

    The central ``window`` frames are taken, then 4 ``Conv1d(k3, s2, p1)`` C->32->32->64->64 (LeakyReLU 0.02)
    halve the time axis (16 -> 1 for DeepSpeech windows), then ``64 -> 64`` (LeakyReLU) ``-> code_dim``.
    Any ``[B, W, C]`` with ``C == in_channels`` works: if more than one time step remains after the convolutions
    (``W > 16``) it is averaged away; shorter windows (HuBERT's ``[2, 1024]``) shrink to length 1 earlier.

    Args:
        in_channels: features per audio frame (DeepSpeech 29, wav2vec2 44, HuBERT 1024).
        window: frames taken from the centre of each input window.
        code_dim: width of the output code.
    """

    def __init__(self, in_channels: int = 29, window: int = 16, code_dim: int = 76) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.window = window
        self.code_dim = code_dim
        widths = [in_channels, 32, 32, 64, 64]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
        self.encoder_conv = nn.Sequential(*layers)
        self.encoder_fc = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(_SLOPE), nn.Linear(64, code_dim))

    def forward(self, windows: Float[Tensor, "batch frames channels"]) -> Float[Tensor, "batch code_dim"]:
        """Codes of a batch of windows."""
        if windows.shape[-1] != self.in_channels:
            raise ValueError(f"AudioNet expects {self.in_channels} channels, got windows of shape {windows.shape}.")
        frames = windows.shape[1]
        start = max((frames - self.window) // 2, 0)
        x = windows[:, start : start + self.window].transpose(1, 2)  # [B, C, W] for Conv1d
        x = self.encoder_conv(x).mean(dim=-1)  # length is 1 for AD-NeRF's windows; pooling covers longer ones
        return self.encoder_fc(x)


class AudioAttNet(nn.Module):
    """Attention smoothing of ``seq_len`` consecutive codes (AD-NeRF's AudioAttNet).

    ``Conv1d(k3, s1, p1)`` code_dim->16->8->4->2->1 (each LeakyReLU 0.02) over the sequence, ``Linear(seq_len,
    seq_len)``, softmax over the sequence; the output is the softmax-weighted sum of the codes. AD-NeRF's first
    conv reads 64 channels because its audio code was 64-d; here it reads ``code_dim``.

    Args:
        code_dim: width of each code.
        seq_len: number of consecutive frames smoothed together.
    """

    def __init__(self, code_dim: int = 76, seq_len: int = 8) -> None:
        super().__init__()
        self.code_dim = code_dim
        self.seq_len = seq_len
        widths = [code_dim, 16, 8, 4, 2, 1]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(_SLOPE)]
        self.attention_conv = nn.Sequential(*layers)
        self.attention_fc = nn.Linear(seq_len, seq_len)

    def weights(self, codes: Float[Tensor, "batch seq_len code_dim"]) -> Float[Tensor, "batch seq_len"]:
        """Softmax attention weights over the sequence."""
        y = self.attention_conv(codes.transpose(1, 2)).squeeze(1)  # [B, seq_len]
        return torch.softmax(self.attention_fc(y), dim=-1)

    def forward(self, codes: Float[Tensor, "batch seq_len code_dim"]) -> Float[Tensor, "batch code_dim"]:
        """Weighted sum of the codes."""
        return (self.weights(codes)[..., None] * codes).sum(dim=1)


@dataclass
class AudioEncoderConfig(InstantiateConfig):
    """The audio front end: AudioNet and the AudioAttNet smoother."""

    _target: type = field(default_factory=lambda: AudioEncoder)
    """Class this config builds."""
    in_channels: int = 29
    """Features per audio frame (DeepSpeech 29, wav2vec2 ``aud_eo`` 44, HuBERT ``aud_hu`` 1024)."""
    window: int = 16
    """Frames taken from the centre of each audio window."""
    code_dim: int = 76
    """Width of the driving code the field receives."""
    smoothing_seq_len: int = 8
    """Consecutive frames smoothed by AudioAttNet."""


class AudioEncoder(nn.Module):
    """Audio windows -> 76-d driving codes, per frame or smoothed over ``smoothing_seq_len`` frames."""

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_net = AudioNet(config.in_channels, config.window, config.code_dim)
        self.att_net = AudioAttNet(config.code_dim, config.smoothing_seq_len)

    def encode(self, windows: Float[Tensor, "batch frames channels"]) -> Float[Tensor, "batch code_dim"]:
        """One code per audio window."""
        return self.audio_net(windows)

    def encode_smoothed(
        self, windows_seq: Float[Tensor, "batch seq_len frames channels"]
    ) -> Float[Tensor, "batch code_dim"]:
        """Code of the sequence's frames smoothed by attention (the centre frame is the one being rendered)."""
        batch, seq_len = windows_seq.shape[:2]
        codes = self.audio_net(windows_seq.flatten(0, 1)).view(batch, seq_len, -1)
        return self.att_net(codes)

    def forward(self, windows: Float[Tensor, "batch frames channels"]) -> Float[Tensor, "batch code_dim"]:
        """Same as :meth:`encode`."""
        return self.encode(windows)
