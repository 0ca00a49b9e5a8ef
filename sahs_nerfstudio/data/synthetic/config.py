"""What the synthetic subject is made of: its controls, constants and the generation config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sahs_nerfstudio.errors import FormatError, flag_error

LayoutName = Literal["nerface", "adnerf"]

CONTROL_NAMES: tuple[str, ...] = ("jaw_open", "smile", "pucker", "brow_raise", "blink", "gaze_x", "gaze_y")
JAW, SMILE, PUCKER, BROW, BLINK, GAZE_X, GAZE_Y = range(len(CONTROL_NAMES))
EXPRESSION_DIM = 76
SAMPLE_RATE = 16000
SUBJECT_FILE = "subject.json"
"""Sidecar at the output root with the ground-truth controls, poses and split of the sequence."""

TRAIN_UPPER_MAX = 0.2
TRAIN_LOWER_MAX = 0.4
NOVEL_THRESHOLD = 0.5

NERFACE_PRINCIPAL_POINT = (0.49, 0.51)
"""``cx, cy`` fractions written to the NeRFace intrinsics (slightly off centre on purpose)."""
FOCAL_SCALE = 1.4
"""Focal length in pixels = FOCAL_SCALE * min(width, height) (about 40 deg vertical field of view)."""
BASE_CAMERA_POSITION = (0.0, -0.025, 0.5)
"""The static camera, looking along -z at the head; the head-frame origin is 0.5 away."""


@dataclass
class SyntheticConfig:
    """What to generate: one procedural talking subject written in both dataset layouts."""

    output: Path = Path("data/synthetic")
    """Output folder; the layouts go to ``<output>/nerface`` and ``<output>/adnerf``."""
    resolution: int = 128
    """Width and height of the square images (overridden by ``width``/``height`` when set)."""
    width: int | None = None
    """Image width in pixels; defaults to ``resolution``."""
    height: int | None = None
    """Image height in pixels; defaults to ``resolution``."""
    num_train: int = 150
    """Frames of the training part (the start of the sequence)."""
    num_test: int | None = None
    """Held-out frames at the end of the sequence; default ``num_train // 10`` (at least 1), which makes
    AD-NeRF's positional validation split (last N // 11 frames) exactly the held-out part."""
    num_val: int = 5
    """NeRFace validation frames: this many held-out frames, evenly spaced (all of them if fewer)."""
    fps: float = 25.0
    """Video frame rate; audio windows are centred on the frames at this rate."""
    seed: int = 0
    """Seeds appearance, motion, audio and expression basis; the same seed gives byte-identical files."""
    glasses: bool = True
    """Give the subject eyeglasses (class 3), so that all 12 classes appear."""
    layouts: tuple[LayoutName, ...] = ("nerface", "adnerf")
    """Which dataset layouts to write."""
    max_rotation_deg: float = 20.0
    """Largest head yaw in degrees (pitch gets 0.7 of it, roll 0.5)."""
    max_translation: float = 0.01
    """Largest head translation per axis, in scene units (the head radius is about 0.1)."""
    torso_follow: float = 0.25
    """Fraction of the head's rotation and translation the torso follows."""
    expression_noise: float = 0.01
    """Standard deviation of the noise added to the 76-d expression vectors."""
    jpeg_quality: int = 95
    """Quality of the AD-NeRF JPEG images."""
    clean: bool = True
    """Delete ``<output>/nerface`` and ``<output>/adnerf`` first when they hold a previous synthetic subject."""

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width or self.resolution, self.height or self.resolution)

    @property
    def held_out_count(self) -> int:
        return max(1, self.num_train // 10) if self.num_test is None else self.num_test

    def check(self) -> None:
        """A FormatError naming the flag of the first value no subject can be generated with."""
        width, height = self.image_size
        checks = [
            ("--width" if self.width is not None else "--resolution", width >= 8, "at least 8 pixels", width),
            ("--height" if self.height is not None else "--resolution", height >= 8, "at least 8 pixels", height),
            ("--num-train", self.num_train >= 1, "at least one training frame", self.num_train),
            ("--num-test", self.held_out_count >= 1, "at least one held-out frame", self.held_out_count),
            ("--num-val", self.num_val >= 1, "at least one validation frame", self.num_val),
            ("--fps", math.isfinite(self.fps) and self.fps > 0, "a positive frame rate", self.fps),
            ("--jpeg-quality", 1 <= self.jpeg_quality <= 100, "1 .. 100", self.jpeg_quality),
            ("--layouts", len(self.layouts) > 0, "at least one layout (nerface, adnerf)", "none"),
        ]
        for flag, ok, expected, found in checks:
            if not ok:
                raise flag_error(flag, expected, found)
        if Path(self.output).exists() and not Path(self.output).is_dir():
            raise FormatError(self.output, "--output", "a folder", "a file")
