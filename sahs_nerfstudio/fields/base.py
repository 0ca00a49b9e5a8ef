"""What the two SAHS fields share: the driver conditioning config and a field base class.

Both fields (the MLP one of ``sahs``, the grid one of ``sahs-fast``) read, per sample, the observation-space
point ``x``, the driving code ``a`` (``ray_samples.metadata["driving_code"]`` ``[N, 1, code_dim]``: the
expression, or the audio network's output) and the raw head-pose code ``p`` (``["pose"]`` ``[N, 1, 6]``; the
field applies PE3 itself), and return the same outputs. Only the function from points to outputs differs:
:meth:`SAHSFieldBase.forward_points`.

The eye channel (``use_eye``, audio models): audio does not say when a person blinks, so the frame's eye closure
``e`` (``["eye"]`` ``[N, 1, 1]``, 0 open .. 1 shut, from the dataset's ``au.csv``) moves the driving code along a
learned direction, ``a' = a + e * v`` (:attr:`SAHSFieldBase.eye_code`), in :meth:`SAHSFieldBase.conditioning`.
Every network first multiplies the code by a matrix ``W``, so this is an extra input column ``W v`` for ``e``: the
networks keep their sizes (no field needs a change) and ``v`` starts at zero, so a new model starts as the eye-less
one and draws no extra random numbers (the rest of its initialisation is that of a model without the eye). The
expression driver leaves it off: its code already holds eye-openness channels.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import Generic, Literal, Self, TypeVar

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field, FieldConfig
from torch import Tensor, nn

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
    use_eye: bool | None = None
    """Condition on the frame's eye closure (``au.csv``, 0 open .. 1 shut; see the module docstring), so the avatar
    blinks on demand. None ("auto"): the model decides from its training data (:meth:`with_eye_track`): on for the audio
    driver when the data has an eye track, off otherwise (the expression code has eye channels of its own); a field
    built directly from an undecided config takes no eye. A config saved before this option existed loads with it
    off, so its checkpoint still fits."""
    pose_frequencies: int = 3
    """Frequencies of the pose encoding (no raw input): 6 * 3 * 2 = 36 values."""
    deformation_init_scale: float = 1e-4
    """Uniform bound of the deformation's output-layer weights (biases 0) so training starts from the identity
    warp and ``w ~ 0`` (HyperNeRF's practice; the published code does not say). <= 0 keeps PyTorch's default."""

    def __setstate__(self, state: dict) -> None:
        # PyYAML and pickle restore a saved config through here: one written before ``use_eye`` existed lacks it,
        # and its checkpoint's networks have no eye input, so it means off (not the driver's default).
        state = dict(state)
        state.setdefault("use_eye", False)
        self.__dict__.update(state)

    def with_eye_track(self, has_track: bool) -> Self:
        """This config with ``use_eye`` decided for training data that has (or lacks) an eye track.

        ``None`` becomes True exactly for the audio driver with a track. True without a track is a ValueError
        (there is nothing to condition on); False stays False.
        """
        if self.use_eye is None:
            return dataclasses.replace(self, use_eye=self.driver == "audio" and has_track)
        if self.use_eye and not has_track:
            raise ValueError("use_eye is on but the training data has no eye track (an au.csv in the AD-NeRF layout).")
        return self

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
        # Zeros, not a random init: the model starts as the eye-less one and the global RNG is not touched.
        self.eye_code: nn.Parameter | None = (
            nn.Parameter(torch.zeros(self.config.code_dim)) if self.config.use_eye else None
        )
        """Direction ``v`` of the driving code a fully closed eye moves it by (``use_eye`` only), learned."""

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
        """The code the networks read (the driving code, moved by the eye closure when ``use_eye``) and the pose (only
        when this field uses it), from the samples' metadata. Every path to the networks goes through here."""
        name = type(self).__name__
        metadata = ray_samples.metadata or {}
        if keys.DRIVING_CODE not in metadata:
            raise KeyError(f"{name} needs ray_samples.metadata[{keys.DRIVING_CODE!r}] (the per-ray driving code).")
        pose = metadata.get(keys.POSE) if self.config.use_pose else None
        if self.config.use_pose and pose is None:
            raise KeyError(f"This {name} uses the pose: ray_samples.metadata[{keys.POSE!r}] is missing.")
        return self.with_eye(metadata[keys.DRIVING_CODE], metadata.get(keys.EYE)), pose

    def with_eye(
        self, code: Float[Tensor, "*cbs code_dim"], eye: Float[Tensor, "*cbs 1"] | None
    ) -> Float[Tensor, "*cbs code_dim"]:
        """``code + eye * eye_code`` when this field takes the eye (``code`` unchanged otherwise)."""
        if self.eye_code is None:
            return code
        if eye is None:
            raise KeyError(f"This {type(self).__name__} takes the eye channel: metadata[{keys.EYE!r}] is missing.")
        return code + eye.to(code) * self.eye_code.to(code)

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
