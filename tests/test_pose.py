"""The head-pose code against matrices built by hand."""

import math

import torch

from sahs_nerfstudio.data.pose import euler_xyz_from_rotation, pose_code, rotation_from_euler_xyz


def _rx(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


def _ry(b: float) -> torch.Tensor:
    c, s = math.cos(b), math.sin(b)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def _rz(g: float) -> torch.Tensor:
    c, s = math.cos(g), math.sin(g)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


def test_pose_code_of_known_matrix():
    a, b, g = 0.3, -0.25, 0.4
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = _rz(g) @ _ry(b) @ _rx(a)
    c2w[:3, 3] = torch.tensor([0.01, -0.02, 0.5])
    code = pose_code(c2w)
    assert torch.allclose(code, torch.tensor([a, b, g, 0.01, -0.02, 0.5], dtype=torch.float64), atol=1e-12)


def test_euler_round_trip_batched():
    angles = (torch.rand(100, 3, dtype=torch.float64) - 0.5) * torch.tensor([3.0, 1.5, 3.0], dtype=torch.float64)
    rot = rotation_from_euler_xyz(angles)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(euler_xyz_from_rotation(rot), angles, atol=1e-9)
    # The hand-built single-axis rotations agree with the batched builder.
    assert torch.allclose(rotation_from_euler_xyz(torch.tensor([0.7, 0.0, 0.0], dtype=torch.float64)), _rx(0.7))
