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


# ----------------------------------------------------------------------------------------------
# sahs-process's head poses: what happens when a solver reports no solution


def _known_sequence(n: int = 12):
    import numpy as np

    from sahs_nerfstudio.process.pose import camera_matrix, project
    from sahs_nerfstudio.process.shape import SubjectShape

    rng = np.random.default_rng(0)
    points = rng.uniform(-0.08, 0.08, size=(478, 3)) * np.array([1.0, 1.2, 0.6])
    shape = SubjectShape(points, np.arange(0, 478, 3), np.zeros(478))
    rvecs = np.stack([np.array([0.05, 0.1, 0.02]) * np.sin(0.4 * f) for f in range(n)])
    tvecs = np.tile([0.01, -0.02, 0.6], (n, 1))
    mesh2d = project(rvecs, tvecs, points, camera_matrix(300.0, 256, 256))
    return shape, rvecs, tvecs, mesh2d


def test_a_frame_pnp_cannot_solve_is_said_and_fitted_by_the_refinement(monkeypatch):
    import cv2
    import numpy as np

    from sahs_nerfstudio.process import pose

    shape, rvecs, _, mesh2d = _known_sequence()
    bad = mesh2d[6, shape.rigid]
    solve = cv2.solvePnP

    def failing(obj, img, *args, **kwargs):
        return False if np.array_equal(img, bad) else solve(obj, img, *args, **kwargs)

    kept = np.ones(len(mesh2d), dtype=bool)
    clean = pose.solve_poses(mesh2d, kept, shape, 256, 256, focal=300.0, smoothness=1.0)
    assert clean.problems == []
    monkeypatch.setattr(cv2, "solvePnP", failing)
    result = pose.solve_poses(mesh2d, kept, shape, 256, 256, focal=300.0, smoothness=1.0)
    assert len(result.problems) == 1 and "PnP found no pose for 1 frame(s) (6)" in result.problems[0]
    assert "joint refinement fits it" in result.problems[0]
    # the refinement found frame 6 from its 2-D points, as it does when PnP solves it (smoothing included)
    assert np.abs(result.rvecs[6] - clean.rvecs[6]).max() < 1e-3
    assert np.abs(result.rvecs[6] - rvecs[6]).max() < 0.01
    plain = pose.solve_poses(mesh2d, kept, shape, 256, 256, focal=300.0, smoothness=0.0)
    assert "no refinement: kept as is" in plain.problems[0]
    np.testing.assert_array_equal(plain.rvecs[6], plain.rvecs[5])  # the previous frame's pose, as said


def test_a_refinement_without_a_solution_keeps_the_pnp_poses_and_says_so(monkeypatch):
    import numpy as np
    import scipy.optimize

    from sahs_nerfstudio.process import pose

    shape, rvecs, _, mesh2d = _known_sequence()
    kept = np.ones(len(mesh2d), dtype=bool)
    pnp = pose.solve_poses(mesh2d, kept, shape, 256, 256, focal=300.0, smoothness=0.0)
    assert pnp.problems == []

    class NoSolution:
        status = -1
        x = np.full(len(mesh2d) * 6, np.nan)

    monkeypatch.setattr(scipy.optimize, "least_squares", lambda *a, **k: NoSolution())
    result = pose.solve_poses(mesh2d, kept, shape, 256, 256, focal=300.0, smoothness=1.0)
    assert result.problems == ["pose refinement failed on frames 0-11: their per-frame PnP poses are kept"]
    np.testing.assert_array_equal(result.rvecs, pnp.rvecs)
    assert np.abs(pnp.rvecs - rvecs).max() < 1e-4  # exact 2-D points: PnP alone recovers the poses
