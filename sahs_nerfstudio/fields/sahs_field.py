"""SAHS field: a (possibly shared) hyper-space deformation followed by this level's canonical NeRF.

Per-sample conditioning arrives in ``ray_samples.metadata``: ``"driving_code"`` ``[N, 1, code_dim]`` (the
expression, or the audio code already produced by the audio network) and ``"pose"`` ``[N, 1, 6]`` (the raw pose
code; the field applies PE3 itself).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field, FieldConfig
from torch import Tensor

from sahs_nerfstudio.data.pose import POSE_DIM
from sahs_nerfstudio.data.semantics import NUM_CLASSES
from sahs_nerfstudio.fields.canonical_field import CanonicalField
from sahs_nerfstudio.fields.deformation import HyperDeformation
from sahs_nerfstudio.fields.encoding import encoding_out_dim

Driver = Literal["audio", "expression"]

DRIVING_CODE_KEY = "driving_code"
"""``ray_samples.metadata`` key of the per-ray driving code."""
POSE_KEY = "pose"
"""``ray_samples.metadata`` key of the per-ray raw pose code."""
DEFORMATION_KEY = "deformation"
"""Extra field output: ``|x' - x|`` ``[..., 1]``."""
AMBIENT_KEY = "ambient"
"""Extra field output: hyper-space coordinates ``w`` ``[..., num_ambient]``."""

# Values that differ between the two published configurations; ``None`` in the config means "take these".
_PUBLISHED: dict[str, dict[str, object]] = {
    "audio": dict(position_frequencies=10, num_ambient_dims=2, use_pose=True, canonical_depth=8, canonical_skips=(4,)),
    "expression": dict(
        position_frequencies=15, num_ambient_dims=1, use_pose=False, canonical_depth=4, canonical_skips=(3,)
    ),
}


