"""The observation-to-canonical deformation: a bounded warp ``x' = x + tanh(.)`` and a hyper-space ("ambient") MLP.

Both MLPs read the same input ``[PE(x), driving code, PE3(pose)]`` built from the observation-space point ``x``
(the hyper MLP does not see ``x'``), so the input is encoded once and shared.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from sahs_nerfstudio.fields.encoding import positional_encoding
from sahs_nerfstudio.fields.mlp_config import SAHSMLPFieldConfig


class DeformationOutput(NamedTuple):
    """What :class:`HyperDeformation` returns for a batch of points."""

    x_canon: Float[Tensor, "*bs 3"]
    """Canonical position ``x' = x + offset`` (``x`` itself when the warp is off)."""
    ambient: Float[Tensor, "*bs num_ambient"]
    """Hyper-space coordinates ``w`` (last dimension 0 when the hyper MLP is off)."""
    offset: Float[Tensor, "*bs 3"]
    """``x' - x``; each component lies in (-1, 1) because of the tanh."""


def _small_last_layer(mlp: MLP, scale: float) -> None:
    """Start near the identity warp / zero ambient code (HyperNeRF's choice) instead of a random offset."""
    if scale <= 0:
        return
    last = mlp.layers[-1]
    assert isinstance(last, nn.Linear)
    nn.init.uniform_(last.weight, -scale, scale)
    nn.init.zeros_(last.bias)


def encode_conditioning(
    code: Float[Tensor, "*cbs code_dim"] | None,
    pose: Float[Tensor, "*cbs pose_dim"] | None,
    pose_encoding: nn.Module | None,
    batch_shape: torch.Size,
) -> Float[Tensor, "*bs cond_dim"] | None:
    """``[code, PE(pose)]`` encoded at the caller's (usually per-ray) shape, then broadcast to ``batch_shape``.

    Encoding the pose before broadcasting means PE3 runs once per ray, not once per sample; ``expand`` makes no
    copy, the later ``cat`` is the only one.
    """
    parts = []
    if code is not None:
        parts.append(code.expand(*batch_shape, code.shape[-1]))
    if pose_encoding is not None:
        if pose is None:
            raise ValueError("This field is pose-conditioned (use_pose) but no pose was given.")
        pose_enc = pose_encoding(pose)
        parts.append(pose_enc.expand(*batch_shape, pose_enc.shape[-1]))
    if not parts:
        return None
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


class HyperDeformation(nn.Module):
    """Warp and hyper MLPs of SAHS; one instance may be shared by the coarse and the fine canonical fields.

    Args:
        config: the field configuration (resolved for its driver inside).
    """

    def __init__(self, config: SAHSMLPFieldConfig) -> None:
        super().__init__()
        self.config = config = config.resolved()
        assert config.position_frequencies is not None and config.num_ambient_dims is not None
        self.num_ambient = config.num_ambient_dims if config.use_hyper else 0
        self.position_encoding = positional_encoding(3, config.position_frequencies, include_input=True)
        self.pose_encoding = (
            positional_encoding(config.pose_dim, config.pose_frequencies, include_input=False)
            if config.use_pose
            else None
        )
        in_dim = config.deformation_in_dim
        self.warp: MLP | None = None
        self.hyper: MLP | None = None
        if config.use_warp:
            # depth hidden layers of ReLU + a linear 3-d output layer; tanh bounds each offset component to (-1, 1).
            self.warp = MLP(
                in_dim=in_dim,
                num_layers=config.warp_depth + 1,
                layer_width=config.warp_width,
                out_dim=3,
                skip_connections=tuple(config.warp_skips),  # type: ignore[arg-type]
                activation=nn.ReLU(),
                out_activation=nn.Tanh(),
                implementation="torch",
            )
            _small_last_layer(self.warp, config.deformation_init_scale)
        if config.use_hyper:
            # Linear output: ambient coordinates are unbounded.
            self.hyper = MLP(
                in_dim=in_dim,
                num_layers=config.hyper_depth + 1,
                layer_width=config.hyper_width,
                out_dim=self.num_ambient,
                skip_connections=tuple(config.hyper_skips),  # type: ignore[arg-type]
                activation=nn.ReLU(),
                out_activation=None,
                implementation="torch",
            )
            _small_last_layer(self.hyper, config.deformation_init_scale)

    def forward(
        self,
        x: Float[Tensor, "*bs 3"],
        code: Float[Tensor, "*cbs code_dim"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
    ) -> DeformationOutput:
        """Deform observation-space points.

        Args:
            x: observation-space positions.
            code: driving code, broadcastable to ``x``'s batch shape (e.g. ``[N, 1, C]`` for ``x`` ``[N, S, 3]``).
            pose: raw 6-d pose code, broadcastable like ``code``; required when ``use_pose``.
        """
        batch_shape = x.shape[:-1]
        if self.warp is None and self.hyper is None:
            return DeformationOutput(x, x.new_zeros(*batch_shape, 0), torch.zeros_like(x))
        cond = encode_conditioning(code, pose, self.pose_encoding, batch_shape)
        assert cond is not None
        inp = torch.cat([self.position_encoding(x), cond], dim=-1)
        if self.warp is not None:
            offset = self.warp(inp)
            x_canon = x + offset
        else:
            offset = torch.zeros_like(x)
            x_canon = x
        ambient = self.hyper(inp) if self.hyper is not None else x.new_zeros(*batch_shape, 0)
        return DeformationOutput(x_canon, ambient, offset)
