"""Camera paths for driven rendering: the split's cameras (cycled), one fixed camera, an orbit around it, or
one camera turned about the head as a driver video's head turns."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

CameraPath = Literal["dataset", "frame", "orbit", "driver"]
CAMERA_PATHS: tuple[str, ...] = ("dataset", "frame", "orbit", "driver")


def camera_for_frame(dataset_cameras: Cameras, index: int) -> Cameras:
    """Camera ``index`` of a dataset, without its conditioning metadata: shape (1,)."""
    cam = dataset_cameras[index : index + 1]
    return Cameras(
        camera_to_worlds=cam.camera_to_worlds.clone(),
        fx=cam.fx.clone(),
        fy=cam.fy.clone(),
        cx=cam.cx.clone(),
        cy=cam.cy.clone(),
        width=cam.width.clone(),
        height=cam.height.clone(),
        camera_type=cam.camera_type.clone(),
    )


def orbit_pose(c2w: Float[Tensor, "3 4"], pivot_distance: float, angle: float) -> Float[Tensor, "3 4"]:
    """``c2w`` turned by ``angle`` radians about its own up axis through a point ahead of it."""
    rot, pos = c2w[:3, :3], c2w[:3, 3]
    up = rot[:, 1] / rot[:, 1].norm()
    pivot = pos - rot[:, 2] * pivot_distance  # nerfstudio cameras look along -z
    k = torch.tensor([[0.0, -up[2], up[1]], [up[2], 0.0, -up[0]], [-up[1], up[0], 0.0]], dtype=c2w.dtype)
    turn = torch.eye(3, dtype=c2w.dtype) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    out = c2w.clone()
    out[:3, :3] = turn @ rot
    out[:3, 3] = pivot + turn @ (pos - pivot)
    return out


def head_turned_pose(c2w: Float[Tensor, "3 4"], head_rotation: Float[Tensor, "3 3"]) -> Float[Tensor, "3 4"]:
    """``c2w`` moved about the head (the world origin) so that the head looks turned by ``head_rotation``
    (a rotation in this camera's own axes): the camera turns the other way about the origin."""
    rot = c2w[:3, :3]
    world = rot @ head_rotation.to(c2w) @ rot.T  # the head's turn in world axes
    out = c2w.clone()
    out[:3, :3] = world.T @ rot
    out[:3, 3] = world.T @ c2w[:3, 3]
    return out


def camera_path(
    dataset_cameras: Cameras,
    kind: CameraPath,
    frame: int,
    count: int,
    orbit_degrees: float,
    pivot_distance: float,
    resolution_scale: float = 1.0,
    head_rotations: Tensor | None = None,
) -> Callable[[int], Cameras]:
    """The camera of video frame ``t`` (0..count-1), a fresh object per call.

    ``dataset``: the dataset's cameras, cycled; ``frame``: camera ``frame`` throughout; ``orbit``:
    camera ``frame`` swung +-``orbit_degrees`` about its up axis through a point ``pivot_distance``
    ahead of it, one period over the video; ``driver``: camera ``frame`` turned about the head by
    ``head_rotations[t]`` (a driver video's head motion).
    """
    if kind not in CAMERA_PATHS:
        raise ValueError(f"cameras must be one of {CAMERA_PATHS}, found {kind!r}")
    num_cameras = len(dataset_cameras)
    base = camera_for_frame(dataset_cameras, frame)

    def camera_at(t: int) -> Cameras:
        if kind == "dataset":
            cam = camera_for_frame(dataset_cameras, t % num_cameras)
        else:
            cam = camera_for_frame(dataset_cameras, frame)
            if kind == "orbit":
                angle = math.radians(orbit_degrees) * math.sin(2.0 * math.pi * t / max(count, 1))
                cam.camera_to_worlds[0] = orbit_pose(base.camera_to_worlds[0], pivot_distance, angle)
            elif kind == "driver":
                assert head_rotations is not None, "--cameras driver needs a driver video's head rotations"
                cam.camera_to_worlds[0] = head_turned_pose(base.camera_to_worlds[0], head_rotations[t])
        if resolution_scale != 1.0:
            cam.rescale_output_resolution(resolution_scale)
        return cam

    return camera_at