@dataclass
class SAHSFieldConfig(FieldConfig):
    """Every size and switch of the SAHS field. ``None`` means "the published value for ``driver``".

    Use :meth:`for_driver` for the published configuration of a driver; :meth:`resolved` fills the ``None``s.
    Skip indices follow nerfstudio's :class:`MLP`: the input is re-concatenated to the input of that layer.
    """

    _target: type = field(default_factory=lambda: SAHSField)
    """Class this config builds (``setup(deformation=..., aabb=...)``)."""
    driver: Driver = "audio"
    """What drives the avatar: audio features (through an audio network) or 3DMM expression coefficients."""
    code_dim: int = 76
    """Width of the driving code (expression coefficients or the audio network's output)."""
    pose_dim: int = POSE_DIM
    """Width of the raw pose code (3 Euler angles + 3 translations)."""
    num_classes: int = NUM_CLASSES
    """Number of semantic classes predicted by the semantic head."""
    use_warp: bool = True
    """Deform points with the warp MLP ``x' = x + tanh(.)``; off: ``x' = x``."""
    use_hyper: bool = True
    """Add hyper-space (ambient) coordinates ``w`` to the canonical input; off: no ambient input."""
    use_semantics: bool = True
    """Build the semantic head and output logits."""
    use_spatial_grid: bool = True
    """Feed a trilinear lookup of the learnable spatial embedding grid at ``x'`` to the colour branch."""
    use_pose: bool | None = None
    """Condition warp, hyper and canonical MLPs on PE(pose). None: True for audio, False for expression."""
    canonical_code: bool | None = None
    """Concatenate the driving code into the canonical input. None: True for the expression driver, False for
    audio, and True whenever both ``use_warp`` and ``use_hyper`` are off (a NeRFace / AD-NeRF style model)."""
    position_frequencies: int | None = None
    """Frequencies of the position encoding (raw input included). None: 10 for audio, 15 for expression."""
    pose_frequencies: int = 3
    """Frequencies of the pose encoding (no raw input): 6 * 3 * 2 = 36 values."""
    ambient_frequencies: int = 4
    """Frequencies of the ambient-coordinate encoding (raw input included)."""
    direction_frequencies: int = 4
    """Frequencies of the view-direction encoding (raw input included): 27 values."""
    num_ambient_dims: int | None = None
    """Hyper-space dimensions output by the hyper MLP. None: 2 for audio, 1 for expression."""
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
    deformation_init_scale: float = 1e-4
    """Uniform bound of the warp/hyper output-layer weights (biases 0) so training starts from the identity warp
    and ``w ~ 0`` (HyperNeRF's practice; the published code does not say). <= 0 keeps PyTorch's default init."""
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

    @classmethod
    def for_driver(cls, driver: Driver, **overrides) -> "SAHSFieldConfig":
        """The published configuration for ``driver`` (every ``None`` resolved), with optional overrides."""
        return cls(driver=driver, **overrides).resolved()

    def resolved(self) -> "SAHSFieldConfig":
        """A copy with every ``None`` replaced by its published value for ``self.driver``."""
        if self.driver not in _PUBLISHED:
            raise ValueError(f"Unknown driver {self.driver!r}; expected one of {sorted(_PUBLISHED)}.")
        updates = {k: v for k, v in _PUBLISHED[self.driver].items() if getattr(self, k) is None}
        if self.canonical_code is None:
            updates["canonical_code"] = self.driver == "expression" or (not self.use_warp and not self.use_hyper)
        out = dataclasses.replace(self, **updates) if updates else self
        if out.use_hyper and (out.num_ambient_dims or 0) <= 0:
            raise ValueError("use_hyper needs num_ambient_dims > 0.")
        for name in ("warp", "hyper", "canonical"):
            depth, skips = getattr(out, f"{name}_depth"), getattr(out, f"{name}_skips")
            # nerfstudio's MLP can re-concatenate the input before hidden layers 1..depth-1 only.
            if any(not 1 <= s < depth for s in skips):
                raise ValueError(f"{name}_skips {skips} must lie in [1, {name}_depth - 1 = {depth - 1}].")
        return out

    @property
    def ambient_dim(self) -> int:
        """Width of ``w`` as the canonical field sees it (0 when the hyper MLP is off)."""
        cfg = self.resolved()
        assert cfg.num_ambient_dims is not None
        return cfg.num_ambient_dims if cfg.use_hyper else 0

    @property
    def pose_encoding_dim(self) -> int:
        """Width of PE(pose), 0 when the pose is not used."""
        return encoding_out_dim(self.pose_dim, self.pose_frequencies, False) if self.resolved().use_pose else 0

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


