"""Near/far as depths along the optical axis, as both original loaders sample them.

NeRFace and AD-NeRF sample ``o + t d`` with un-normalised directions whose camera-space z is -1, so
their ``near``/``far`` are depths along the camera's optical axis: a corner ray travels further than
the centre ray to reach the same depth. nerfstudio's rays are unit vectors and the camera keeps each
ray's original length in ``ray_bundle.metadata["directions_norm"]`` (the norm of
``((u - cx) / fx, -(v - cy) / fy, -1)``, whatever the sign of fx), so the distance bounds of a ray are
``near * directions_norm`` and ``far * directions_norm``. Every sampler of both methods (uniform +
PDF, proposal networks) starts from these per-ray bounds, and the background sample sits at the
per-ray far bound (see ``SAHSModel._render_level``).

Unlike nerfstudio's ``NearFarCollider``, the near bound is kept at evaluation (its default resets it
to 0 there): the original renders its validation frames with the training bounds.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.scene_colliders import SceneCollider
from torch import Tensor


def axis_depth_scale(ray_bundle: RayBundle) -> Float[Tensor, "*bs 1"]:
    """Distance along each unit ray per unit of depth along the optical axis (``directions_norm``)."""
    norm = (ray_bundle.metadata or {}).get("directions_norm")
    if norm is None:
        # Rays not made by nerfstudio's cameras (hand-built in tests or scripts) carry no norm:
        # their bounds are then distances along the ray, and we say so once.
        warnings.warn(
            "ray bundle without metadata['directions_norm']: near/far used as distances along the ray",
            stacklevel=3,
        )
        return torch.ones_like(ray_bundle.origins[..., :1])
    return norm.to(ray_bundle.origins)


class AxisDepthCollider(SceneCollider):
    """Sets ``nears``/``fars`` so that sampled depths along the optical axis span ``[near, far]``.

    Args:
        near_plane: depth of the near plane along the optical axis (scene units).
        far_plane: depth of the far plane along the optical axis.
    """

    def __init__(self, near_plane: float, far_plane: float, **kwargs) -> None:
        if not 0.0 <= near_plane < far_plane:
            raise ValueError(f"need 0 <= near < far, got near={near_plane}, far={far_plane}")
        self.near_plane = float(near_plane)
        self.far_plane = float(far_plane)
        super().__init__(**kwargs)

    def set_nears_and_fars(self, ray_bundle: RayBundle) -> RayBundle:
        scale = axis_depth_scale(ray_bundle)
        ray_bundle.nears = scale * self.near_plane
        ray_bundle.fars = scale * self.far_plane
        return ray_bundle
