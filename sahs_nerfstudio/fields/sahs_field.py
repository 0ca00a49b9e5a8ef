"""SAHS field: a (possibly shared) hyper-space deformation followed by this level's canonical NeRF.

Conditioning, heads and the nerfstudio entry points are :class:`~sahs_nerfstudio.fields.base.SAHSFieldBase`'s;
this module gives the point function: warp/hyper MLPs, then the canonical NeRF at ``(x', w)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY, SAHSFieldBase
from sahs_nerfstudio.fields.canonical_field import CanonicalField
from sahs_nerfstudio.fields.deformation import HyperDeformation
from sahs_nerfstudio.fields.mlp_config import SAHSMLPFieldConfig


@dataclass
class SAHSFieldConfig(SAHSMLPFieldConfig):
    """The SAHS field (see :class:`SAHSMLPFieldConfig` for every size and switch). Use :meth:`for_driver` for
    the published configuration of a driver; :meth:`resolved` fills the ``None``s."""

    _target: type = field(default_factory=lambda: SAHSField)
    """Class this config builds (``setup(deformation=..., aabb=...)``)."""


class SAHSField(SAHSFieldBase[SAHSFieldConfig]):
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
        super().__init__(config, config.density_noise_std)
        self.deformation = deformation if deformation is not None else HyperDeformation(self.config)
        if aabb is None:
            aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        self.canonical = CanonicalField(self.config, aabb)

    def forward_points(
        self,
        positions: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*dbs 3"] | None,
        code: Float[Tensor, "*cbs code_dim"],
        pose: Float[Tensor, "*cbs pose_dim"] | None = None,
        density_noise_std: float = 0.0,
    ) -> dict[str, Tensor]:
        """See :meth:`SAHSFieldBase.forward_points`; ``"density"`` is the ReLU of the noisy raw density."""
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