class SAHSField(Field):
    """One sampling level of SAHS: ``deformation`` (may be shared between levels) + its own canonical NeRF.

    Args:
        config: the field configuration.
        deformation: the deformation to use; a new one is built from ``config`` when None.
        aabb: box covered by the spatial embedding grid, ``[[min xyz], [max xyz]]``.
    """

    def __init__(
        self,
        config: SAHSFieldConfig,
        deformation: HyperDeformation | None = None,
        aabb: Float[Tensor, "2 3"] | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config.resolved()
        self.deformation = deformation if deformation is not None else HyperDeformation(config)
        if aabb is None:
            aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        self.canonical = CanonicalField(config, aabb)
        self.density_noise_std = config.density_noise_std

    def forward_points(
        self,
        positions: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*dbs 3"] | None,
        code: Float[Tensor, "*cbs code_dim"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        density_noise_std: float = 0.0,
    ) -> dict[str, Tensor]:
        """The field at plain points.

        Args:
            positions: observation-space points, any batch shape.
            directions: unit view directions broadcastable to ``positions``; None computes density only.
            code: driving code broadcastable to ``positions``' batch shape (``[N, 1, C]`` for ``[N, S, 3]``).
            pose: raw pose code, broadcastable like ``code``; needed when ``use_pose``.
            density_noise_std: std of the noise added to the raw density (0 in evaluation).

        Returns:
            ``"density"`` (relu of noisy raw) and ``"density_raw"`` ``[..., 1]``, ``"deformation"`` ``|x' - x|``
            ``[..., 1]``, ``"ambient"`` ``[..., A]``, ``"offset"`` ``[..., 3]``, ``"feat"``; with directions also
            ``"rgb"`` ``[..., 3]`` and, when semantics are on, ``"semantics"`` logits ``[..., num_classes]``.
        """
        deform = self.deformation(positions, code, pose)
        density, raw, feat = self.canonical.get_density(deform.x_canon, deform.ambient, pose, code, density_noise_std)
        out: dict[str, Tensor] = {
            "density": density,
            "density_raw": raw,
            "feat": feat,
            DEFORMATION_KEY: deform.offset.norm(dim=-1, keepdim=True),
            AMBIENT_KEY: deform.ambient,
            "offset": deform.offset,
        }
        if directions is not None:
            out.update(self.canonical.get_colour(feat, deform.x_canon, directions))
        return out

    def _conditioning(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor | None]:
        """Driving code and pose from the samples' metadata (pose only when this field uses it)."""
        metadata = ray_samples.metadata or {}
        if DRIVING_CODE_KEY not in metadata:
            raise KeyError(f"SAHSField needs ray_samples.metadata[{DRIVING_CODE_KEY!r}] (the per-ray driving code).")
        pose = metadata.get(POSE_KEY) if self.config.use_pose else None
        if self.config.use_pose and pose is None:
            raise KeyError(f"This SAHSField uses the pose: ray_samples.metadata[{POSE_KEY!r}] is missing.")
        return metadata[DRIVING_CODE_KEY], pose

    def _noise_std(self, density_noise_std: float | None) -> float:
        if density_noise_std is not None:
            return density_noise_std
        return self.density_noise_std if self.training else 0.0

    def _query(
        self, ray_samples: RaySamples, with_colour: bool, density_noise_std: float | None = None
    ) -> dict[str, Tensor]:
        code, pose = self._conditioning(ray_samples)
        positions = ray_samples.frustums.get_positions()
        directions = ray_samples.frustums.directions if with_colour else None
        return self.forward_points(positions, directions, code, pose, self._noise_std(density_noise_std))

    def get_density(self, ray_samples: RaySamples) -> tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs width"]]:
        """Activated density and the trunk feature (noise per :attr:`density_noise_std` in training mode)."""
        out = self._query(ray_samples, with_colour=False)
        return out["density"], out["feat"]

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Tensor | None = None
    ) -> dict[FieldHeadNames, Tensor]:
        """All outputs, recomputed from the samples (``density_embedding`` is ignored: the colour branch needs
        ``x'`` too). Prefer :meth:`forward`, which evaluates the field once."""
        del density_embedding
        return self._to_heads(self._query(ray_samples, with_colour=True))

    def _to_heads(self, out: dict[str, Tensor]) -> dict[FieldHeadNames, Tensor]:
        heads: dict = {
            FieldHeadNames.RGB: out["rgb"],
            FieldHeadNames.DENSITY: out["density"],
            DEFORMATION_KEY: out[DEFORMATION_KEY],
            AMBIENT_KEY: out[AMBIENT_KEY],
        }
        if "semantics" in out:
            heads[FieldHeadNames.SEMANTICS] = out["semantics"]
        return heads

    def forward(
        self, ray_samples: RaySamples, compute_normals: bool = False, density_noise_std: float | None = None
    ) -> dict[FieldHeadNames, Tensor]:
        """RGB, DENSITY, SEMANTICS (logits, when on), ``"deformation"`` and ``"ambient"``, in one evaluation.

        Args:
            ray_samples: samples whose metadata carries ``"driving_code"`` (and ``"pose"`` when used).
            compute_normals: unsupported (the field has no use for normals).
            density_noise_std: noise std for the raw density; None uses :attr:`density_noise_std` in training
                mode and 0 in eval mode.
        """
        if compute_normals:
            raise NotImplementedError("SAHSField does not compute normals.")
        return self._to_heads(self._query(ray_samples, with_colour=True, density_noise_std=density_noise_std))
