"""The head-pose code: a camera-to-world matrix as 3 Euler angles and 3 translations.

The dataparser stores it per frame in ``Cameras.metadata["pose"]``; the viewer computes it from
the viewer's own camera when the pose follows the camera. One implementation serves both.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

POSE_DIM = 6


def euler_xyz_from_rotation(rot: Float[torch.Tensor, "*bs 3 3"]) -> Float[torch.Tensor, "*bs 3"]:
    """Angles (a, b, c) with ``R = Rz(c) @ Ry(b) @ Rx(a)`` (the usual roll-pitch-yaw convention)."""
    # Clamp so that rounding never pushes asin outside its domain at gimbal lock.
    b = torch.asin((-rot[..., 2, 0]).clamp(-1.0, 1.0))
    a = torch.atan2(rot[..., 2, 1], rot[..., 2, 2])
    c = torch.atan2(rot[..., 1, 0], rot[..., 0, 0])
    return torch.stack([a, b, c], dim=-1)


def rotation_from_euler_xyz(angles: Float[torch.Tensor, "*bs 3"]) -> Float[torch.Tensor, "*bs 3 3"]:
    """Inverse of :func:`euler_xyz_from_rotation`: ``Rz(c) @ Ry(b) @ Rx(a)``."""
    a, b, c = angles.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(*a.shape, 3, 3)
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(*a.shape, 3, 3)
    rz = torch.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(*a.shape, 3, 3)
    return rz @ ry @ rx


def pose_code(c2w: Float[torch.Tensor, "*bs 3 4"]) -> Float[torch.Tensor, "*bs 6"]:
    """Euler angles then translation of a camera-to-world matrix (3x4 or 4x4)."""
    return torch.cat([euler_xyz_from_rotation(c2w[..., :3, :3]), c2w[..., :3, 3]], dim=-1)
