"""What the two SAHS fields share: the driver conditioning config and a field base class.

Both fields (the MLP one of ``sahs``, the grid one of ``sahs-fast``) read, per sample, the observation-space
point ``x``, the driving code ``a`` (``ray_samples.metadata["driving_code"]`` ``[N, 1, code_dim]``: the
expression, or the audio network's output) and the raw head-pose code ``p`` (``["pose"]`` ``[N, 1, 6]``; the
field applies PE3 itself), and return the same outputs. Only the function from points to outputs differs:
:meth:`SAHSFieldBase.forward_points`.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import Generic, Literal, Self, TypeVar

from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field, FieldConfig
from torch import Tensor

from sahs_nerfstudio.data import keys
from sahs_nerfstudio.data.pose import POSE_DIM
from sahs_nerfstudio.data.semantics import NUM_CLASSES
from sahs_nerfstudio.fields.encoding import encoding_out_dim

Driver = Literal["audio", "expression"]

DEFORMATION_KEY = "deformation"
"""Extra field output: ``|x' - x|`` ``[..., 1]``."""
AMBIENT_KEY = "ambient"
"""Extra field output: hyper-space coordinates ``w`` ``[..., num_ambient]``."""

# What the published configurations of the two drivers choose for the conditioning; ``None`` takes these.
_DRIVER_DEFAULTS: dict[str, dict[str, object]] = {
    "audio": dict(num_ambient_dims=2, use_pose=True),
    "expression": dict(num_ambient_dims=1, use_pose=False),
}


@dataclass
class SAHSConditioningConfig(FieldConfig):
    """The driver, the conditioning inputs and the ablation switches of a SAHS field. ``None`` means "the
    published value for ``driver``": use :meth:`for_driver`, or :meth:`resolved` to fill the ``None``s."""

    driver: Driver = "audio"
    """What drives the avatar: audio features (through an audio network) or 3DMM expression coefficients."""
    code_dim: int = 76
    """Width of the driving code (expression coefficients or the audio network's output)."""
    pose_dim: int = POSE_DIM
    """Width of the raw pose code (3 Euler angles + 3 translations)."""
    num_classes: int = NUM_CLASSES
    """Number of semantic classes predicted by the semantic head."""
    use_warp: bool = True
    """Deform points with the bounded warp ``x' = x + s * tanh(.)`` (``s`` = 1 for ``sahs``, ``max_offset`` for
    ``sahs-fast``); off: ``x' = x``."""
    use_hyper: bool = True
    """Give the canonical field hyper-space (ambient) coordinates ``w``; off: a static canonical field."""
    use_semantics: bool = True
    """Build the semantic head and output logits."""
    use_pose: bool | None = None
    """Condition the deformation and the canonical density on PE3(pose). None: True for audio, False for
    expression."""
    canonical_code: bool | None = None
    """Concatenate the driving code into the canonical input. None: True for the expression driver, False for
    audio, and True whenever both ``use_warp`` and ``use_hyper`` are off (a NeRFace / AD-NeRF style model)."""
    num_ambient_dims: int | None = None
    """Hyper-space dimensions output by the deformation. None: 2 for audio, 1 for expression."""
    pose_frequencies: int = 3
    """Frequencies of the pose encoding (no raw input): 6 * 3 * 2 = 36 values."""
    deformation_init_scale: float = 1e-4
    """Uniform bound of the deformation's output-layer weights (biases 0) so training starts from the identity
    warp and ``w ~ 0`` (HyperNeRF's practice; the published code does not say). <= 0 keeps PyTorch's default."""

    @classmethod
    def for_driver(cls, driver: Driver, **overrides) -> Self:
        """The published configuration for ``driver`` (every ``None`` resolved), with optional overrides."""
        return cls(driver=driver, **overrides).resolved()

    def driver_defaults(self) -> dict[str, object]:
        """The values ``None`` stands for under ``self.driver`` (a subclass adds its own sizes)."""
        return dict(_DRIVER_DEFAULTS[self.driver])

    def check(self) -> None:
        """Raise ValueError when this resolved configuration cannot be built (a subclass adds its own rules)."""
        if self.use_hyper and (self.num_ambient_dims or 0) <= 0:
            raise ValueError("use_hyper needs num_ambient_dims > 0.")

    def resolved(self) -> Self:
        """A copy with every ``None`` replaced by its published value for ``self.driver``, checked."""
        if self.driver not in _DRIVER_DEFAULTS:
            raise ValueError(f"Unknown driver {self.driver!r}; expected one of {sorted(_DRIVER_DEFAULTS)}.")
        updates = {k: v for k, v in self.driver_defaults().items() if getattr(self, k) is None}
        if self.canonical_code is None:
            updates["canonical_code"] = self.driver == "expression" or (not self.use_warp and not self.use_hyper)
        out = dataclasses.replace(self, **updates) if updates else self
        out.check()
        return out

    @property
    def ambient_dim(self) -> int:
        """Width of ``w`` as the canonical field sees it (0 when the hyper-space is off)."""
        cfg = self.resolved()
        assert cfg.num_ambient_dims is not None
        return cfg.num_ambient_dims if cfg.use_hyper else 0

    @property
    def pose_encoding_dim(self) -> int:
        """Width of PE(pose), 0 when the pose is not used."""
        return encoding_out_dim(self.pose_dim, self.pose_frequencies, False) if self.resolved().use_pose else 0


