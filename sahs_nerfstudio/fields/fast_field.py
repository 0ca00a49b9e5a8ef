"""The ``sahs-fast`` field: SAHS's hyper-space deformation and semantic head on multiresolution grids.

Per sample, as for every :class:`~sahs_nerfstudio.fields.base.SAHSFieldBase`, the inputs are the
observation-space point ``x``, the driving code ``a`` (``ray_samples.metadata["driving_code"]``) and the raw
head-pose code ``p`` (``["pose"]``). What changes is how each network reads space:

* **deformation**: a small hash grid on ``x`` (nerfstudio :class:`HashEncoding`; tcnn on a GPU, torch on a CPU)
  concatenated with ``[a, PE3(p)?]`` feeds one small MLP giving the warp offset (``x' = x + s * tanh(.)``) and
  the hyper-space ("ambient") coordinates ``w = tanh(.)`` in ``(-1, 1)``;
* **canonical density**: a 3-D hash grid on ``x'`` plus, for the hyper-space dimensions, small multiresolution
  2-D planes pairing each spatial axis of ``x'`` with each ambient coordinate, ``(x'_i, w_k)`` (K-planes style;
  the way RAD-NeRF gives the ambient coordinates their own grid), optionally with ``[a, PE3(p)]`` as in the
  published configurations, into a one-hidden-layer MLP giving ``trunc_exp`` density and a geometry feature;
* **colour** ``[feature, SH(d)]`` and **semantic logits** ``feature -> 12`` from small MLPs.

The outputs are those of the ``sahs`` field (RGB, DENSITY, SEMANTICS logits, ``"deformation"`` ``|x' - x|``,
``"ambient"`` ``w``), so the SAHS model's compositing (background at infinity with its label), losses and
metrics apply unchanged. Points outside the scene box have zero density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import HashEncoding, SHEncoding
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from sahs_nerfstudio.compat.encodings import TorchHashEncoding
from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY, SAHSConditioningConfig, SAHSFieldBase
from sahs_nerfstudio.fields.encoding import positional_encoding
from sahs_nerfstudio.kernels.hash_grid import CompiledHashEncoding

Implementation = Literal["tcnn", "torch"]
GridKernel = Literal["compiled", "torch"]


@dataclass
class SAHSFastFieldConfig(SAHSConditioningConfig):
    """Sizes of the ``sahs-fast`` field. Defaults: 512x512 talking-head video on one GPU.

    The driver and the switches are :class:`~sahs_nerfstudio.fields.base.SAHSConditioningConfig`'s, so the same
    ablations (no warp, no hyper, neither) exist for both methods. Use :meth:`for_driver`.
    """

    _target: type = field(default_factory=lambda: SAHSFastField)
    """Class this config builds (``setup(aabb=...)``)."""
    implementation: Implementation = "tcnn"
    """Hash grids, SH encoding, colour and semantic MLPs: ``tcnn`` (falls back to torch when tiny-cuda-nn is
    absent) or ``torch``. The deformation and density MLPs are torch (they take per-ray conditioning)."""
    grid_kernel: GridKernel = "compiled"
    """CPU path of the torch hash grids (this field's and the proposal networks'): ``compiled``, the fused C++
    kernel of ``kernels/hash_grid.cpp`` (built on first use; the torch path, with one message, when it cannot be
    built), or ``torch``, the plain reference it is tested against. No effect on tcnn grids or on a GPU."""
    # Canonical 3-D grid on x'.
    num_levels: int = 16
    """Levels of the canonical hash grid."""
    base_res: int = 16
    """Coarsest resolution of the canonical hash grid (cells across the scene box)."""
    max_res: int = 2048
    """Finest resolution of the canonical hash grid (2048 across the box ~ one cell per 512x512 pixel)."""
    log2_hashmap_size: int = 19
    """log2 of the entries per level of the canonical hash grid."""
    features_per_level: int = 2
    """Features per level of the hash grids."""
    # Hyper-space planes (x'_i, w_k).
    plane_resolutions: tuple[int, ...] = (32, 64, 128, 256)
    """Side of each multiresolution level of the (x'_i, w_k) planes (dense 2-D grids, bilinear)."""
    plane_channels: int = 4
    """Features per plane level."""
    plane_init_std: float = 0.01
    """Planes start as ``randn * plane_init_std``."""
    # Deformation (warp + hyper) network on x.
    deform_num_levels: int = 8
    """Levels of the deformation network's hash grid on ``x``."""
    deform_max_res: int = 256
    """Finest resolution of that grid (deformations are smooth)."""
    deform_log2_hashmap_size: int = 17
    """log2 of the entries per level of that grid."""
    deform_depth: int = 2
    """Hidden layers of the deformation MLP."""
    deform_width: int = 64
    """Width of the deformation MLP."""
    max_offset: float = 0.1
    """Bound of each warp offset component (scene units; the synthetic head is about 0.1 in radius)."""
    # Heads.
    hidden_dim: int = 64
    """Width of the density MLP (one hidden layer)."""
    geo_feat_dim: int = 15
    """Geometry feature passed to the colour and semantic heads."""
    colour_depth: int = 2
    """Hidden layers of the colour MLP."""
    colour_width: int = 64
    """Width of the colour MLP."""
    semantic_depth: int = 1
    """Hidden layers of the semantic MLP."""
    semantic_width: int = 64
    """Width of the semantic MLP."""
    direction_levels: int = 4
    """Spherical-harmonic levels of the view-direction encoding."""
    density_bias: float = -1.0
    """Added to the raw density before ``trunc_exp`` (nerfacto's ``-1``: starts mostly empty)."""

    def check(self) -> None:
        super().check()
        if self.max_res < self.base_res or self.deform_max_res < self.base_res:
            raise ValueError("max_res and deform_max_res must be >= base_res.")


def _hash_grid(
    num_levels: int, base_res: int, max_res: int, log2_size: int, feats: int, impl: str, kernel: GridKernel
) -> HashEncoding:
    encoding = CompiledHashEncoding if kernel == "compiled" else TorchHashEncoding
    return encoding(
        num_levels=num_levels,
        min_res=base_res,
        max_res=max_res,
        log2_hashmap_size=log2_size,
        features_per_level=feats,
        implementation=impl,  # type: ignore[arg-type]
    )


def per_ray(cond: Float[Tensor, "*bs S C"]) -> Float[Tensor, "*bs S_or_1 C"]:
    """``cond`` with a samples axis that only repeats each ray's row (stride 0: how nerfstudio's ray samples carry
    metadata) cut to one sample, so that the conditioning layers run once per ray and broadcast over the samples."""
    if cond.dim() >= 3 and cond.shape[-2] > 1 and cond.stride(-2) == 0:
        return cond[..., :1, :]
    return cond


class ConditionedMLP(nn.Module):
    """A ReLU MLP on ``[per-sample features, per-ray conditioning]`` whose first layer is split in two, so the
    conditioning part (driving code, pose encoding: ~100 values) is multiplied once per ray, not once per sample.
    Equivalent to an MLP on the concatenation; always torch (these MLPs are tiny).

    Args:
        in_dim: per-sample input width.
        cond_dim: per-ray conditioning width (0: none).
        num_layers: linear layers in total (>= 2).
        width: hidden width.
        out_dim: output width (linear output).
    """

    def __init__(self, in_dim: int, cond_dim: int, num_layers: int, width: int, out_dim: int) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError("ConditionedMLP needs at least 2 layers.")
        self.first = nn.Linear(in_dim, width)
        self.cond = nn.Linear(cond_dim, width, bias=False) if cond_dim > 0 else None
        self.rest = MLP(
            in_dim=width,
            num_layers=num_layers - 1,
            layer_width=width,
            out_dim=out_dim,
            activation=nn.ReLU(),
            out_activation=None,
            implementation="torch",
        )

    @property
    def last(self) -> nn.Linear:
        layer = self.rest.layers[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(
        self, x: Float[Tensor, "*bs in_dim"], cond: Float[Tensor, "*cbs cond_dim"] | None, rows: Tensor | None = None
    ) -> Tensor:
        """``rows`` (``[M]``, with ``x`` ``[M, in_dim]``): each point's row of ``cond`` ``[R, cond_dim]``, so sparse
        points still pay for the conditioning once per ray; None: ``cond`` broadcasts against ``x``."""
        h = self.first(x)
        if self.cond is not None:
            assert cond is not None
            c = self.cond(cond)
            h = h + (c if rows is None else c.index_select(0, rows))  # broadcast [N, 1, W] over samples [N, S, W]
        return self.rest(F.relu(h))


class HyperPlanes(nn.Module):
    """Multiresolution dense 2-D feature planes over ``(x'_i, w_k)`` for every spatial axis ``i`` and ambient ``k``.

    Coordinates are in ``[-1, 1]`` (both ``x'`` normalised to the scene box and ``w``); lookups are bilinear with
    the border value outside. Output: the features of every plane and level, concatenated
    (``3 * num_ambient * channels * len(resolutions)`` values).
    """

    def __init__(self, num_ambient: int, resolutions: tuple[int, ...], channels: int, init_std: float) -> None:
        super().__init__()
        self.num_ambient = num_ambient
        self.num_planes = 3 * num_ambient
        self.channels = channels
        # One tensor per level, holding all planes as grid_sample's batch dimension: [P, C, R(w), R(x)].
        self.levels = nn.ParameterList(
            [nn.Parameter(torch.randn(self.num_planes, channels, r, r) * init_std) for r in resolutions]
        )

    def get_out_dim(self) -> int:
        return self.num_planes * self.channels * len(self.levels)

    def forward(
        self, x_unit: Float[Tensor, "*bs 3"], ambient: Float[Tensor, "*bs num_ambient"]
    ) -> Float[Tensor, "*bs out_dim"]:
        batch_shape = x_unit.shape[:-1]
        m = int(math.prod(batch_shape))
        x = x_unit.reshape(m, 1, 3).expand(m, self.num_ambient, 3)
        w = ambient.reshape(m, self.num_ambient, 1).expand(m, self.num_ambient, 3)
        # Plane (k, i) reads (u, v) = (x'_i, w_k); planes ordered ambient-major.
        coords = torch.stack([x, w], dim=-1).reshape(m, self.num_planes, 2).permute(1, 0, 2)[:, None]
        feats = [
            F.grid_sample(level, coords.to(level.dtype), mode="bilinear", padding_mode="border", align_corners=True)
            for level in self.levels
        ]  # each [P, C, 1, m]
        out = torch.cat(feats, dim=1)[:, :, 0]  # [P, C * L, m]
        return out.permute(2, 0, 1).reshape(*batch_shape, self.get_out_dim())


class SAHSFastField(SAHSFieldBase[SAHSFastFieldConfig]):
    """Grid-based SAHS field (one level; proposal networks do the coarse sampling).

    Args:
        config: the field configuration (resolved for its driver inside).
        aabb: the scene box ``[[min xyz], [max xyz]]``; all grids cover it.
    """

    def __init__(self, config: SAHSFastFieldConfig, aabb: Float[Tensor, "2 3"] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if aabb is None:
            aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        impl = cfg.implementation
        self.num_ambient = cfg.ambient_dim
        self.pose_encoding = (
            positional_encoding(cfg.pose_dim, cfg.pose_frequencies, include_input=False) if cfg.use_pose else None
        )

        # Deformation network on x (absent when both warp and hyper are off): [grid(x)] + per-ray [a, PE(p)?].
        self.deform_grid: HashEncoding | None = None
        self.deform_mlp: ConditionedMLP | None = None
        deform_out = (3 if cfg.use_warp else 0) + self.num_ambient
        if deform_out > 0:
            self.deform_grid = _hash_grid(
                cfg.deform_num_levels,
                cfg.base_res,
                cfg.deform_max_res,
                cfg.deform_log2_hashmap_size,
                cfg.features_per_level,
                impl,
                cfg.grid_kernel,
            )
            self.deform_mlp = ConditionedMLP(
                self.deform_grid.get_out_dim(),
                cfg.code_dim + cfg.pose_encoding_dim,
                cfg.deform_depth + 1,
                cfg.deform_width,
                deform_out,
            )
            if cfg.deformation_init_scale > 0:
                nn.init.uniform_(self.deform_mlp.last.weight, -cfg.deformation_init_scale, cfg.deformation_init_scale)
                nn.init.zeros_(self.deform_mlp.last.bias)

        # Canonical density: [grid(x'), planes(x', w)] + per-ray [PE(p)?, a?].
        self.grid = _hash_grid(
            cfg.num_levels,
            cfg.base_res,
            cfg.max_res,
            cfg.log2_hashmap_size,
            cfg.features_per_level,
            impl,
            cfg.grid_kernel,
        )
        self.planes = (
            HyperPlanes(self.num_ambient, cfg.plane_resolutions, cfg.plane_channels, cfg.plane_init_std)
            if self.num_ambient > 0
            else None
        )
        self.density_mlp = ConditionedMLP(
            self.grid.get_out_dim() + (self.planes.get_out_dim() if self.planes is not None else 0),
            cfg.pose_encoding_dim + (cfg.code_dim if cfg.canonical_code else 0),
            2,
            cfg.hidden_dim,
            1 + cfg.geo_feat_dim,
        )
        self.direction_encoding = SHEncoding(levels=cfg.direction_levels, implementation=impl)
        self.colour_mlp = MLP(
            in_dim=cfg.geo_feat_dim + self.direction_encoding.get_out_dim(),
            num_layers=cfg.colour_depth + 1,
            layer_width=cfg.colour_width,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
            implementation=impl,
        )
        self.semantic_mlp = (
            MLP(
                in_dim=cfg.geo_feat_dim,
                num_layers=cfg.semantic_depth + 1,
                layer_width=cfg.semantic_width,
                out_dim=cfg.num_classes,
                activation=nn.ReLU(),
                out_activation=None,
                implementation=impl,
            )
            if cfg.use_semantics
            else None
        )

    # ------------------------------------------------------------------------------------------

    def unit(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Positions mapped so that the scene box spans [0, 1] on every axis."""
        aabb: Tensor = self.aabb  # type: ignore[assignment]
        return (positions - aabb[0]) / (aabb[1] - aabb[0])

    def _encode(self, grid: HashEncoding, unit: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs enc"]:
        return grid(unit.clamp(0.0, 1.0).reshape(-1, 3)).reshape(*unit.shape[:-1], -1).to(unit.dtype)

    def deform(
        self, x: Float[Tensor, "*bs 3"], cond: Float[Tensor, "*cbs cond"] | None, rows: Tensor | None = None
    ) -> tuple[Float[Tensor, "*bs 3"], Float[Tensor, "*bs A"], Float[Tensor, "*bs 3"]]:
        """``(x', w, offset)`` for observation-space points; ``cond`` = per-ray ``[a, PE(p)?]`` (``rows``: see
        :meth:`density_points`)."""
        batch_shape = x.shape[:-1]
        if self.deform_mlp is None or self.deform_grid is None:
            return x, x.new_zeros(*batch_shape, 0), torch.zeros_like(x)
        out = self.deform_mlp(self._encode(self.deform_grid, self.unit(x)), cond, rows)
        if self.config.use_warp:
            offset = self.config.max_offset * torch.tanh(out[..., :3])
            ambient = torch.tanh(out[..., 3:])
        else:
            offset = torch.zeros_like(x)
            ambient = torch.tanh(out)
        return x + offset, ambient, offset

    def forward_points(
        self,
        positions: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*dbs 3"] | None,
        code: Float[Tensor, "*cbs code_dim"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        density_noise_std: float = 0.0,
        rows: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """See :meth:`SAHSFieldBase.forward_points`; ``"density"`` is ``trunc_exp``, without noise.

        ``code`` and ``pose`` stay at their (per-ray) shape until the first MLP layer, which broadcasts them
        (``rows``: see :meth:`density_points`).
        """
        if density_noise_std != 0.0:
            raise ValueError("SAHSFastField has no density noise (its density_noise_std is 0).")
        out = self.density_points(positions, code, pose, rows)
        if directions is not None:
            out.update(self.head_points(out["feat"], directions))
        return out

    def density_points(
        self,
        positions: Float[Tensor, "*bs 3"],
        code: Float[Tensor, "*cbs code_dim"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        rows: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The density half of :meth:`forward_points` (deformation, canonical grid and planes, density MLP): every
        output but ``"rgb"`` and ``"semantics"``. The fast renderer calls it on the samples it keeps.

        ``rows``: for a flat set of points ``[M, 3]`` taken from many rays, each point's row of the per-ray
        ``code`` / ``pose`` ``[R, C]`` (the conditioning's layer then runs once per ray, not once per point)."""
        cfg = self.config
        code, pose = per_ray(code), (per_ray(pose) if pose is not None else None)
        pose_enc = None
        if self.pose_encoding is not None:
            if pose is None:
                raise ValueError("This field is pose-conditioned (use_pose) but no pose was given.")
            pose_enc = self.pose_encoding(pose)
        deform_cond = code if pose_enc is None else torch.cat([code, pose_enc.expand(*code.shape[:-1], -1)], dim=-1)
        x_canon, ambient, offset = self.deform(positions, deform_cond, rows)

        unit = self.unit(x_canon)
        inside = ((unit > 0.0) & (unit < 1.0)).all(dim=-1, keepdim=True)
        parts = [self._encode(self.grid, unit)]
        if self.planes is not None:
            parts.append(self.planes(unit.clamp(0.0, 1.0) * 2.0 - 1.0, ambient))
        cond_parts = ([pose_enc] if pose_enc is not None else []) + ([code] if cfg.canonical_code else [])
        if len(cond_parts) == 2:
            cond_parts = [torch.cat([cond_parts[0].expand(*code.shape[:-1], -1), cond_parts[1]], dim=-1)]
        h = self.density_mlp(torch.cat(parts, dim=-1), cond_parts[0] if cond_parts else None, rows)
        raw, feat = h[..., :1], h[..., 1:]
        density = trunc_exp(raw + cfg.density_bias) * inside
        return {
            "density": density,
            "density_raw": raw,
            "feat": feat,
            DEFORMATION_KEY: offset.norm(dim=-1, keepdim=True),
            AMBIENT_KEY: ambient,
            "offset": offset,
        }

    def head_points(
        self, feat: Float[Tensor, "*bs geo_feat_dim"], directions: Float[Tensor, "*dbs 3"]
    ) -> dict[str, Tensor]:
        """The colour and semantic heads of :meth:`forward_points`: ``"rgb"`` and (when on) ``"semantics"`` logits
        from the geometry features and unit view directions (broadcastable to ``feat``'s batch shape)."""
        batch_shape = feat.shape[:-1]
        dirs = directions.expand(*batch_shape, 3)
        if self.direction_encoding.tcnn_encoding is not None:
            dirs = (dirs + 1.0) / 2.0  # tcnn's SH encoding reads directions mapped to [0, 1]
        d_enc = self.direction_encoding(dirs.reshape(-1, 3)).reshape(*batch_shape, -1).to(feat.dtype)
        rgb_in = torch.cat([feat, d_enc], dim=-1)
        out = {"rgb": self.colour_mlp(rgb_in.reshape(-1, rgb_in.shape[-1])).reshape(*batch_shape, 3).float()}
        if self.semantic_mlp is not None:
            logits = self.semantic_mlp(feat.reshape(-1, feat.shape[-1]))
            out["semantics"] = logits.reshape(*batch_shape, -1).float()
        return out
