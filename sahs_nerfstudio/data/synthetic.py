"""A procedural head-and-shoulders talking person, written in the NeRFace and AD-NeRF layouts.

One underlying 3-D sequence is ray-cast analytically (numpy, one ray per pixel) into both layouts,
so a NeRF can learn it exactly and both dataparser paths can be tested against the same truth.

Scene (units: the head is about 0.1 in radius; the head-fixed frame has +y up, +z out of the face
toward the base camera, +x to the subject's left). Everything is built of ellipsoids, some clipped
by a predicate (hair shell, eyelids, glasses rims, the mouth opening in the face skin):

==========  ===============================================================================
class       geometry
==========  ===============================================================================
skin        head ellipsoid (with a mouth slot that opens with the jaw), chin (moves with the
            jaw), eyelids (skin-coloured spheres over the eyes whose opening closes on blink)
nose        tilted ellipsoid, nostrils painted darker
eyeglasses  optional: two rims (ellipsoid discs with the lens cut out), a bridge, two temples
eyes        eyeballs; the iris and pupil sit where the gaze direction leaves the eyeball
eyebrows    flat ellipsoids lying on the forehead, moving up with ``brow_raise``
ears        flattened ellipsoids at the sides
mouth       a dark cavity inside the head (teeth, tongue) seen through the mouth slot; the far
            wall of the head seen through the slot is mouth interior too
lips        upper lip (head), lower lip (jaw), each in two halves whose corners rise with smile;
            narrower and protruding with pucker
hair        an ellipsoid shell over the skull, cut along a hairline
neck, torso in the torso frame, which moves much less than the head
background  a textured static image (image space, identical for every frame)
==========  ===============================================================================

Shading is Lambert + ambient with the light fixed to each moving part (head, jaw, torso), so the
colour of a surface point depends on the point and the expression only (no view dependence), over
procedural solid textures so colour has structure everywhere.

Motion. The real camera is static; the head moves by ``H(t)`` (rotation about the top of the neck,
yaw about +-20 deg, pitch +-14, roll +-10, small translation, smooth) and the torso by ``B(t)`` (a
quarter of the head's rotation). As in NeRFace the dataset's world is the head frame: the camera to
world of frame t is ``inv(H(t)) @ C`` for the static base camera ``C``, and the torso, in that
frame, moves by ``inv(H(t)) @ B(t)`` (non-rigid head-torso motion, as in real video). AD-NeRF
stores the same camera-to-world per frame; its translation is "already divided by 10" in the
original pipeline, and our units are already that small, so it is used as is.

Expression. Seven controls per frame, :data:`CONTROL_NAMES`. The audio causes the mouth: ``aud.wav``
(16 kHz) is a sequence of voiced syllables (a glottal harmonic source through the formant filters
of a vowel a/e/i/o/u). ``jaw_open`` is the RMS of the wav in the 40 ms around the frame (a fixed
affine map, clipped to [0, 1]); ``smile``/``pucker`` are set by the timbre: the vowel being voiced
around the frame (taken from the syllable schedule the wav was synthesised from, not re-estimated
from the waveform), weighted by its envelope (i, e smile; u, o pucker; a neither). ``blink``,
``brow_raise`` and the gaze are independent smooth events. The 76-d expression vector is a fixed
random basis (from the seed) times the controls plus small noise, like tracked blendshapes.

Held-out frames and the novelty rule. Frames ``0 .. num_train - 1`` are the training part and the
last ``num_test`` frames the held-out part. With ``upper = max(blink, brow_raise)`` and
``lower = max(jaw_open, smile)``:

* no training frame has ``upper > 0.2`` together with ``lower > 0.4`` (blinks and brow raises are
  only placed in quiet stretches of the training audio);
* the held-out part starts a loud a/i syllable with a fast onset right at its first frame (the
  audio windows of the training frames end before it), keeps talking loudly and raises the brows
  throughout (plus a blink at its loudest frame when ``num_test >= 5``), so nearly every held-out
  frame (at least half; tested over seeds and sizes) has ``upper > 0.5`` and ``lower > 0.5``:
  combinations never seen in training, although each half is (quiet blinks and brow raises, loud
  speech). :func:`novel_combination` and :func:`violates_training_rule` implement the rule.

Splits. NeRFace: train = training part, test = held-out part, val = ``num_val`` held-out frames
(evenly spaced). AD-NeRF: its positional split (:func:`adnerf_split_indices`, last ``N // 11``
frames validate). With the default ``num_test = num_train // 10`` the AD-NeRF val split is exactly
the held-out part; with another ``num_test`` the summary says how they differ.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import (
    ADNERF_AUDIO,
    ADNERF_AUDIO_WAV,
    ADNERF_BACKGROUND,
    NERFACE_BACKGROUND,
    ADNeRFFrame,
    ADNeRFSplit,
    NeRFaceFrame,
    NeRFaceSplit,
    adnerf_image_path,
    adnerf_mask_path,
    adnerf_parsing_path,
    adnerf_split_indices,
    nerface_image_path,
    nerface_mask_path,
    write_adnerf_split,
    write_audio_features,
    write_nerface_split,
    write_rgb,
)

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

HEAD_RADII = np.array([0.072, 0.095, 0.085])
MOUTH_Y = -0.047
JAW_HINGE = np.array([0.0, -0.005, -0.03])
JAW_MAX_ANGLE = 0.22
HEAD_PIVOT = np.array([0.0, -0.06, -0.02])
TORSO_PIVOT = np.array([0.0, -0.25, -0.03])
LIGHT_DIR = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
AMBIENT, DIFFUSE = 0.42, 0.62
VOWELS = {
    # formants (Hz) and bandwidths, and the lip shape the vowel sets: (smile, pucker)
    "a": ((730, 1090, 2440), (90, 110, 160), (0.15, 0.0)),
    "e": ((530, 1840, 2480), (70, 100, 160), (0.5, 0.0)),
    "i": ((270, 2290, 3010), (60, 100, 170), (0.9, 0.0)),
    "o": ((570, 840, 2410), (70, 80, 160), (0.0, 0.6)),
    "u": ((300, 870, 2240), (60, 80, 160), (0.0, 0.9)),
}
HEAD_CLASSES = (
    sem.SKIN,
    sem.NOSE,
    sem.EYEGLASSES,
    sem.EYES,
    sem.EYEBROWS,
    sem.EARS,
    sem.MOUTH_INTERIOR,
    sem.LIPS,
    sem.HAIR,
)


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


# ----------------------------------------------------------------------------------------------
# Cameras: the one place of this module that turns pixels into rays and 3-D points into pixels.


@dataclass
class PinholeCamera:
    """A layout's pinhole: pixel (i=column, j=row) looks along ``((i - cx)/fx, -(j - cy)/fy, -1)``."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    """Principal point column in pixels."""
    cy: float
    """Principal point row in pixels."""

    def directions(self) -> np.ndarray:
        """Camera-space directions ``[H*W, 3]`` in row-major pixel order (integer coordinates)."""
        j, i = np.meshgrid(
            np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64), indexing="ij"
        )
        d = np.stack([(i - self.cx) / self.fx, -(j - self.cy) / self.fy, -np.ones_like(i)], axis=-1)
        return d.reshape(-1, 3)

    def project(self, c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``[n, 2]`` (i, j) of world points, the inverse of :meth:`directions`."""
        w2c = _inv_rigid(c2w)
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        depth = -pc[:, 2]
        return np.stack([self.cx + self.fx * pc[:, 0] / depth, self.cy - self.fy * pc[:, 1] / depth], axis=-1)


def layout_camera(config: SyntheticConfig, layout: LayoutName) -> PinholeCamera:
    """NeRFace: fx negative (mirrored x), principal point 0.49/0.51; AD-NeRF: image centre."""
    width, height = config.image_size
    focal = FOCAL_SCALE * min(width, height)
    if layout == "nerface":
        cxf, cyf = NERFACE_PRINCIPAL_POINT
        return PinholeCamera(width, height, -focal, focal, width * cxf, height * cyf)
    return PinholeCamera(width, height, focal, focal, width / 2.0, height / 2.0)


# ----------------------------------------------------------------------------------------------
# Small geometry helpers


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rigid(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = trans
    return m


def _about(rot: np.ndarray, pivot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Rotation about ``pivot`` followed by a translation."""
    return _rigid(rot, pivot - rot @ pivot + trans)


def _inv_rigid(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _head_surface(x: float, y: float) -> np.ndarray:
    a, b, c = HEAD_RADII
    return np.array([x, y, c * np.sqrt(max(1e-4, 1.0 - (x / a) ** 2 - (y / b) ** 2))])


def _surface_frame(x: float, y: float, x_hint=(1.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A point on the head ellipsoid and a rotation whose z axis is the surface normal there."""
    p = _head_surface(x, y)
    n = _normalize(p / HEAD_RADII**2)
    e1 = np.asarray(x_hint, dtype=np.float64)
    e1 = _normalize(e1 - (e1 @ n) * n)
    return p, np.stack([e1, np.cross(n, e1), n], axis=1)


# ----------------------------------------------------------------------------------------------
# Appearance (from the seed)


@dataclass
class Appearance:
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    shirt: np.ndarray
    shirt_stripe: np.ndarray
    glasses: np.ndarray
    noise_dirs: np.ndarray
    noise_phases: np.ndarray

    def noise(self, p: np.ndarray, freq: float) -> np.ndarray:
        """Smooth solid texture in [-1, 1] (a sum of plane waves) at the 3-D points ``p``."""
        return np.sin(freq * (p @ self.noise_dirs.T) + self.noise_phases).mean(axis=1) * 1.6


def _make_appearance(rng: np.random.Generator) -> Appearance:
    skins = np.array([[0.87, 0.68, 0.56], [0.78, 0.57, 0.44], [0.62, 0.44, 0.33], [0.93, 0.76, 0.66]])
    hairs = np.array([[0.20, 0.13, 0.08], [0.38, 0.24, 0.12], [0.10, 0.08, 0.07], [0.62, 0.47, 0.26]])
    irises = np.array([[0.35, 0.22, 0.10], [0.25, 0.42, 0.62], [0.30, 0.45, 0.28]])
    shirts = np.array([[0.20, 0.32, 0.60], [0.62, 0.20, 0.22], [0.25, 0.50, 0.35], [0.85, 0.80, 0.70]])
    jitter = lambda c: np.clip(c * rng.uniform(0.92, 1.08, 3), 0, 1)  # noqa: E731
    shirt = jitter(shirts[rng.integers(len(shirts))])
    dirs = _normalize(rng.normal(size=(7, 3)))
    return Appearance(
        skin=jitter(skins[rng.integers(len(skins))]),
        hair=jitter(hairs[rng.integers(len(hairs))]),
        iris=jitter(irises[rng.integers(len(irises))]),
        lips=jitter(np.array([0.72, 0.32, 0.34])),
        shirt=shirt,
        shirt_stripe=np.clip(1.0 - 0.8 * shirt, 0, 1),
        glasses=jitter(np.array([0.12, 0.10, 0.10])),
        noise_dirs=dirs,
        noise_phases=rng.uniform(0, 2 * np.pi, 7),
    )


def _make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured static background ``[H, W, 3]`` in [0, 1], defined in normalised image coordinates."""
    top = rng.uniform(0.55, 0.85, 3)
    bottom = rng.uniform(0.25, 0.55, 3)
    v = (np.arange(height) + 0.5)[:, None] / height
    u = (np.arange(width) + 0.5)[None, :] / width
    img = top[None, None] * (1 - v[..., None]) + bottom[None, None] * v[..., None]
    img = np.broadcast_to(img, (height, width, 3)).copy()
    # Soft vertical panels and a few soft discs (structure a NeRF must explain as background).
    img *= (1.0 + 0.06 * np.sin(2 * np.pi * (3.0 * u + rng.uniform())))[..., None]
    for _ in range(4):
        cu, cv, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.2)
        blob = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r))
        img += 0.12 * blob[..., None] * (rng.uniform(-1, 1, 3))[None, None]
    # Low-frequency value noise (bilinear on an 8x8 grid).
    grid = rng.uniform(-1, 1, (9, 9))
    gu, gv = u[0] * 8, v[:, 0] * 8
    iu, iv = np.minimum(gu.astype(int), 7), np.minimum(gv.astype(int), 7)
    fu, fv = gu - iu, gv - iv
    val = (
        grid[iv][:, iu] * (1 - fv)[:, None] * (1 - fu)[None]
        + grid[iv][:, iu + 1] * (1 - fv)[:, None] * fu[None]
        + grid[iv + 1][:, iu] * fv[:, None] * (1 - fu)[None]
        + grid[iv + 1][:, iu + 1] * fv[:, None] * fu[None]
    )
    img *= (1.0 + 0.08 * val)[..., None]
    return np.clip(img, 0, 1)


# ----------------------------------------------------------------------------------------------
# The sequence: audio, controls, poses


@dataclass
class Syllable:
    start: float
    duration: float
    vowel: str
    loudness: float
    attack: float = 0.7
    """Exponent of the ``sin(pi u)`` envelope: smaller is a faster onset."""

    def envelope(self, t: np.ndarray) -> np.ndarray:
        u = np.clip((t - self.start) / self.duration, 0.0, 1.0)
        return np.sin(np.pi * u) ** self.attack


@dataclass
class SubjectSequence:
    """The whole underlying 3-D sequence: everything both layouts are rendered from."""

    config: SyntheticConfig
    controls: np.ndarray
    """``[N, 7]`` per-frame controls, columns :data:`CONTROL_NAMES`."""
    expressions: np.ndarray
    """``[N, 76]`` expression vectors = controls @ basis + noise."""
    head_motion: np.ndarray
    """``[N, 4, 4]`` head frame -> static real-world frame."""
    torso_motion: np.ndarray
    """``[N, 4, 4]`` torso frame -> static real-world frame."""
    c2w: np.ndarray
    """``[N, 4, 4]`` camera-to-world in the head frame (the dataset's world), both layouts."""
    head_angles: np.ndarray
    """``[N, 3]`` head yaw, pitch, roll in radians."""
    audio: np.ndarray
    """Mono float32 samples at :data:`SAMPLE_RATE` (what ``aud.wav`` holds)."""
    audio_rms: np.ndarray
    """``[N]`` RMS of the audio in the 40 ms around each frame (sets ``jaw_open``)."""
    syllables: list[Syllable]
    appearance: Appearance
    background: np.ndarray
    """``[H, W, 3]`` float background image."""
    num_train: int
    num_test: int

    @property
    def num_frames(self) -> int:
        return self.controls.shape[0]

    @property
    def held_out(self) -> list[int]:
        return list(range(self.num_train, self.num_frames))


def _smooth(rng: np.random.Generator, t: np.ndarray, amplitude: float, fmin: float = 0.05, fmax: float = 0.35):
    freqs = rng.uniform(fmin, fmax, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.uniform(0.5, 1.0, 3)
    v = (weights[None] * np.sin(2 * np.pi * freqs[None] * t[:, None] + phases[None])).sum(1) / weights.sum()
    return np.clip(1.15 * amplitude * v, -amplitude, amplitude)


def _schedule(rng: np.random.Generator, t0: float, t1: float, held_out: bool) -> list[Syllable]:
    """Syllables inside ``[t0, t1)``; the training part has long pauses, the held-out part loud a/i."""
    out: list[Syllable] = []
    t = t0 - 0.018 if held_out else t0 + rng.uniform(0.05, 0.25)
    while True:
        if not held_out and rng.random() < 0.25:
            t += rng.uniform(0.5, 0.9)
        if held_out:
            dur, vowel, loud = rng.uniform(0.3, 0.45), str(rng.choice(["a", "i"])), rng.uniform(0.9, 1.0)
        else:
            dur, vowel, loud = rng.uniform(0.14, 0.34), str(rng.choice(list(VOWELS))), rng.uniform(0.35, 1.0)
        if t >= t1 or (not held_out and t + dur > t1 - 0.03):
            break  # training syllables end before the held-out part; the last held-out one may run past the end
        out.append(Syllable(float(t), float(dur), vowel, float(loud), 0.25 if held_out else 0.7))
        t += dur + (rng.uniform(0.02, 0.05) if held_out else rng.uniform(0.04, 0.2))
    return out


def _synthesize(rng: np.random.Generator, syllables: list[Syllable], num_samples: int) -> np.ndarray:
    """Voiced syllables: harmonic glottal source through the vowel's formant resonators."""
    from scipy.signal import lfilter

    audio = np.zeros(num_samples, dtype=np.float64)
    f0_base = rng.uniform(105, 135)
    for syl in syllables:
        s0 = max(0, int(round(syl.start * SAMPLE_RATE)))
        s1 = min(num_samples, int(round((syl.start + syl.duration) * SAMPLE_RATE)))
        if s1 - s0 < 16:
            continue
        t = np.arange(s0, s1) / SAMPLE_RATE
        u = (t - syl.start) / syl.duration
        f0 = f0_base * (1 + rng.uniform(-0.08, 0.08)) * (1 + 0.05 * np.sin(2 * np.pi * 4.0 * t)) * (1.06 - 0.12 * u)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        source = np.zeros_like(t)
        for h in range(1, int(6500 // f0.max()) + 1):
            source += np.sin(h * phase) / h
        formants, bandwidths, _ = VOWELS[syl.vowel]
        y = source
        for freq, bw in zip(formants, bandwidths, strict=True):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            y = lfilter([1.0 - r], [1.0, -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r], y)
        y = y / (np.sqrt(np.mean(y**2)) + 1e-12)
        audio[s0:s1] += 0.1 * syl.loudness * syl.envelope(t) * y
    audio += 0.002 * rng.normal(size=num_samples)
    return audio.astype(np.float32)


def frame_rms(audio: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS of the audio in the 40 ms centred on each video frame."""
    half = int(round(0.02 * sample_rate))
    out = np.zeros(num_frames)
    for f in range(num_frames):
        c = int(round(f / fps * sample_rate))
        seg = audio[max(0, c - half) : c + half]
        out[f] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if seg.size else 0.0
    return out


def jaw_from_rms(rms: np.ndarray) -> np.ndarray:
    """The loudness -> jaw opening map (fixed, so the audio determines the mouth)."""
    return np.clip((rms - 0.004) / 0.075, 0.0, 1.0)


def _timbre(syllables: list[Syllable], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """smile and pucker from the vowel voiced around each frame (envelope-weighted, 40 ms average)."""
    offsets = np.linspace(-0.02, 0.02, 5)
    smile = np.zeros_like(times)
    pucker = np.zeros_like(times)
    for syl in syllables:
        env = syl.envelope(times[:, None] + offsets[None]).mean(1)
        s, p = VOWELS[syl.vowel][2]
        smile += env * s
        pucker += env * p
    return np.clip(smile, 0, 1), np.clip(pucker, 0, 1)


def violates_training_rule(controls: np.ndarray) -> np.ndarray:
    """Frames with ``max(blink, brow_raise) > 0.2`` and ``max(jaw_open, smile) > 0.4`` (never in training)."""
    upper = np.maximum(controls[:, BLINK], controls[:, BROW])
    lower = np.maximum(controls[:, JAW], controls[:, SMILE])
    return (upper > TRAIN_UPPER_MAX) & (lower > TRAIN_LOWER_MAX)


def novel_combination(controls: np.ndarray) -> np.ndarray:
    """Frames with ``max(blink, brow_raise) > 0.5`` and ``max(jaw_open, smile) > 0.5`` (the held-out kind)."""
    upper = np.maximum(controls[:, BLINK], controls[:, BROW])
    lower = np.maximum(controls[:, JAW], controls[:, SMILE])
    return (upper > NOVEL_THRESHOLD) & (lower > NOVEL_THRESHOLD)


def _place_upper_events(rng: np.random.Generator, lower: np.ndarray, times: np.ndarray, num_train: int, fps: float):
    """Blinks and brow raises in the training part, only where the mouth is quiet."""
    blink = np.zeros_like(times)
    brow = np.zeros_like(times)
    quiet = lower <= TRAIN_LOWER_MAX
    t_end = num_train / fps

    def place(start: float, half: float, profile: Callable[[np.ndarray, float], np.ndarray], target: np.ndarray):
        t = start
        while t < t_end:
            centre = t + half
            support = np.nonzero(np.abs(times - centre) < half)[0]
            if support.size and support.max() < num_train and quiet[support].all():
                target[:] = np.maximum(target, profile(times, centre))
                return
            t += 0.04

    t = rng.uniform(0.3, 1.2)
    while t < t_end:
        place(t, 0.1, lambda ts, c: np.clip(1 - np.abs(ts - c) / 0.1, 0, 1), blink)
        t += rng.uniform(1.2, 3.0)
    t = rng.uniform(0.5, 2.0)
    while t < t_end:
        half, amp = rng.uniform(0.2, 0.45), rng.uniform(0.5, 1.0)
        place(t, half, lambda ts, c, h=half, a=amp: a * np.cos(np.clip((ts - c) / h, -1, 1) * np.pi / 2) ** 2, brow)
        t += rng.uniform(1.5, 3.5)
    return blink, brow


def build_sequence(config: SyntheticConfig) -> SubjectSequence:
    """Motion, audio, controls and expressions of the whole sequence (no rendering)."""
    width, height = config.image_size
    num_train, num_test = config.num_train, config.held_out_count
    if num_train < 1 or num_test < 1:
        raise ValueError(f"need at least one training and one held-out frame, got {num_train} and {num_test}")
    if width < 8 or height < 8:
        raise ValueError(f"images must be at least 8x8 pixels, got {width}x{height}")
    n = num_train + num_test
    fps = float(config.fps)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)]
    rng_look, rng_motion, rng_audio, rng_events, rng_expr, rng_bg = streams
    times = np.arange(n) / fps
    t_split = num_train / fps

    # Audio and the mouth it drives.
    syllables = _schedule(rng_audio, 0.0, t_split, held_out=False) + _schedule(rng_audio, t_split, n / fps, True)
    audio = _synthesize(rng_audio, syllables, int(round(n / fps * SAMPLE_RATE)))
    rms = frame_rms(audio, n, fps)
    controls = np.zeros((n, len(CONTROL_NAMES)))
    controls[:, JAW] = jaw_from_rms(rms)
    controls[:, SMILE], controls[:, PUCKER] = _timbre(syllables, times)

    # Upper face: quiet-only events in training, brows raised through the held-out part.
    lower = np.maximum(controls[:, JAW], controls[:, SMILE])
    blink, brow = _place_upper_events(rng_events, lower, times, num_train, fps)
    ramp = np.clip((times - t_split) * fps + 1.0, 0.0, 2.0) / 2.0  # 0.5 at the first held-out frame
    brow = np.maximum(brow, np.where(times >= t_split - 1e-9, 0.85 * np.maximum(ramp, 0.6), 0.0))
    if num_test >= 5:
        held = np.arange(num_train, n)
        peak = held[np.argmax(lower[held])]
        blink = np.maximum(
            blink, np.where(times >= t_split - 1e-9, np.clip(1 - np.abs(times - times[peak]) / 0.1, 0, 1), 0)
        )
    controls[:, BLINK], controls[:, BROW] = blink, brow
    controls[:, GAZE_X] = _smooth(rng_events, times, 0.8, 0.1, 0.6)
    controls[:, GAZE_Y] = _smooth(rng_events, times, 0.5, 0.1, 0.6)
    if violates_training_rule(controls[:num_train]).any():  # cannot happen by construction; never write such data
        raise RuntimeError("a training frame combines an upper-face event with a wide mouth")

    basis = rng_expr.normal(size=(len(CONTROL_NAMES), EXPRESSION_DIM)) / np.sqrt(len(CONTROL_NAMES))
    expressions = controls @ basis + config.expression_noise * rng_expr.normal(size=(n, EXPRESSION_DIM))

    # Head and torso motion; the camera in the head frame.
    max_rot = np.deg2rad(config.max_rotation_deg)
    yaw = _smooth(rng_motion, times, max_rot)
    pitch = _smooth(rng_motion, times, 0.7 * max_rot)
    roll = _smooth(rng_motion, times, 0.5 * max_rot)
    trans = np.stack([_smooth(rng_motion, times, config.max_translation) for _ in range(3)], axis=1)
    base = _rigid(np.eye(3), np.array(BASE_CAMERA_POSITION))
    head_motion, torso_motion, c2w = np.zeros((n, 4, 4)), np.zeros((n, 4, 4)), np.zeros((n, 4, 4))
    k = config.torso_follow
    for f in range(n):
        head_motion[f] = _about(_rot_z(roll[f]) @ _rot_y(yaw[f]) @ _rot_x(pitch[f]), HEAD_PIVOT, trans[f])
        torso_rot = _rot_z(k * roll[f]) @ _rot_y(k * yaw[f]) @ _rot_x(k * pitch[f])
        torso_motion[f] = _about(torso_rot, TORSO_PIVOT, k * trans[f])
        c2w[f] = _inv_rigid(head_motion[f]) @ base

    return SubjectSequence(
        config=config,
        controls=controls,
        expressions=expressions,
        head_motion=head_motion,
        torso_motion=torso_motion,
        c2w=c2w,
        head_angles=np.stack([yaw, pitch, roll], axis=1),
        audio=audio,
        audio_rms=rms,
        syllables=syllables,
        appearance=_make_appearance(rng_look),
        background=_make_background(rng_bg, width, height),
        num_train=num_train,
        num_test=num_test,
    )


# ----------------------------------------------------------------------------------------------
# The scene of one frame


Albedo = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(points in the part's frame [n, 3], points in the primitive's local frame [n, 3]) -> colours [n, 3]."""
Keep = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(points in the part's frame, local points) -> which surface points exist."""


@dataclass
class Primitive:
    """An ellipsoid ``|rot^T (x - center) / radii| = 1`` in one moving part's frame, optionally clipped."""

    name: str
    cls: int
    frame: str
    """The moving part it belongs to: ``head``, ``jaw`` or ``torso``."""
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    albedo: Albedo
    keep: Keep | None = None
    """Clip: where the near surface is removed the ray goes on to the far surface (seen from inside)."""
    inside_cls: int | None = None
    """Class of the far surface seen through a clipped hole (default: ``cls``)."""
    inside_albedo: Albedo | None = None


@dataclass
class Scene:
    primitives: list[Primitive]
    frames: dict[str, np.ndarray]
    """Each part's frame -> head frame (4x4)."""

    def primitive(self, name: str) -> Primitive:
        for p in self.primitives:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_head(self, prim: Primitive, local: np.ndarray) -> np.ndarray:
        """Points in a primitive's local frame -> head frame."""
        part = local @ prim.rot.T + prim.center
        m = self.frames[prim.frame]
        return part @ m[:3, :3].T + m[:3, 3]


def _mouth_shape(c: np.ndarray) -> dict[str, float]:
    width = 0.021 * (1 + 0.25 * c[SMILE] - 0.3 * c[PUCKER])
    return {
        "w": width,
        "slope": 0.3 * c[SMILE] - 0.08 * c[PUCKER],
        "ry_up": 0.0048 * (1 + 0.3 * c[PUCKER]),
        "ry_low": 0.0058 * (1 + 0.3 * c[PUCKER]),
        "forward": 0.006 * c[PUCKER],
        "y_up": MOUTH_Y + 0.0045,
        "y_low": MOUTH_Y - 0.005,
    }


def _jaw_transform(c: np.ndarray) -> np.ndarray:
    return _about(_rot_x(JAW_MAX_ANGLE * c[JAW]), JAW_HINGE, np.zeros(3))


def _eye_centre(side: float) -> np.ndarray:
    return np.array([side * 0.029, 0.02, 0.0685])


def _eye_opening(c: np.ndarray) -> float:
    return 0.0068 * (1 - c[BLINK]) * (1 + 0.25 * c[BROW])


def _brow_pose(side: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = 0.046 + 0.009 * c[BROW]
    p, rot = _surface_frame(side * 0.031, y, x_hint=(1.0, side * -0.12, 0.0))
    return p - 0.0022 * rot[:, 2], rot


def scene_at(seq: SubjectSequence, index: int) -> Scene:
    """All primitives of frame ``index`` with the frames of the head, the jaw and the torso."""
    c = seq.controls[index]
    look = seq.appearance
    skin = look.skin
    prims: list[Primitive] = []
    eye3 = np.eye(3)

    def add(
        name, cls, frame, center, radii, rot=eye3, *, albedo: Albedo, keep=None, inside_cls=None, inside_albedo=None
    ):
        prims.append(
            Primitive(
                name,
                cls,
                frame,
                np.asarray(center, float),
                np.asarray(radii, float),
                rot,
                albedo,
                keep,
                inside_cls,
                inside_albedo,
            )
        )

    def skin_albedo(shade: float = 1.0) -> Albedo:
        def f(p, _local):
            tex = 1.0 + 0.05 * look.noise(p, 160.0) + 0.025 * look.noise(p * 1.7 + 0.3, 420.0)
            blush = 0.08 * np.exp(-(((np.abs(p[:, 0]) - 0.045) / 0.015) ** 2 + ((p[:, 1] + 0.02) / 0.015) ** 2))
            col = skin[None] * tex[:, None] * shade
            col[:, 0] += blush * 0.5
            col[:, 1:] -= blush[:, None] * 0.3
            return col

        return f

    # --- mouth: the slot in the face skin and what is behind it -------------------------------
    m = _mouth_shape(c)
    jaw = _jaw_transform(c)
    # The slot runs between the lips' inner edges; its lower edge moves with the jaw.
    y_slot_low = MOUTH_Y - 0.0015
    y_low0 = (jaw[:3, :3] @ _head_surface(0.0, y_slot_low) + jaw[:3, 3])[1]
    y_up0 = MOUTH_Y + 0.0015
    w_slot = m["w"]

    def head_keep(p, _local):
        x = np.abs(p[:, 0])
        y_up = y_up0 + m["slope"] * x
        y_low = y_low0 + m["slope"] * x + (y_up0 - y_low0) * (x / w_slot) ** 2
        in_slot = (x < w_slot) & (p[:, 1] < y_up) & (p[:, 1] > y_low) & (p[:, 2] > 0.02)
        return ~in_slot

    def throat(p, _local):
        return np.tile(np.array([[0.16, 0.04, 0.05]]), (p.shape[0], 1))

    add(
        "head",
        sem.SKIN,
        "head",
        [0, 0, 0],
        HEAD_RADII,
        albedo=skin_albedo(),
        keep=head_keep,
        inside_cls=sem.MOUTH_INTERIOR,
        inside_albedo=throat,
    )

    def mouth_albedo(_p, local):
        col = np.tile(np.array([[0.2, 0.05, 0.06]]), (local.shape[0], 1))
        tongue = local[:, 1] < -0.012
        col[tongue] = [0.55, 0.2, 0.22]
        teeth = (local[:, 1] > 0.004) & (np.abs(local[:, 0]) < 0.02)
        col[teeth] = [0.92, 0.9, 0.84]
        return col

    add("mouth", sem.MOUTH_INTERIOR, "head", [0, -0.055, 0.018], [0.034, 0.028, 0.04], albedo=mouth_albedo)

    def lip_albedo(p, local):
        tex = 1.0 + 0.06 * np.sin(local[:, 0] * 900.0) * (0.5 + 0.5 * look.noise(p, 300.0))
        return look.lips[None] * tex[:, None]

    for lip, frame, y0, ry in (("upper", "head", m["y_up"], m["ry_up"]), ("lower", "jaw", m["y_low"], m["ry_low"])):
        for side in (-1.0, 1.0):
            xc = side * 0.32 * m["w"]
            yc = y0 + m["slope"] * 0.32 * m["w"]
            p, rot = _surface_frame(xc, yc, x_hint=(1.0, side * m["slope"], 0.0))
            centre = p + (m["forward"] - 0.004) * rot[:, 2]
            add(
                f"lip_{lip}_{'left' if side > 0 else 'right'}",
                sem.LIPS,
                frame,
                centre,
                [0.74 * m["w"], ry, 0.011],
                rot,
                albedo=lip_albedo,
            )

    # Chin: moves with the jaw, below the lower lip.
    y_chin_top = m["y_low"] - m["ry_low"] - 0.002
    add(
        "chin",
        sem.SKIN,
        "jaw",
        [0, -0.08, 0.022],
        [0.03, 0.019, 0.025],
        albedo=skin_albedo(),
        keep=lambda p, _l: p[:, 1] < y_chin_top,
    )

    # --- nose, ears ---------------------------------------------------------------------------
    def nose_albedo(p, local):
        col = skin_albedo(1.0)(p, local)
        col[:, 0] *= 1.04
        nostril = (local[:, 1] < -0.021) & (np.abs(np.abs(local[:, 0]) - 0.0055) < 0.003) & (local[:, 2] < 0.009)
        col[nostril] *= 0.45
        return col

    add("nose", sem.NOSE, "head", [0, -0.012, 0.079], [0.0115, 0.027, 0.017], _rot_x(-0.3), albedo=nose_albedo)

    def ear_albedo(p, local):
        col = skin_albedo(0.97)(p, local)
        rim = ((local[:, 1] / 0.022) ** 2 + (local[:, 2] / 0.014) ** 2) < 0.45
        col[rim] *= 0.8
        return col

    for side in (-1.0, 1.0):
        name = "ear_left" if side > 0 else "ear_right"
        add(
            name,
            sem.EARS,
            "head",
            [side * 0.073, 0.002, -0.008],
            [0.007, 0.022, 0.014],
            _rot_y(-side * 0.6),
            albedo=ear_albedo,
        )

    # --- eyes: eyeballs, lids, brows ----------------------------------------------------------
    gaze = _normalize(np.array([0.4 * c[GAZE_X], 0.3 * c[GAZE_Y], 1.0]))
    opening = _eye_opening(c)

    def eyeball_albedo(_p, local):
        n = _normalize(local)
        cosang = n @ gaze
        col = np.tile(np.array([[0.93, 0.91, 0.88]]), (local.shape[0], 1))
        iris = cosang > np.cos(0.5)
        ang = np.arctan2(n[:, 1], n[:, 0])
        col[iris] = look.iris[None] * (0.8 + 0.2 * np.sin(ang[iris] * 14.0))[:, None]
        col[cosang > np.cos(0.2)] = [0.03, 0.03, 0.04]
        return col

    def lid_keep(p, local):
        x = local[:, 0]
        shape = np.clip(1 - (x / 0.0115) ** 2, 0, 1)
        top = 0.0012 + opening * shape
        bottom = 0.0012 - 0.65 * opening * shape
        return (local[:, 1] >= top) | (local[:, 1] <= bottom)

    def lid_albedo(p, local):
        col = skin_albedo(0.93)(p, local)
        x = local[:, 0]
        shape = np.clip(1 - (x / 0.0115) ** 2, 0, 1)
        lash = np.abs(local[:, 1] - (0.0012 + opening * shape)) < 0.0013
        col[lash] = [0.18, 0.12, 0.1]
        return col

    for side in (-1.0, 1.0):
        tag = "left" if side > 0 else "right"
        centre = _eye_centre(side)
        add(f"eye_{tag}", sem.EYES, "head", centre, [0.012] * 3, albedo=eyeball_albedo)
        add(f"lid_{tag}", sem.SKIN, "head", centre, [0.0128] * 3, albedo=lid_albedo, keep=lid_keep)

    def brow_albedo(p, local):
        strokes = 0.75 + 0.25 * np.sin(local[:, 0] * 2500.0 + local[:, 1] * 900.0)
        return look.hair[None] * 0.9 * strokes[:, None]

    for side in (-1.0, 1.0):
        centre, rot = _brow_pose(side, c)
        add(
            f"brow_{'left' if side > 0 else 'right'}",
            sem.EYEBROWS,
            "head",
            centre,
            [0.019, 0.0035, 0.005],
            rot,
            albedo=brow_albedo,
        )

    # --- hair ---------------------------------------------------------------------------------
    def hair_keep(p, _local):
        line = np.interp(p[:, 2], [-0.05, -0.015, 0.045], [-0.065, 0.03, 0.064]) + 0.003 * np.sin(p[:, 0] * 160.0)
        return p[:, 1] > line

    def hair_albedo(p, _local):
        theta = np.arctan2(p[:, 0], p[:, 2])
        strands = 0.5 + 0.5 * np.sin(70.0 * theta + 6.0 * look.noise(p, 60.0))
        return look.hair[None] * (0.7 + 0.45 * strands)[:, None]

    add("hair", sem.HAIR, "head", [0, 0.012, -0.006], [0.079, 0.101, 0.093], albedo=hair_albedo, keep=hair_keep)

    # --- glasses ------------------------------------------------------------------------------
    if seq.config.glasses:

        def glasses_albedo(p, _local):
            return look.glasses[None] * (1.0 + 0.15 * look.noise(p, 500.0))[:, None]

        for side in (-1.0, 1.0):
            tag = "left" if side > 0 else "right"
            add(
                f"rim_{tag}",
                sem.EYEGLASSES,
                "head",
                [side * 0.03, 0.02, 0.091],
                [0.02, 0.0145, 0.0022],
                albedo=glasses_albedo,
                keep=lambda p, q: (q[:, 0] / 0.02) ** 2 + (q[:, 1] / 0.0145) ** 2 > 0.5,
            )
            a = np.array([side * 0.05, 0.022, 0.09])
            b = np.array([side * 0.075, 0.022, -0.005])
            d = b - a
            ang = np.arctan2(-d[2], d[0])  # rotate local x onto the temple direction (about y)
            add(
                f"temple_{tag}",
                sem.EYEGLASSES,
                "head",
                (a + b) / 2,
                [np.linalg.norm(d) / 2, 0.0022, 0.0022],
                _rot_y(ang),
                albedo=glasses_albedo,
            )
        add("bridge", sem.EYEGLASSES, "head", [0, 0.024, 0.092], [0.011, 0.0022, 0.0022], albedo=glasses_albedo)

    # --- neck and torso (torso frame) ---------------------------------------------------------
    add("neck", sem.NECK, "torso", [0, -0.1, -0.012], [0.04, 0.07, 0.04], albedo=skin_albedo(0.9))

    def shirt_albedo(p, _local):
        stripes = (np.sin(p[:, 1] * 2 * np.pi / 0.03) > 0.55).astype(np.float64)
        col = look.shirt[None] * (1 - stripes[:, None]) + look.shirt_stripe[None] * stripes[:, None]
        return col * (1.0 + 0.08 * look.noise(p, 120.0))[:, None]

    add("torso", sem.TORSO, "torso", [0, -0.265, -0.035], [0.19, 0.135, 0.085], albedo=shirt_albedo)

    frames = {
        "head": np.eye(4),
        "jaw": jaw,
        "torso": _inv_rigid(seq.head_motion[index]) @ seq.torso_motion[index],
    }
    return Scene(prims, frames)


# ----------------------------------------------------------------------------------------------
# Ray casting


@dataclass
class RenderedView:
    rgb: np.ndarray
    """``[H, W, 3]`` uint8."""
    labels: np.ndarray
    """``[H, W]`` int64 class per pixel."""
    depth: np.ndarray
    """``[H, W]`` ray parameter of the hit (inf on background); the rays' camera-space z is -1."""


def _pixels_in_projection(camera: PinholeCamera, c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels inside the (1-pixel padded) image box of projected points."""
    w2c = _inv_rigid(c2w)
    if np.any((points @ w2c[:3, :3].T + w2c[:3, 3])[:, 2] > -1e-6):  # not all in front: no culling
        return np.arange(camera.width * camera.height)
    ij = camera.project(c2w, points)
    i0 = max(0, int(np.floor(ij[:, 0].min())) - 1)
    i1 = min(camera.width - 1, int(np.ceil(ij[:, 0].max())) + 1)
    j0 = max(0, int(np.floor(ij[:, 1].min())) - 1)
    j1 = min(camera.height - 1, int(np.ceil(ij[:, 1].max())) + 1)
    if i0 > i1 or j0 > j1:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(j0, j1 + 1)[:, None] * camera.width + np.arange(i0, i1 + 1)[None, :]).ravel()


def render_scene(scene: Scene, camera: PinholeCamera, c2w: np.ndarray, background: np.ndarray) -> RenderedView:
    """Ray-cast ``scene`` through every pixel of ``camera`` placed at ``c2w`` (head frame)."""
    dirs_cam = camera.directions()
    d_head = dirs_cam @ c2w[:3, :3].T
    o_head = c2w[:3, 3]
    num = d_head.shape[0]
    best_t = np.full(num, np.inf)
    best_k = np.full(num, -1, dtype=np.int64)
    best_inside = np.zeros(num, dtype=bool)
    part_rays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    for part, to_head in scene.frames.items():
        to_part = _inv_rigid(to_head)
        part_rays[part] = (to_part[:3, :3] @ o_head + to_part[:3, 3], d_head @ to_part[:3, :3].T)

    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    for k, prim in enumerate(scene.primitives):
        o, d_all = part_rays[prim.frame]
        # Only the pixels inside the projected bounding cube of the primitive can see it.
        to_head = scene.frames[prim.frame]
        cube = (prim.center + prim.radii.max() * corners) @ to_head[:3, :3].T + to_head[:3, 3]
        cand = _pixels_in_projection(camera, c2w, cube)
        if cand.size == 0:
            continue
        mat = prim.rot.T / prim.radii[:, None]  # part -> unit sphere
        ol = mat @ (o - prim.center)
        dl = d_all[cand] @ mat.T
        a = np.einsum("ij,ij->i", dl, dl)
        b = dl @ ol
        disc = b * b - a * (ol @ ol - 1.0)
        hit = np.nonzero(disc > 0)[0]
        if hit.size == 0:
            continue
        sq = np.sqrt(disc[hit])
        t0 = (-b[hit] - sq) / a[hit]
        t1 = (-b[hit] + sq) / a[hit]
        t = np.where(t0 > 1e-6, t0, t1)
        inside = np.zeros(hit.size, dtype=bool)
        if prim.keep is not None:
            local0 = (ol + t[:, None] * dl[hit]) * prim.radii
            ok0 = prim.keep(local0 @ prim.rot.T + prim.center, local0)
            retry = np.nonzero(~ok0)[0]
            local1 = (ol + t1[retry, None] * dl[hit[retry]]) * prim.radii
            ok1 = prim.keep(local1 @ prim.rot.T + prim.center, local1)
            t[retry] = np.where(ok1 & (t1[retry] > 1e-6), t1[retry], np.inf)
            inside[retry] = True
        t = np.where(t > 1e-6, t, np.inf)
        rays = cand[hit]
        closer = t < best_t[rays]
        rays = rays[closer]
        best_t[rays] = t[closer]
        best_k[rays] = k
        best_inside[rays] = inside[closer]

    rgb = background.reshape(-1, 3).copy()
    labels = np.zeros(num, dtype=np.int64)
    for k, prim in enumerate(scene.primitives):
        sel = np.nonzero(best_k == k)[0]
        if sel.size == 0:
            continue
        o, d = part_rays[prim.frame]
        p_part = o + best_t[sel, None] * d[sel]
        local = (p_part - prim.center) @ prim.rot
        normal = _normalize((local / prim.radii**2) @ prim.rot.T)
        facing = (normal * d[sel]).sum(1) > 0
        normal[facing] *= -1.0
        shade = AMBIENT + DIFFUSE * np.clip(normal @ LIGHT_DIR, 0.0, None)
        inside = best_inside[sel]
        albedo = prim.albedo(p_part, local)
        cls = np.full(sel.size, prim.cls, dtype=np.int64)
        if prim.inside_cls is not None and inside.any():
            cls[inside] = prim.inside_cls
            if prim.inside_albedo is not None:
                albedo[inside] = prim.inside_albedo(p_part[inside], local[inside])
        rgb[sel] = albedo * shade[:, None]
        labels[sel] = cls
    rgb8 = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    h, w = camera.height, camera.width
    return RenderedView(rgb8.reshape(h, w, 3), labels.reshape(h, w), best_t.reshape(h, w))


def render_frame(seq: SubjectSequence, index: int, layout: LayoutName) -> RenderedView:
    """Frame ``index`` of the sequence as the given layout's camera sees it."""
    camera = layout_camera(seq.config, layout)
    return render_scene(scene_at(seq, index), camera, seq.c2w[index], seq.background)


# ----------------------------------------------------------------------------------------------
# Landmarks


def landmarks_3d(seq: SubjectSequence, index: int) -> np.ndarray:
    """68 points (dlib/iBUG order) on the face of frame ``index``, in the head frame."""
    c = seq.controls[index]
    jaw = _jaw_transform(c)
    m = _mouth_shape(c)

    def on_jaw(p: np.ndarray) -> np.ndarray:
        return jaw[:3, :3] @ p + jaw[:3, 3]

    pts: list[np.ndarray] = []
    # 0-16 jaw line, from the subject's right (image left) to the left; the lower part moves with the jaw.
    for k in range(17):
        ang = (-1 + k / 8.0) * np.pi / 2 * 0.95
        x, y = 0.069 * np.sin(ang), 0.005 - 0.1 * np.cos(ang)
        p = np.array([x, y, max(_head_surface(x, max(y, -0.094))[2], 0.0)])
        pts.append(on_jaw(p) if abs(ang) < 0.9 else p)
    # 17-26 brows (right brow first), along the brow's upper edge.
    for side in (-1.0, 1.0):
        centre, rot = _brow_pose(side, c)
        for s in np.linspace(-1, 1, 5):
            pts.append(centre + rot @ np.array([0.019 * s * 0.9, 0.0035, 0.003]))
    # 27-30 nose bridge to tip, 31-35 nose base.
    nose_rot = _rot_x(-0.3)
    for yl in (0.02, 0.007, -0.006, -0.019):
        zl = 0.017 * np.sqrt(max(0.0, 1 - (yl / 0.027) ** 2))
        pts.append(np.array([0, -0.012, 0.079]) + nose_rot @ np.array([0.0, yl, zl]))
    for xl in (-0.009, -0.0045, 0.0, 0.0045, 0.009):
        yl = -0.021
        zl = 0.017 * np.sqrt(max(0.0, 1 - (xl / 0.0115) ** 2 - (yl / 0.027) ** 2))
        pts.append(np.array([0, -0.012, 0.079]) + nose_rot @ np.array([xl, yl, zl]))
    # 36-47 eyes: corner, two upper, corner, two lower (right eye first).
    opening = _eye_opening(c)
    for side in (-1.0, 1.0):
        centre = _eye_centre(side)
        ring = [(-0.0105, 0.0012), (-0.004, None), (0.004, None), (0.0105, 0.0012), (0.004, "low"), (-0.004, "low")]
        for xl, yl in ring:
            shape = np.clip(1 - (xl / 0.0115) ** 2, 0, 1)
            if yl is None:
                yl = 0.0012 + opening * shape
            elif yl == "low":
                yl = 0.0012 - 0.65 * opening * shape
            zl = np.sqrt(max(0.0, 0.0128**2 - xl**2 - yl**2))
            pts.append(centre + np.array([xl, yl, zl]))

    # 48-67 mouth: outer contour then inner contour.
    def lip_point(x: float, y: float, jawed: bool) -> np.ndarray:
        p = _head_surface(x, y)
        p = p + np.array([0.0, 0.0, 0.004 + m["forward"]])
        return on_jaw(p) if jawed else p

    w, s = m["w"], m["slope"]
    xs = (-0.6, -0.3, 0.0, 0.3, 0.6)
    up_c = lambda x: m["y_up"] + s * abs(x)  # noqa: E731
    low_c = lambda x: m["y_low"] + s * abs(x)  # noqa: E731
    corner = lambda side: lip_point(side * 1.05 * w, m["y_up"] + s * w - 0.002, False)  # noqa: E731
    pts.append(corner(-1.0))  # 48
    pts += [lip_point(f * w, up_c(f * w) + m["ry_up"], False) for f in xs]  # 49-53
    pts.append(corner(1.0))  # 54
    pts += [lip_point(f * w, low_c(f * w) - m["ry_low"], True) for f in xs[::-1]]  # 55-59
    pts.append(lip_point(-0.9 * w, up_c(0.9 * w) - 0.002, False))  # 60
    pts += [lip_point(f * w, up_c(f * w) - m["ry_up"] * 0.8, False) for f in (-0.35, 0.0, 0.35)]  # 61-63
    pts.append(lip_point(0.9 * w, up_c(0.9 * w) - 0.002, False))  # 64
    pts += [lip_point(f * w, low_c(f * w) + m["ry_low"] * 0.8, True) for f in (0.35, 0.0, -0.35)]  # 65-67
    out = np.stack(pts)
    assert out.shape == (68, 3)
    return out


# ----------------------------------------------------------------------------------------------
# Writing both layouts


@dataclass
class SubjectSummary:
    """What :func:`generate_subject` wrote."""

    output: Path
    width: int
    height: int
    num_frames: int
    num_train: int
    num_test: int
    splits: dict[str, dict[str, int]]
    """layout -> split -> number of frames."""
    held_out: list[int]
    adnerf_val: list[int]
    class_fractions: dict[str, float]
    """Fraction of all pixels of all frames of the first written layout, per class name."""
    novel_fraction: float
    """Fraction of held-out frames with a novel upper/lower face combination."""
    seconds: float

    def notes(self) -> list[str]:
        out = []
        if self.adnerf_val != self.held_out and "adnerf" in self.splits:
            out.append(
                f"AD-NeRF's positional val split is frames {self.adnerf_val[0]}..{self.adnerf_val[-1]}, "
                f"the held-out part is {self.held_out[0]}..{self.held_out[-1]} "
                "(use num_test = num_train // 10 to make them equal)"
            )
        missing = [name for name, frac in self.class_fractions.items() if frac == 0.0]
        if missing:
            out.append(f"classes absent: {', '.join(missing)}")
        return out


def _bbox(points: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) around the face landmarks, widened up to include the forehead."""
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    w, h = x1 - x0, y1 - y0
    x0, x1 = x0 - 0.12 * w, x1 + 0.12 * w
    y0, y1 = y0 - 0.45 * h, y1 + 0.08 * h
    return (
        float(np.clip(x0, 0, width)),
        float(np.clip(y0, 0, height)),
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
    )


def _clean(root: Path) -> None:
    """Remove a previous synthetic layout folder (only when it looks like one: a transforms_train.json)."""
    if root.is_dir() and (root / "transforms_train.json").is_file():
        shutil.rmtree(root)


def generate_subject(config: SyntheticConfig) -> SubjectSummary:
    """Render the sequence and write the requested layouts under ``config.output``."""
    import soundfile

    from sahs_nerfstudio.data.audio import wav_to_features

    start = time.perf_counter()
    seq = build_sequence(config)
    width, height = config.image_size
    n = seq.num_frames
    out = Path(config.output)
    held = seq.held_out
    num_val = min(max(1, config.num_val), len(held))
    val = [held[int(round(k))] for k in np.linspace(0, len(held) - 1, num_val)] if num_val > 1 else held[:1]
    adnerf_splits = adnerf_split_indices(n)
    class_counts = np.zeros(sem.NUM_CLASSES, dtype=np.int64)
    splits: dict[str, dict[str, int]] = {}

    if "nerface" in config.layouts:
        root = out / "nerface"
        if config.clean:
            _clean(root)
        cam = layout_camera(config, "nerface")
        write_rgb(root / NERFACE_BACKGROUND, _to_uint8(seq.background))
        intr = (cam.fx, cam.fy, NERFACE_PRINCIPAL_POINT[0], NERFACE_PRINCIPAL_POINT[1])
        angle = float(2 * np.arctan(width / (2 * abs(cam.fx))))
        split_frames: dict[str, list[NeRFaceFrame]] = {"train": [], "val": [], "test": []}
        for f in range(n):
            view = render_scene(scene_at(seq, f), cam, seq.c2w[f], seq.background)
            class_counts += np.bincount(view.labels.ravel(), minlength=sem.NUM_CLASSES)
            x0, y0, x1, y1 = _bbox(cam.project(seq.c2w[f], landmarks_3d(seq, f)), width, height)
            bbox = (y0 / height, y1 / height, x0 / width, x1 / width)
            names = ["train"] if f < seq.num_train else (["val", "test"] if f in val else ["test"])
            for split in names:
                file_path = f"./{split}/f_{f:04d}"
                write_rgb(nerface_image_path(root, file_path), view.rgb)
                write_rgb(nerface_mask_path(root, file_path), sem.encode_mask(view.labels))
                split_frames[split].append(NeRFaceFrame(file_path, seq.c2w[f], seq.expressions[f], bbox))
        for split, frames in split_frames.items():
            write_nerface_split(root, split, NeRFaceSplit(angle, intr, frames))
        splits["nerface"] = {k: len(v) for k, v in split_frames.items()}

    if "adnerf" in config.layouts:
        root = out / "adnerf"
        if config.clean:
            _clean(root)
        cam = layout_camera(config, "adnerf")
        background = _to_uint8(seq.background)
        write_rgb(root / ADNERF_BACKGROUND, background, quality=config.jpeg_quality)
        count_here = "nerface" not in config.layouts
        frames_by_id: dict[int, ADNeRFFrame] = {}
        for f in range(n):
            view = render_scene(scene_at(seq, f), cam, seq.c2w[f], seq.background)
            if count_here:
                class_counts += np.bincount(view.labels.ravel(), minlength=sem.NUM_CLASSES)
            q = config.jpeg_quality
            write_rgb(adnerf_image_path(root, f), view.rgb, quality=q)
            write_rgb(adnerf_image_path(root, f, "ori_imgs"), view.rgb, quality=q)
            head = np.isin(view.labels, HEAD_CLASSES)
            write_rgb(
                adnerf_image_path(root, f, "head_imgs"), np.where(head[..., None], view.rgb, background), quality=q
            )
            write_rgb(adnerf_mask_path(root, f), sem.encode_mask(view.labels))
            write_rgb(adnerf_parsing_path(root, f), sem.encode_adnerf_parsing(view.labels))
            lms = cam.project(seq.c2w[f], landmarks_3d(seq, f))
            lms_path = adnerf_image_path(root, f, "ori_imgs").with_suffix(".lms")
            lms_path.write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in lms))
            x0, y0, x1, y1 = _bbox(lms, width, height)
            rect = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1 - x0)), int(np.ceil(y1 - y0)))
            frames_by_id[f] = ADNeRFFrame(img_id=f, aud_id=f, transform_matrix=seq.c2w[f], face_rect=rect)
        wav = root / ADNERF_AUDIO_WAV
        soundfile.write(str(wav), seq.audio, SAMPLE_RATE, subtype="PCM_16")
        write_audio_features(root / ADNERF_AUDIO, wav_to_features(wav, fps=config.fps, num_frames=n))
        for split, ids in adnerf_splits.items():
            data = ADNeRFSplit(cam.fx, cam.cx, cam.cy, [frames_by_id[i] for i in ids])
            write_adnerf_split(root, split, data)
        splits["adnerf"] = {k: len(v) for k, v in adnerf_splits.items()}

    out.mkdir(parents=True, exist_ok=True)
    _write_subject_file(out / SUBJECT_FILE, seq, val, adnerf_splits)
    total = max(1, int(class_counts.sum()))
    novel = novel_combination(seq.controls[held])
    return SubjectSummary(
        output=out,
        width=width,
        height=height,
        num_frames=n,
        num_train=seq.num_train,
        num_test=seq.num_test,
        splits=splits,
        held_out=held,
        adnerf_val=adnerf_splits["val"],
        class_fractions={name: float(class_counts[k]) / total for k, name in enumerate(sem.CLASS_NAMES)},
        novel_fraction=float(novel.mean()),
        seconds=time.perf_counter() - start,
    )


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _write_subject_file(path: Path, seq: SubjectSequence, nerface_val: list[int], adnerf_splits) -> None:
    meta = {
        "description": "ground truth of the synthetic subject (sahs_nerfstudio.data.synthetic)",
        "fps": seq.config.fps,
        "seed": seq.config.seed,
        "num_frames": seq.num_frames,
        "num_train": seq.num_train,
        "held_out": seq.held_out,
        "nerface_val": nerface_val,
        "adnerf_val": adnerf_splits["val"],
        "rule": (
            f"training frames: never max(blink, brow_raise) > {TRAIN_UPPER_MAX} with max(jaw_open, smile) > "
            f"{TRAIN_LOWER_MAX}; held-out frames: mostly both > {NOVEL_THRESHOLD}"
        ),
        "control_names": list(CONTROL_NAMES),
        "controls": np.round(seq.controls, 6).tolist(),
        "head_yaw_pitch_roll": np.round(seq.head_angles, 6).tolist(),
        "syllables": [[round(s.start, 4), round(s.duration, 4), s.vowel, round(s.loudness, 4)] for s in seq.syllables],
    }
    path.write_text(json.dumps(meta, indent=1))


__all__ = [
    "CONTROL_NAMES",
    "EXPRESSION_DIM",
    "SyntheticConfig",
    "SubjectSequence",
    "SubjectSummary",
    "PinholeCamera",
    "Primitive",
    "Scene",
    "RenderedView",
    "build_sequence",
    "generate_subject",
    "landmarks_3d",
    "layout_camera",
    "novel_combination",
    "render_frame",
    "render_scene",
    "scene_at",
    "violates_training_rule",
    "frame_rms",
    "jaw_from_rms",
]
