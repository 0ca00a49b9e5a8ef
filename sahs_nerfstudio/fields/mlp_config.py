"""Sizes of the ``sahs`` (MLP) field: the warp and hyper MLPs, the canonical NeRF, its heads and spatial grid.

They live below :mod:`~sahs_nerfstudio.fields.deformation` and :mod:`~sahs_nerfstudio.fields.canonical_field`,
which read them; :class:`~sahs_nerfstudio.fields.sahs_field.SAHSFieldConfig` adds only the class it builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from sahs_nerfstudio.fields.base import SAHSConditioningConfig
from sahs_nerfstudio.fields.encoding import encoding_out_dim

# Sizes that differ between the two published configurations; ``None`` in the config means "take these".
_PUBLISHED_SIZES: dict[str, dict[str, object]] = {
    "audio": dict(position_frequencies=10, canonical_depth=8, canonical_skips=(4,)),
    "expression": dict(position_frequencies=15, canonical_depth=4, canonical_skips=(3,)),
}


@dataclass
class SAHSMLPFieldConfig(SAHSConditioningConfig):
    """Every size of the SAHS field. ``None`` means "the published value for ``driver``".

    Skip indices follow nerfstudio's :class:`MLP`: the input is re-concatenated to the input of that layer.
    """

    position_frequencies: int | None = None
    """Frequencies of the position encoding (raw input included). None: 10 for audio, 15 for expression."""
    ambient_frequencies: int = 4
    """Frequencies of the ambient-coordinate encoding (raw input included)."""
    direction_frequencies: int = 4
    """Frequencies of the view-direction encoding (raw input included): 27 values."""
    use_spatial_grid: bool = True
    """Feed a trilinear lookup of the learnable spatial embedding grid at ``x'`` to the colour branch."""
    warp_depth: int = 6
    """Hidden ReLU layers of the warp MLP (a linear 3-d output layer follows)."""
    warp_width: int = 128
    """Width of the warp MLP."""
    warp_skips: tuple[int, ...] = (4,)
    """Layers of the warp MLP that receive the input again."""
    hyper_depth: int = 6
    """Hidden ReLU layers of the hyper MLP (a linear output layer follows)."""
    hyper_width: int = 64
    """Width of the hyper MLP."""
    hyper_skips: tuple[int, ...] = (4,)
    """Layers of the hyper MLP that receive the input again."""
    canonical_depth: int | None = None
    """ReLU layers of the canonical trunk. None: 8 for audio, 4 for expression."""
    canonical_width: int = 256
    """Width of the canonical trunk and of its feature ``feat``."""
    canonical_skips: tuple[int, ...] | None = None
    """Trunk layers that receive the input again. None: (4,) for audio, (3,) for expression."""
    colour_depth: int = 4
    """Hidden ReLU layers of the colour branch (a linear RGB layer with sigmoid follows)."""
    colour_width: int = 128
    """Width of the colour branch."""
    semantic_depth: int = 4
    """Hidden ReLU layers of the semantic head (a linear logit layer follows)."""
    semantic_width: int = 128
    """Width of the semantic head."""
    grid_resolution: int = 32
    """Samples per axis of the spatial embedding grid."""
    grid_channels: int = 32
    """Feature channels of the spatial embedding grid."""
    grid_init_std: float = 0.01
    """The grid is initialised as ``randn * grid_init_std``."""
    density_noise_std: float = 0.1
    """Std of the Gaussian noise added to the raw density before the ReLU, in training mode only, when the caller
    passes none (NeRF's ``raw_noise_std``)."""

    def driver_defaults(self) -> dict[str, object]:
        return {**super().driver_defaults(), **_PUBLISHED_SIZES[self.driver]}

    def check(self) -> None:
        super().check()
        for name in ("warp", "hyper", "canonical"):
            depth, skips = getattr(self, f"{name}_depth"), getattr(self, f"{name}_skips")
            # nerfstudio's MLP can re-concatenate the input before hidden layers 1..depth-1 only.
            if any(not 1 <= s < depth for s in skips):
                raise ValueError(f"{name}_skips {skips} must lie in [1, {name}_depth - 1 = {depth - 1}].")

    @property
    def position_encoding_dim(self) -> int:
        """Width of PE(x) (raw input included)."""
        freqs = self.resolved().position_frequencies
        assert freqs is not None
        return encoding_out_dim(3, freqs, True)

    @property
    def deformation_in_dim(self) -> int:
        """Input width of the warp and hyper MLPs: ``[PE(x), code, PE(pose)?]``."""
        return self.position_encoding_dim + self.code_dim + self.pose_encoding_dim

    @property
    def canonical_in_dim(self) -> int:
        """Input width of the canonical trunk: ``[PE(x'), PE(w)?, code?, PE(pose)?]``."""
        cfg = self.resolved()
        ambient = encoding_out_dim(cfg.ambient_dim, cfg.ambient_frequencies, True)
        return cfg.position_encoding_dim + ambient + cfg.pose_encoding_dim + (cfg.code_dim if cfg.canonical_code else 0)

    @property
    def colour_in_dim(self) -> int:
        """Input width of the colour branch: ``[feat, PE(d), grid?]``."""
        grid = self.grid_channels if self.use_spatial_grid else 0
        return self.canonical_width + encoding_out_dim(3, self.direction_frequencies, True) + grid
