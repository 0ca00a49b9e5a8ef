"""A test and benchmark subject with known motion: scikit-image's ``astronaut()`` photo moved over time.

Frame ``k`` is the photo with its lower lip and chin pulled down by ``mouth[k]`` pixels (the mouth
opens), then cropped around the face and moved by the similarity ``affines[k]`` (rotation
``angles[k]`` clockwise in the image, scale ``scales[k]`` and shift ``shifts[k]`` about the image
centre). :func:`write_video` encodes the frames (H.264) with a speech track (AAC) through PyAV.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
from jaxtyping import Float, UInt8

# Where dlib finds the face in astronaut() (512x512): the crop centre, the mouth line between the
# lips, the mouth's half width and the chin row, in the photo's pixels.
_CROP_CENTRE = (222.0, 140.0)
_CROP_SIDE = 200.0
_MOUTH = (223.0, 146.0)
_MOUTH_HALF_WIDTH = 34.0
_CHIN_Y = 180.0


@dataclass
class MovingPhoto:
    """Ground truth of the moving photo."""

    size: int
    fps: float
    angles: Float[np.ndarray, " N"]
    """Radians, clockwise in the image (x right, y down)."""
    scales: Float[np.ndarray, " N"]
    shifts: Float[np.ndarray, "N 2"]
    """Pixels of the output frame."""
    mouth: Float[np.ndarray, " N"]
    """How far the lower lip is pulled down, pixels of the photo."""
    blank: List[Tuple[int, int]]
    """Inclusive frame ranges showing no face."""

    @property
    def num_frames(self) -> int:
        return len(self.angles)

    def affine(self, k: int) -> Float[np.ndarray, "2 3"]:
        """Reference-crop pixels -> frame ``k`` pixels."""
        c, s = np.cos(self.angles[k]), np.sin(self.angles[k])
        m = self.scales[k] * np.array([[c, -s], [s, c]])
        centre = np.array([self.size / 2.0, self.size / 2.0])
        return np.concatenate([m, (centre + self.shifts[k] - m @ centre)[:, None]], axis=1)


def _smooth_signal(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """A sum of three slow sinusoids, scaled to peak at ``amplitude``."""
    out = np.zeros_like(t)
    for _ in range(3):
        out += np.sin(2 * np.pi * rng.uniform(0.15, 0.6) * t + rng.uniform(0, 2 * np.pi))
    return amplitude * out / max(float(np.abs(out).max()), 1e-9)


def make_motion(
    num_frames: int,
    size: int = 256,
    fps: float = 25.0,
    seed: int = 0,
    max_angle_deg: float = 8.0,
    max_shift: float = 0.04,
    max_scale_change: float = 0.08,
    max_mouth: float = 8.0,
    blank: Optional[List[Tuple[int, int]]] = None,
) -> MovingPhoto:
    """Smooth random motion (``max_shift`` as a fraction of ``size``) and a syllable-rate mouth."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / fps
    angles = np.deg2rad(_smooth_signal(rng, t, max_angle_deg))
    scales = 1.0 + _smooth_signal(rng, t, max_scale_change)
    shifts = np.stack([_smooth_signal(rng, t, max_shift * size) for _ in range(2)], axis=1)
    # Syllables about 4 per second with random depth: |sin| bumps.
    depth = rng.uniform(0.4, 1.0, size=int(t[-1] * 4) + 2) if num_frames else np.ones(1)
    phase = t * 4.0
    mouth = max_mouth * depth[phase.astype(int)] * np.abs(np.sin(np.pi * phase)) ** 1.5
    return MovingPhoto(size, float(fps), angles, scales, shifts, mouth, list(blank or []))


def _open_mouth(photo: np.ndarray, amount: float) -> np.ndarray:
    """Pull the lower lip and chin down by ``amount`` pixels (a smooth local warp)."""
    import cv2

    if amount <= 0:
        return photo
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = _MOUTH
    wx = np.clip(1.0 - np.abs(xx - mx) / (_MOUTH_HALF_WIDTH * 1.4), 0.0, 1.0)
    wx = 0.5 - 0.5 * np.cos(np.pi * wx)
    ramp_in = np.clip((yy - my) / 4.0, 0.0, 1.0)
    ramp_out = np.clip(1.0 - (yy - _CHIN_Y) / 25.0, 0.0, 1.0)
    dy = amount * wx * ramp_in * ramp_out
    return cv2.remap(photo, xx, yy - dy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def render_frame(truth: MovingPhoto, k: int) -> UInt8[np.ndarray, "S S 3"]:
    """Frame ``k`` as R, G, B."""
    import cv2
    from skimage import data

    size = truth.size
    if any(a <= k <= b for a, b in truth.blank):
        rng = np.random.default_rng(k)
        base = np.linspace(60, 160, size, dtype=np.float32)[None, :, None] * np.ones((size, 1, 3), np.float32)
        return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    photo = _open_mouth(data.astronaut(), float(truth.mouth[k]))
    scale = size / _CROP_SIDE
    x0, y0 = _CROP_CENTRE[0] - _CROP_SIDE / 2, _CROP_CENTRE[1] - _CROP_SIDE / 2
    crop = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale], [0.0, 0.0, 1.0]])
    m = truth.affine(k) @ crop
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
) -> None:
    """Encode R, G, B frames as H.264 (+ AAC audio when given) in an mp4/mkv by PyAV.

    ``frames`` may be a generator: a long video is encoded as it is rendered, never held in memory.
    """
    from fractions import Fraction

    import av

    stream = iter(frames)
    first = next(stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height = first.shape[1], first.shape[0]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "16", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"  # type: ignore[attr-defined]
        for rgb in itertools.chain([first], stream):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if astream is not None and audio is not None:
            block = 1024
            samples = np.asarray(audio, dtype=np.float32)
            for start in range(0, len(samples), block):
                chunk = samples[start : start + block][None, :]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                for packet in astream.encode(frame):  # type: ignore[attr-defined]
                    container.mux(packet)
            for packet in astream.encode(None):  # type: ignore[attr-defined]
                container.mux(packet)


def write_moving_photo(
    path: Path, truth: MovingPhoto, audio: Optional[np.ndarray] = None, sample_rate: int = 16000
) -> None:
    """Render every frame of ``truth`` and encode the video."""
    write_video(path, (render_frame(truth, k) for k in range(truth.num_frames)), truth.fps, audio, sample_rate)
