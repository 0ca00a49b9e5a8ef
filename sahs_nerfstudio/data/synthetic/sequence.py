"""The whole 3-D sequence: per-frame controls, expression vectors, head and torso motion, audio.

Motion. The real camera is static; the head moves by ``H(t)`` (rotation about the top of the neck,
yaw about +-20 deg, pitch +-14, roll +-10, small translation, smooth) and the torso by ``B(t)`` (a
quarter of the head's rotation). As in NeRFace the dataset's world is the head frame: the camera to
world of frame t is ``inv(H(t)) @ C`` for the static base camera ``C``, and the torso, in that
frame, moves by ``inv(H(t)) @ B(t)`` (non-rigid head-torso motion, as in real video). AD-NeRF
stores the same camera-to-world per frame; its translation is "already divided by 10" in the
original pipeline, and our units are already that small, so it is used as is.

Expression. Seven controls per frame, :data:`CONTROL_NAMES`. The audio causes the mouth
(``jaw_open``, ``smile``, ``pucker``: :mod:`~sahs_nerfstudio.data.synthetic.speech`). ``blink``,
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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data.synthetic.appearance import Appearance, make_appearance, make_background
from sahs_nerfstudio.data.synthetic.config import (
    BASE_CAMERA_POSITION,
    BLINK,
    BROW,
    CONTROL_NAMES,
    EXPRESSION_DIM,
    GAZE_X,
    GAZE_Y,
    JAW,
    NOVEL_THRESHOLD,
    PUCKER,
    SAMPLE_RATE,
    SMILE,
    TRAIN_LOWER_MAX,
    TRAIN_UPPER_MAX,
    SyntheticConfig,
)
from sahs_nerfstudio.data.synthetic.geometry import about, inv_rigid, rigid, rot_x, rot_y, rot_z
from sahs_nerfstudio.data.synthetic.speech import Syllable, frame_rms, jaw_from_rms, schedule, synthesize, timbre

HEAD_PIVOT = np.array([0.0, -0.06, -0.02])
TORSO_PIVOT = np.array([0.0, -0.25, -0.03])


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
    config.check()
    n = num_train + num_test
    fps = float(config.fps)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)]
    rng_look, rng_motion, rng_audio, rng_events, rng_expr, rng_bg = streams
    times = np.arange(n) / fps
    t_split = num_train / fps

    # Audio and the mouth it drives.
    syllables = schedule(rng_audio, 0.0, t_split, held_out=False) + schedule(rng_audio, t_split, n / fps, True)
    audio = synthesize(rng_audio, syllables, int(round(n / fps * SAMPLE_RATE)))
    rms = frame_rms(audio, n, fps)
    controls = np.zeros((n, len(CONTROL_NAMES)))
    controls[:, JAW] = jaw_from_rms(rms)
    controls[:, SMILE], controls[:, PUCKER] = timbre(syllables, times)

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
    base = rigid(np.eye(3), np.array(BASE_CAMERA_POSITION))
    head_motion, torso_motion, c2w = np.zeros((n, 4, 4)), np.zeros((n, 4, 4)), np.zeros((n, 4, 4))
    k = config.torso_follow
    for f in range(n):
        head_motion[f] = about(rot_z(roll[f]) @ rot_y(yaw[f]) @ rot_x(pitch[f]), HEAD_PIVOT, trans[f])
        torso_rot = rot_z(k * roll[f]) @ rot_y(k * yaw[f]) @ rot_x(k * pitch[f])
        torso_motion[f] = about(torso_rot, TORSO_PIVOT, k * trans[f])
        c2w[f] = inv_rigid(head_motion[f]) @ base

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
        appearance=make_appearance(rng_look),
        background=make_background(rng_bg, width, height),
        num_train=num_train,
        num_test=num_test,
    )