ConfigT = TypeVar("ConfigT", bound=SAHSConditioningConfig)


class SAHSFieldBase(Field, Generic[ConfigT]):
    """A SAHS field: per-ray conditioning from the samples' metadata, one point function, nerfstudio's heads.

    Args:
        config: the field configuration (resolved for its driver here).
        density_noise_std: std of the noise added to the raw density in training mode when the caller passes
            none (NeRF's ``raw_noise_std``); 0 for none.
    """

    def __init__(self, config: ConfigT, density_noise_std: float = 0.0) -> None:
        super().__init__()
        self.config: ConfigT = config.resolved()
        self.density_noise_std = density_noise_std

    @abstractmethod
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
            ``"density"`` and ``"density_raw"`` ``[..., 1]``, ``"deformation"`` ``|x' - x|`` ``[..., 1]``,
            ``"ambient"`` ``[..., A]``, ``"offset"`` ``[..., 3]``, ``"feat"``; with directions also ``"rgb"``
            ``[..., 3]`` and, when semantics are on, ``"semantics"`` logits ``[..., num_classes]``.
        """

    def conditioning(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor | None]:
        """Driving code and pose from the samples' metadata (pose only when this field uses it)."""
        name = type(self).__name__
        metadata = ray_samples.metadata or {}
        if keys.DRIVING_CODE not in metadata:
            raise KeyError(f"{name} needs ray_samples.metadata[{keys.DRIVING_CODE!r}] (the per-ray driving code).")
        pose = metadata.get(keys.POSE) if self.config.use_pose else None
        if self.config.use_pose and pose is None:
            raise KeyError(f"This {name} uses the pose: ray_samples.metadata[{keys.POSE!r}] is missing.")
        return metadata[keys.DRIVING_CODE], pose

    def _noise_std(self, density_noise_std: float | None) -> float:
        if density_noise_std is not None:
            return density_noise_std
        return self.density_noise_std if self.training else 0.0

    def _query(
        self, ray_samples: RaySamples, with_colour: bool, density_noise_std: float | None = None
    ) -> dict[str, Tensor]:
        code, pose = self.conditioning(ray_samples)
        positions = ray_samples.frustums.get_positions()
        directions = ray_samples.frustums.directions if with_colour else None
        return self.forward_points(positions, directions, code, pose, self._noise_std(density_noise_std))

    def get_density(self, ray_samples: RaySamples) -> tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feat"]]:
        """Activated density and the geometry feature (noise per :attr:`density_noise_std` in training mode)."""
        out = self._query(ray_samples, with_colour=False)
        return out["density"], out["feat"]

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Tensor | None = None
    ) -> dict[FieldHeadNames, Tensor]:
        """All outputs, recomputed from the samples (``density_embedding`` is ignored: the colour branch needs
        ``x'`` too). Prefer :meth:`forward`, which evaluates the field once."""
        del density_embedding
        return self._to_heads(self._query(ray_samples, with_colour=True))

    @staticmethod
    def _to_heads(out: dict[str, Tensor]) -> dict[FieldHeadNames, Tensor]:
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
            compute_normals: unsupported (the fields have no use for normals).
            density_noise_std: noise std for the raw density; None uses :attr:`density_noise_std` in training
                mode and 0 in eval mode.
        """
        if compute_normals:
            raise NotImplementedError(f"{type(self).__name__} does not compute normals.")
        return self._to_heads(self._query(ray_samples, with_colour=True, density_noise_std=density_noise_std))
