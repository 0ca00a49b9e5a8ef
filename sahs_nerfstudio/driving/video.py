"""Another person's video as driving codes of a trained subject: tracked with the project's tracker and
mapped into the subject's expression basis (``sahs-render --driver clip.mp4``).

1. **Track** (:func:`track_driver`): the clip decoded at the subject's frame rate, cut as
   ``sahs-process`` cuts (``--crop auto``: a square around a small face), MediaPipe's mesh per frame;
   nothing is written. Frames without a face are listed; they are an error unless the caller skips
   them (the sound of skipped frames is cut out too, so lips and voice stay together).
2. **Normalise**: the driver's own 3-D face (:func:`~.shape.subject_shape` on its clip) and each frame
   moved onto it: pose and distance removed, in the driver's inter-ocular distances.
3. **Map** (:meth:`~.expression.ExpressionBasis.transfer`): each frame's change from the driver's neutral
   (the median over the clip, or ``neutral_frame``), put on the subject's own neutral face and encoded in
   the subject's basis. A wide smile of a narrow-mouthed driver is a wide smile of the subject; a driver
   whose mouth rests open does not keep the avatar's mouth open.

Limits: the change is transferred in the subject's proportions but not re-targeted (a driver whose jaw
drops further than the subject ever did asks the model for codes outside its training range); blinks and
gaze carry over as lid and iris motion; the tongue and teeth are not tracked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.process.decode import decode_audio, resampled_frames, square_crop_resize, video_start
from sahs_nerfstudio.process.expression import EYE_CHANNELS, ExpressionBasis, normalised_meshes
from sahs_nerfstudio.process.face_mesh import NUM_POINTS, MeshTracker
from sahs_nerfstudio.process.framing import choose_crop
from sahs_nerfstudio.process.landmarks import format_ranges, runs
from sahs_nerfstudio.process.shape import SubjectShape, subject_shape

TRACK_SIZE = 512
"""Side of the square the driver's frames are tracked at."""


@dataclass
class DriverTrack:
    """A driver clip's meshes (NaN without a face) and its sound."""

    video: Path
    fps: float
    mesh: Float[np.ndarray, "T 478 3"]
    audio: Optional[np.ndarray] = None
    """Mono float32 at :data:`~sahs_nerfstudio.data.audio.FEATURE_SAMPLE_RATE`, aligned to frame 0."""
    size: Tuple[int, int] = (TRACK_SIZE, TRACK_SIZE)
    """Width and height of the frames the mesh was tracked in, pixels (not square with ``crop="none"``): its
    camera's principal point is their centre."""

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.mesh).all(axis=(1, 2))

    @property
    def missing(self) -> List[Tuple[int, int]]:
        """Inclusive frame ranges without a face."""
        return runs(~self.found)


def track_driver(video: Path, fps: float = 25.0, crop: str = "auto") -> DriverTrack:
    """Track ``video`` (module docstring, step 1)."""
    mode, box = choose_crop(crop, video, fps)
    tracker = MeshTracker(max_faces=1)
    meshes = []
    size = (TRACK_SIZE, TRACK_SIZE)
    try:
        for k, (rgb, _) in enumerate(resampled_frames(video, fps)):
            frame = square_crop_resize(rgb, TRACK_SIZE, mode != "none", box)
            size = (frame.shape[1], frame.shape[0])
            found = tracker.step(frame, k)
            meshes.append(found.mesh if found.mesh is not None else np.full((NUM_POINTS, 3), np.nan))
    finally:
        tracker.close()
    mesh = np.stack(meshes) if meshes else np.zeros((0, NUM_POINTS, 3))
    return DriverTrack(video, fps, mesh, decode_audio(video, video_start(video)), size)


def format_missing(track: DriverTrack) -> str:
    """``frames 3-7 (0.12-0.32 s), ...`` of the frames without a face."""
    return format_ranges(track.missing, track.fps)


def check_faces(track: DriverTrack, skip_missing: bool) -> np.ndarray:
    """The frames to drive with: all of them, or (``skip_missing``) those with a face; a clip with no face, or
    missing faces without ``skip_missing``, is one :class:`FormatError` naming the frames."""
    found = track.found
    if len(found) == 0 or not found.any():
        raise FormatError(
            track.video, "<faces>", "a face in the driver's frames", f"no face in any of {len(found)} frames"
        )
    if not found.all() and not skip_missing:
        raise FormatError(
            track.video,
            "<faces>",
            "a face in every frame of the driver (or --skip-missing to leave the others out)",
            f"no face in {format_missing(track)}",
        )
    return np.flatnonzero(found)


def driver_codes(
    track: DriverTrack,
    basis: ExpressionBasis,
    frames: np.ndarray,
    neutral_frame: Optional[int] = None,
    shape: Optional[SubjectShape] = None,
) -> Float[np.ndarray, "n D"]:
    """The subject's codes for the driver's ``frames`` (module docstring, steps 2-3); ``shape``: the driver's
    own 3-D face when already computed."""
    mesh = track.mesh[frames]
    shape = shape if shape is not None else subject_shape(mesh, np.ones(len(mesh), bool))
    p = normalised_meshes(mesh, shape)
    if neutral_frame is None:
        own_neutral = np.median(p, axis=0)
    else:
        if neutral_frame not in set(frames.tolist()):
            raise FormatError(
                track.video,
                "--driver-neutral-frame",
                f"a frame with a face, 0..{len(track.mesh) - 1}",
                str(neutral_frame),
            )
        own_neutral = p[int(np.flatnonzero(frames == neutral_frame)[0])]
    return basis.transfer(p, own_neutral)


def head_rotations(
    track: DriverTrack, frames: np.ndarray, shape: Optional[SubjectShape] = None
) -> Float[np.ndarray, "n 3 3"]:
    """The driver's head rotation in each of ``frames`` relative to its median head pose, in the camera's axes
    of the layouts (x right, y up, z towards the viewer): what ``--cameras driver`` turns the avatar by."""
    from sahs_nerfstudio.process.pose import rodrigues, solve_poses
    from sahs_nerfstudio.process.template import FLIP

    mesh = track.mesh[frames]
    shape = shape if shape is not None else subject_shape(mesh, np.ones(len(mesh), bool))
    width, height = track.size
    poses = solve_poses(mesh[..., :2], np.ones(len(mesh), bool), shape, width, height)
    rot = rodrigues(poses.rvecs)
    reference = rodrigues(np.median(poses.rvecs, axis=0)[None])[0]
    return FLIP @ (rot @ reference.T) @ FLIP


def eye_openness(codes: Float[np.ndarray, "n D"]) -> Float[np.ndarray, " n"]:
    """The mean of the two eye-openness channels (1: as open as the subject's usual, 0: shut)."""
    return codes[:, list(EYE_CHANNELS)].mean(axis=1)
