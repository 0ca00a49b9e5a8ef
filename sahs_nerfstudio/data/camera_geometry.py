"""Camera math shared by the dataparser and the models: where a world direction lands on the background image, and
each view's frustum corners (nerfstudio's camera: ``d_cam = ((u - cx)/fx, -(v - cy)/fy, -1)``)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras


def background_projection(
    c2w: Float[torch.Tensor, "N 3 4"],
    fx: Float[torch.Tensor, "N 1"],
    fy: Float[torch.Tensor, "N 1"],
    cx: Float[torch.Tensor, "N 1"],
    cy: Float[torch.Tensor, "N 1"],
    width: Float[torch.Tensor, "N 1"],
    height: Float[torch.Tensor, "N 1"],
) -> Float[torch.Tensor, "N 9"]:
    """Matrices M with ``(M d)[:2] / (M d)[2]`` = the normalised image coordinate a world direction d hits.

    nerfstudio's camera: ``d_cam = ((u - cx)/fx, -(v - cy)/fy, -1)`` (up to scale), so
    ``q = diag(1, -1, -1) R^T d`` gives ``u = cx + fx q_x / q_z``; dividing by the image size makes
    the coordinate independent of the rendering resolution.
    """
    n = c2w.shape[0]
    k = torch.zeros(n, 3, 3, dtype=c2w.dtype, device=c2w.device)
    k[:, 0, 0] = (fx / width)[:, 0]
    k[:, 0, 2] = (cx / width)[:, 0]
    k[:, 1, 1] = (fy / height)[:, 0]
    k[:, 1, 2] = (cy / height)[:, 0]
    k[:, 2, 2] = 1.0
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=c2w.dtype, device=c2w.device))
    m = k @ flip @ c2w[:, :3, :3].transpose(-1, -2)
    return m.reshape(n, 9)


def frustum_corners(
    c2w: Float[torch.Tensor, "N 3 4"],
    fx: Float[torch.Tensor, " N"],
    fy: Float[torch.Tensor, " N"],
    cx: Float[torch.Tensor, " N"],
    cy: Float[torch.Tensor, " N"],
    width: Float[torch.Tensor, " N"],
    height: Float[torch.Tensor, " N"],
    near: float,
    far: float,
) -> Float[torch.Tensor, "N 8 3"]:
    """World positions of each view's image corners at axis depths ``near`` and ``far`` (nerfstudio's camera:
    ``d_cam = ((u - cx)/fx, -(v - cy)/fy, -1)``; the sign of a focal only permutes the corners)."""
    n = c2w.shape[0]
    u = torch.stack([torch.zeros_like(width), width, torch.zeros_like(width), width], dim=-1).expand(n, 4)
    v = torch.stack([torch.zeros_like(height), torch.zeros_like(height), height, height], dim=-1).expand(n, 4)
    d = torch.stack([(u - cx[:, None]) / fx[:, None], -(v - cy[:, None]) / fy[:, None], -torch.ones_like(u)], dim=-1)
    depths = torch.tensor([near, far], dtype=d.dtype)
    cam = (d[:, None] * depths[None, :, None, None]).reshape(n, 8, 3)
    return cam @ c2w[:, :3, :3].transpose(-1, -2) + c2w[:, None, :3, 3]


def cameras_background_projection(cameras: Cameras) -> Float[torch.Tensor, "N 9"]:
    """:func:`background_projection` for every camera of a nerfstudio ``Cameras``."""
    cams = cameras.flatten() if cameras.shape else cameras.reshape((1,))
    return background_projection(
        cams.camera_to_worlds,
        cams.fx,
        cams.fy,
        cams.cx,
        cams.cy,
        cams.width.to(cams.fx.dtype),
        cams.height.to(cams.fx.dtype),
    )
