"""The canonical hyper-space NeRF: density, colour and semantic logits at ``(x', w)``, plus the spatial grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from sahs_nerfstudio.fields.deformation import encode_conditioning
from sahs_nerfstudio.fields.encoding import positional_encoding
from sahs_nerfstudio.fields.mlp_config import SAHSMLPFieldConfig


class SpatialEmbeddingGrid(nn.Module):
    """A learnable ``channels x R^3`` feature grid over an axis-aligned box, read by trilinear interpolation.

    The grid's corner samples sit exactly on the box corners (``align_corners=True``): sample ``i`` along an axis
    is at ``min + i / (R - 1) * (max - min)``. Points outside the box read the border value.

    Args:
        aabb: ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` of the region the grid covers.
        resolution: samples per axis ``R``.
        channels: feature width.
        init_std: the grid starts as ``randn * init_std``.
    """

    def __init__(self, aabb: Float[Tensor, "2 3"], resolution: int = 32, channels: int = 32, init_std: float = 0.01):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.resolution = resolution
        self.channels = channels
        # Stored [1, C, D, H, W] as grid_sample wants it; axis order (D, H, W) = (z, y, x).
        self.grid = nn.Parameter(torch.randn(1, channels, resolution, resolution, resolution) * init_std)

    def normalise(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Positions mapped so that the box spans [-1, 1] on every axis (grid_sample's convention)."""
        aabb: Tensor = self.aabb  # type: ignore[assignment]
        return (positions - aabb[0]) / (aabb[1] - aabb[0]) * 2.0 - 1.0

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs channels"]:
        """Trilinear lookup at ``positions`` (world coordinates)."""
        batch_shape = positions.shape[:-1]
        coords = self.normalise(positions).reshape(1, -1, 1, 1, 3).to(self.grid.dtype)
        # grid_sample's last coordinate axis is (x, y, z) = (W, H, D), matching the storage order above.
        out = F.grid_sample(self.grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(self.channels, -1).t().reshape(*batch_shape, self.channels)


class CanonicalField(nn.Module):
    """The canonical NeRF (one per sampling level) evaluated at deformed points.

    Trunk input ``[PE(x'), PE4(w), PE3(pose)?, code?]``; ``depth x width`` ReLU layers with the input
    re-concatenated at the skip layers; then ``Linear(width, 1 + width)`` = [raw density, feature ``feat``]; colour ``[feat, PE4(d), grid(x')] -> colour_depth x colour_width -> 3`` (sigmoid); semantic
    logits ``feat -> semantic_depth x semantic_width -> num_classes``.

    Args:
        config: the field configuration (resolved for its driver inside).
        aabb: box covered by the spatial embedding grid.
    """

    def __init__(self, config: SAHSMLPFieldConfig, aabb: Float[Tensor, "2 3"]) -> None:
        super().__init__()
        self.config = config = config.resolved()
        assert config.position_frequencies is not None and config.num_ambient_dims is not None
        assert config.canonical_depth is not None and config.canonical_skips is not None
        self.position_encoding = positional_encoding(3, config.position_frequencies, include_input=True)
        self.ambient_encoding = (
            positional_encoding(config.num_ambient_dims, config.ambient_frequencies, include_input=True)
            if config.use_hyper
            else None
        )
        self.pose_encoding = (
            positional_encoding(config.pose_dim, config.pose_frequencies, include_input=False)
            if config.use_pose
            else None
        )
        self.direction_encoding = positional_encoding(3, config.direction_frequencies, include_input=True)
        width = config.canonical_width
        # depth ReLU layers, then one linear layer giving [raw density, feat] (NeRF's alpha_linear and
        # feature_linear side by side). Keeping the heads inside the MLP lets the last ReLU layer be a skip layer
        # (the expression driver's 4 x 256 with skip at 3), which nerfstudio's MLP cannot do for its output layer.
        self.trunk = MLP(
            in_dim=config.canonical_in_dim,
            num_layers=config.canonical_depth + 1,
            layer_width=width,
            out_dim=1 + width,
            skip_connections=tuple(config.canonical_skips),  # type: ignore[arg-type]
            activation=nn.ReLU(),
            out_activation=None,
            implementation="torch",
        )
        self.grid = (
            SpatialEmbeddingGrid(aabb, config.grid_resolution, config.grid_channels, config.grid_init_std)
            if config.use_spatial_grid
            else None
        )
        self.colour_mlp = MLP(
            in_dim=config.colour_in_dim,
            num_layers=config.colour_depth + 1,
            layer_width=config.colour_width,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
            implementation="torch",
        )
        self.semantic_mlp = (
            MLP(
                in_dim=width,
                num_layers=config.semantic_depth + 1,
                layer_width=config.semantic_width,
                out_dim=config.num_classes,
                activation=nn.ReLU(),
                out_activation=None,  # logits; the renderer softmaxes after compositing
                implementation="torch",
            )
            if config.use_semantics
            else None
        )

    def get_density(
        self,
        x_canon: Float[Tensor, "*bs 3"],
        ambient: Float[Tensor, "*bs num_ambient"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        code: Float[Tensor, "*cbs code_dim"] | None = None,
        density_noise_std: float = 0.0,
    ) -> tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 1"], Float[Tensor, "*bs width"]]:
        """``(density, raw density, feat)``; density is ``relu(raw + N(0, std^2))`` (NeRF's raw2alpha noise)."""
        if self.config.canonical_code and code is None:
            raise ValueError("This canonical field takes the driving code (canonical_code) but none was given.")
        batch_shape = x_canon.shape[:-1]
        parts = [self.position_encoding(x_canon)]
        if self.ambient_encoding is not None:
            parts.append(self.ambient_encoding(ambient))
        cond = encode_conditioning(code if self.config.canonical_code else None, pose, self.pose_encoding, batch_shape)
        if cond is not None:
            parts.append(cond)
        trunk_out = self.trunk(torch.cat(parts, dim=-1))
        raw, feat = trunk_out[..., :1], trunk_out[..., 1:]
        noisy = raw + torch.randn_like(raw) * density_noise_std if density_noise_std > 0 else raw
        return F.relu(noisy), raw, feat

    def get_colour(
        self,
        feat: Float[Tensor, "*bs width"],
        x_canon: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*dbs 3"],
    ) -> dict[str, Tensor]:
        """``{"rgb": [..., 3]}`` plus ``{"semantics": [..., num_classes] logits}`` when semantics are on."""
        batch_shape = feat.shape[:-1]
        dir_enc = self.direction_encoding(directions)
        parts = [feat, dir_enc.expand(*batch_shape, dir_enc.shape[-1])]
        if self.grid is not None:
            parts.append(self.grid(x_canon))
        out = {"rgb": self.colour_mlp(torch.cat(parts, dim=-1))}
        if self.semantic_mlp is not None:
            out["semantics"] = self.semantic_mlp(feat)
        return out

    def forward(
        self,
        x_canon: Float[Tensor, "*bs 3"],
        ambient: Float[Tensor, "*bs num_ambient"],
        directions: Float[Tensor, "*dbs 3"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        code: Float[Tensor, "*cbs code_dim"] | None = None,
        density_noise_std: float = 0.0,
    ) -> dict[str, Tensor]:
        """``{"density" (activated), "density_raw", "rgb", "semantics"?}`` at canonical points.

        ``pose`` and ``code`` may have a per-ray shape broadcastable to the points' (``[N, 1, D]``);
        ``directions`` likewise.
        """
        density, raw, feat = self.get_density(x_canon, ambient, pose, code, density_noise_std)
        out = self.get_colour(feat, x_canon, directions)
        out["density"] = density
        out["density_raw"] = raw
        return out
