"""Driving signals for a trained SAHS model: load, validate against the model, encode to codes.

A driver is a sequence of raw driving rows, one per output video frame:

* expressions (expression models): a NeRFace-layout transforms JSON (``frames[k].expression``) or a
  ``.npy`` of shape ``[T, 76]``;
* audio windows (audio models): an AD-NeRF feature file ``aud.npy`` ``[T, 16, 29]``, an AD-NeRF
  transforms JSON (its frames' ``aud_id`` into the ``aud.npy`` beside it), or an audio file
  (``.wav``, or anything soundfile reads) turned into windows by the very extractor that made the
  training features (:mod:`sahs_nerfstudio.data.audio`; any sample rate, resampled).

Audio models trained with an eye track (``use_eye``) take one eye closure per frame besides
(:func:`driving_eyes`): an OpenFace ``au.csv``, the split's own track, eyes held open, or natural
blinks at a human rate (:func:`sahs_nerfstudio.data.eye.natural_blinks`).

Another subject's file drives a trained subject just the same (cross-reenactment). Every problem
with the file is a :class:`~sahs_nerfstudio.errors.FormatError`: one line naming the file,
the field, what was expected and what was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sahs_nerfstudio.data import audio as audio_io
from sahs_nerfstudio.data import eye as eye_io
from sahs_nerfstudio.data import formats
from sahs_nerfstudio.errors import FormatError

if TYPE_CHECKING:
    from sahs_nerfstudio.models.sahs_model import SAHSModel

DriverKind = Literal["expression", "audio"]
BlinkMode = Literal["auto", "natural", "open"]
"""Where a driven video's eyes come from without an eye-track file: ``auto`` (the split's own track when the split
drives itself, else natural blinks), ``natural`` (always natural blinks) or ``open`` (never blinking)."""
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
"""A video of a face drives through the project's tracker (:mod:`sahs_nerfstudio.driving.video`)."""
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
"""Sample rates the AAC encoder takes as they are; others are resampled to 48 kHz for the video."""


@dataclass
class DrivingSequence:
    """Raw driving rows for ``T`` video frames, plus the audio to mux when there is any."""

    kind: DriverKind
    rows: np.ndarray
    """``[T, D]`` expressions, or ``[T, W, C]`` audio windows."""
    source: Path
    """The file the rows came from."""
    field_name: str
    """Where in ``source`` the rows are (for messages), e.g. ``frames[k].expression``."""
    fps: float = 25.0
    audio: np.ndarray | None = None
    """Mono float samples to mux, already cut to the rows' time span."""
    sample_rate: int | None = None
    audio_source: Path | None = None
    extractor: str | None = None
    """Which extractor made the rows when this module computed them from a recording (``data/audio.py``)."""
    eye_closure: np.ndarray | None = None
    """Per-row eye closure (0 open, 1 shut) tracked from a driver video, for models with an eye channel."""
    head_rotations: np.ndarray | None = None
    """Per-row head rotation of a driver video relative to its median pose, ``[T, 3, 3]`` in the camera's axes
    (``--cameras driver``)."""

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def truncated(self, num_frames: int) -> "DrivingSequence":
        """The first ``num_frames`` rows (and the matching audio)."""
        num_frames = max(0, min(num_frames, len(self)))
        audio = self.audio
        if audio is not None and self.sample_rate is not None:
            audio = audio[: int(round(num_frames / self.fps * self.sample_rate))]
        return DrivingSequence(
            self.kind, self.rows[:num_frames], self.source, self.field_name, self.fps, audio, self.sample_rate,
            self.audio_source, self.extractor,
            None if self.eye_closure is None else self.eye_closure[:num_frames],
            None if self.head_rotations is None else self.head_rotations[:num_frames],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Loading


def load_driver(
    path: Path | str,
    fps: float = 25.0,
    audio: Path | str | None = None,
    window: int = audio_io.WINDOW,
    channels: int = audio_io.CHANNELS,
) -> DrivingSequence:
    """Read a driving file (see the module docstring) at ``fps`` video frames per second.

    Args:
        path: the driving file.
        fps: video frame rate (audio windows are cut at this rate).
        audio: an audio file to mux; by default the ``.wav`` driver itself, or for ``aud.npy`` and AD-NeRF
            JSON drivers a ``<stem>.wav`` / ``aud.wav`` next to the feature file when there is one.
        window, channels: the audio window shape a ``.wav`` is cut into (the model's).
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "<file>", "a driving file (.json, .npy or .wav)", "no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        seq = _load_json_driver(path, fps)
    elif suffix == ".npy":
        seq = _load_npy_driver(path, fps)
    elif suffix in AUDIO_SUFFIXES:
        samples, rate = audio_io.load_wav(path)
        rows = audio_io.audio_features(samples, rate, fps=fps, window=window, channels=channels)
        extractor = audio_io.project_extractor_description(fps, window, channels)
        seq = DrivingSequence("audio", rows, path, "<samples>", fps, extractor=extractor)
        seq.audio, seq.sample_rate, seq.audio_source = _muxable(samples, rate), _mux_rate(rate), path
    else:
        raise FormatError(
            path, "<file>", "a .json, .npy, audio (.wav) or video (.mp4) driving file", f"suffix '{path.suffix}'"
        )
    if audio is not None:
        samples, rate = audio_io.load_wav(audio)
        seq.audio, seq.sample_rate, seq.audio_source = _muxable(samples, rate), _mux_rate(rate), Path(audio)
    if seq.audio is not None and seq.sample_rate is not None:
        seq.audio = seq.audio[: int(round(len(seq) / fps * seq.sample_rate))]
    return seq


def load_video_driver(
    path: Path | str,
    kind: DriverKind,
    basis_file: Path | None,
    fps: float = 25.0,
    window: int = audio_io.WINDOW,
    channels: int = audio_io.CHANNELS,
    skip_missing: bool = False,
    neutral_frame: int | None = None,
    head_motion: bool = False,
) -> DrivingSequence:
    """A face video as a driver (:mod:`sahs_nerfstudio.driving.video`): for an expression model its tracked
    expressions mapped into the subject's basis (``basis_file``, written by ``sahs-process`` into the dataset);
    for an audio model its sound track, and the tracked blinks as the eye closure when the basis is there.
    Frames without a face are an error naming them, or with ``skip_missing`` left out with their sound.
    ``head_motion`` also solves the driver's head poses (``--cameras driver``), a whole-clip PnP otherwise
    not needed."""
    from sahs_nerfstudio.driving import video as drv
    from sahs_nerfstudio.process.audio import cut_to_frames
    from sahs_nerfstudio.process.expression import ExpressionBasis
    from sahs_nerfstudio.process.shape import subject_shape

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "<file>", "a driving video", "no such file")
    if kind == "expression" and (basis_file is None or not basis_file.is_file()):
        raise FormatError(
            basis_file or path,
            "<file>",
            "the subject's expression basis (expression_basis.npz, written into the dataset by sahs-process)",
            "no such file (a dataset made before it, or not by sahs-process: process the subject's video again)",
        )
    track = drv.track_driver(path, fps)
    frames = drv.check_faces(track, skip_missing)
    if len(frames) < len(track.mesh):
        print(f"sahs-render: {path}: no face in {drv.format_missing(track)}: left out (--skip-missing)", flush=True)
    samples = None
    if track.audio is not None:
        samples, _ = cut_to_frames(track.audio, audio_io.FEATURE_SAMPLE_RATE, frames, fps)
    basis = ExpressionBasis.load(basis_file) if basis_file is not None and basis_file.is_file() else None
    shape = subject_shape(track.mesh[frames], np.ones(len(frames), bool))
    codes = drv.driver_codes(track, basis, frames, neutral_frame, shape) if basis is not None else None
    if kind == "expression":
        assert codes is not None
        seq = DrivingSequence("expression", codes, path, "<tracked face>", fps)
    else:
        if samples is None:
            raise FormatError(path, "<audio stream>", "an audio track (the model is audio-driven)", "none")
        rows = audio_io.audio_features(samples, audio_io.FEATURE_SAMPLE_RATE, fps=fps, window=window, channels=channels)
        rows = rows[: len(frames)]
        seq = DrivingSequence(
            "audio",
            rows,
            path,
            "<audio stream>",
            fps,
            extractor=audio_io.project_extractor_description(fps, window, channels),
        )
        if codes is not None:
            seq.eye_closure = eye_io.closure_from_au45(eye_io.au45_from_openness(drv.eye_openness(codes)))
    if samples is not None:
        rate = audio_io.FEATURE_SAMPLE_RATE
        seq.audio, seq.sample_rate, seq.audio_source = _muxable(samples, rate), _mux_rate(rate), path
    if head_motion:
        seq.head_rotations = drv.head_rotations(track, frames, shape)
    return seq


def _mux_rate(rate: int) -> int:
    return int(rate) if int(rate) in AAC_SAMPLE_RATES else 48000


def _muxable(samples: np.ndarray, rate: int) -> np.ndarray:
    """Samples at a rate the AAC encoder takes (resampled to 48 kHz when it does not)."""
    if int(rate) in AAC_SAMPLE_RATES:
        return samples
    return audio_io.resample(samples, rate, 48000)


def _sibling_wav(feature_file: Path) -> Path | None:
    for candidate in (feature_file.with_suffix(".wav"), feature_file.parent / formats.ADNERF_AUDIO_WAV):
        if candidate.is_file():
            return candidate
    return None


def attach_sibling_audio(seq: DrivingSequence, feature_file: Path, first_window: int) -> None:
    """Give ``seq`` the audio of the wav beside ``feature_file``, from window ``first_window`` on."""
    wav = _sibling_wav(feature_file)
    if wav is None:
        return
    samples, rate = audio_io.load_wav(wav)
    samples, rate = _muxable(samples, rate), _mux_rate(rate)
    start = int(round(first_window / seq.fps * rate))
    seq.audio, seq.sample_rate, seq.audio_source = samples[start:], rate, wav


def _load_npy_driver(path: Path, fps: float) -> DrivingSequence:
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FormatError(path, "<array>", "a readable .npy array", f"{type(err).__name__}: {err}") from None
    if rows.ndim not in (2, 3):
        raise FormatError(
            path, "<array>", "[T, 76] expression codes or [T, 16, 29] audio windows", f"shape {tuple(rows.shape)}"
        )
    if rows.shape[0] == 0:
        raise FormatError(path, "<array>", "at least one frame", f"shape {tuple(rows.shape)}")
    if not np.issubdtype(rows.dtype, np.number) or not np.all(np.isfinite(rows)):
        raise FormatError(path, "<array>", "finite numbers", f"dtype {rows.dtype} with NaN, infinity or non-numbers")
    kind: DriverKind = "expression" if rows.ndim == 2 else "audio"
    seq = DrivingSequence(kind, rows.astype(np.float32), path, "<array>", fps)
    if kind == "audio":
        attach_sibling_audio(seq, path, 0)
    return seq


def _load_json_driver(path: Path, fps: float) -> DrivingSequence:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(path, "<file>", "valid JSON", f"{type(err).__name__}: {err}") from None
    if not isinstance(meta, dict):
        raise FormatError(path, "<file>", "a transforms JSON object", type(meta).__name__)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FormatError(path, "frames", "a non-empty list", repr(frames)[:60])
    first = frames[0] if isinstance(frames[0], dict) else {}
    if "expression" in first:
        return _expressions_from_json(path, frames, fps)
    if "aud_id" in first or "focal_len" in meta or "focal_length" in meta:
        return _audio_from_adnerf_json(path, fps)
    raise FormatError(
        path, "frames[0]", "'expression' (NeRFace layout) or 'aud_id' (AD-NeRF layout)", f"keys {sorted(first)}"
    )


def _expressions_from_json(path: Path, frames: list, fps: float) -> DrivingSequence:
    rows: list[np.ndarray] = []
    for k, frame in enumerate(frames):
        name = f"frames[{k}].expression"
        if not isinstance(frame, dict) or "expression" not in frame:
            raise FormatError(path, name, "the field to be present", "it missing")
        try:
            row = np.asarray(frame["expression"], dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(path, name, "a list of numbers", repr(frame["expression"])[:60]) from None
        if row.ndim != 1:
            raise FormatError(path, name, "a flat list of numbers", f"shape {row.shape}")
        if rows and row.shape[0] != rows[0].shape[0]:
            raise FormatError(path, name, f"{rows[0].shape[0]} values like frames[0]", f"{row.shape[0]} values")
        if not np.all(np.isfinite(row)):
            raise FormatError(path, name, "finite numbers", "NaN or infinity")
        rows.append(row)
    return DrivingSequence("expression", np.stack(rows).astype(np.float32), path, "frames[k].expression", fps)


def _audio_from_adnerf_json(path: Path, fps: float) -> DrivingSequence:
    split = formats.read_adnerf_transforms(path)
    features = path.parent / formats.ADNERF_AUDIO
    table = formats.read_audio_features(features)
    ids = [formats.clamp_audio_index(fr.aud_id, table.shape[0]) for fr in split.frames]
    seq = DrivingSequence("audio", table[ids], path, "frames[k].aud_id", fps)
    contiguous = all(b == a + 1 for a, b in zip(ids, ids[1:], strict=False))
    if contiguous:
        attach_sibling_audio(seq, features, ids[0])
    return seq


# ----------------------------------------------------------------------------------------------
# Checking against a model and encoding


def expected_driver(model: "SAHSModel") -> tuple[DriverKind, tuple[int, ...]]:
    """The driver kind and the per-frame row shape a model takes."""
    if model.driver_kind == "audio":
        return "audio", tuple(int(v) for v in model.audio_window)
    return "expression", (int(model.train_drivers.shape[1]),)


@dataclass(frozen=True)
class DriverSpec:
    """What a model accepts as a driver: its kind, the row shape, and for audio models the features it trained on
    (a picklable summary of the model, for the viewer's panel)."""

    kind: DriverKind
    shape: tuple[int, ...]
    trained_features: str | None = None

    @staticmethod
    def of(model: "SAHSModel") -> "DriverSpec":
        kind, shape = expected_driver(model)
        return DriverSpec(kind, shape, model.audio_provenance() if model.driver_kind == "audio" else None)


def check_driver(seq: DrivingSequence, model: "SAHSModel | DriverSpec") -> None:
    """Raise a FormatError when ``seq`` cannot drive ``model`` (wrong kind or code width, or a recording for a
    model trained on another extractor's features)."""
    spec = model if isinstance(model, DriverSpec) else DriverSpec.of(model)
    kind, shape = spec.kind, spec.shape
    row_shape = tuple(int(v) for v in seq.rows.shape[1:])
    if len(seq) == 0:
        raise FormatError(seq.source, seq.field_name, "at least one frame", "none")
    _check_recording_allowed(spec.trained_features, seq)
    if seq.kind != kind:
        want = (
            f"expression codes of width {shape[0]} (this model is expression-driven)"
            if kind == "expression"
            else f"audio: a .wav or [T, {shape[0]}, {shape[1]}] audio windows (this model is audio-driven)"
        )
        found = f"{seq.kind} rows of shape {row_shape}"
        raise FormatError(seq.source, seq.field_name, want, found)
    if row_shape != shape:
        if kind == "expression":
            want = f"expression codes of width {shape[0]} (this model's code width)"
            found = f"width {row_shape[0]}"
        else:
            want = f"audio windows of shape [{shape[0]}, {shape[1]}] (this model's)"
            found = f"[{', '.join(str(v) for v in row_shape)}]"
        raise FormatError(seq.source, seq.field_name, want, found)


def _check_recording_allowed(trained: str | None, seq: DrivingSequence) -> None:
    """A recording drives only a model trained on the project's own features: others mean something else."""
    if seq.extractor is None or trained is None or audio_io.is_project_extractor(trained):
        return
    raise FormatError(
        seq.source,
        "<samples>",
        f"driving features of the kind this model trained on ({trained}), since a recording can only be "
        "turned into the project's log-mel features; retrain with "
        "--pipeline.datamanager.dataparser.audio-features wav, or drive with a [T, W, C] file of that extractor",
        "a recording",
    )


@torch.no_grad()
def encode_sequence(model: "SAHSModel", seq: DrivingSequence, batch: int = 256) -> Float[Tensor, "T code"]:
    """One driving code per frame of ``seq``.

    Expressions are the codes. Audio windows go through the model's audio network; once the model
    smooths with AudioAttNet, each frame is smoothed over the frames at positions ``i - 4 .. i + 3`` of
    ``seq`` itself (all-zero windows past its ends), as training smooths over the training set.
    """
    check_driver(seq, model)
    rows = torch.from_numpy(np.ascontiguousarray(seq.rows)).float().to(model.device)
    if seq.kind == "expression" or model.audio_encoder is None:
        return rows
    encoder = model.audio_encoder
    codes = []
    if model.use_audio_attention():
        seq_len = encoder.config.smoothing_seq_len
        for start in range(0, rows.shape[0], batch):
            index = torch.arange(start, min(start + batch, rows.shape[0]), device=rows.device)
            neighbours = audio_io.smoothing_positions(index, rows.shape[0], seq_len)
            codes.append(encoder.encode_smoothed(audio_io.gather_zero_padded(rows, neighbours)))
    else:
        for start in range(0, rows.shape[0], batch):
            codes.append(encoder.encode(rows[start : start + batch]))
    return torch.cat(codes, dim=0)


# ----------------------------------------------------------------------------------------------
# Eyes


def load_eye_track(path: Path | str, num_frames: int) -> Float[np.ndarray, " T"]:
    """Eye closures (0 open, 1 shut) of the first ``num_frames`` rows of an OpenFace ``au.csv`` (row ``k`` drives
    video frame ``k``; a longer file is cut like its audio); a FormatError when it has fewer rows."""
    path = Path(path)
    au45 = eye_io.read_au_csv(path)
    if len(au45) < num_frames:
        raise FormatError(path, eye_io.AU45_COLUMN, f"a row for each of the {num_frames} video frames", f"{len(au45)}")
    return eye_io.closure_from_au45(au45[:num_frames])


def driving_eyes(
    num_frames: int,
    fps: float,
    eyes: Path | str | None = None,
    blink: BlinkMode = "auto",
    seed: int = 0,
    own: np.ndarray | None = None,
) -> tuple[Float[np.ndarray, " T"], str]:
    """One eye closure per video frame and a description of where they came from.

    Args:
        num_frames: video frames.
        fps: video frame rate (natural blinks are timed in seconds).
        eyes: an ``au.csv`` eye track; it wins over ``blink``.
        blink: without ``eyes`` (see :data:`BlinkMode`).
        seed: seed of the natural blinks.
        own: the split's own closures when the split drives itself (``auto`` uses them).
    """
    if eyes is not None:
        return load_eye_track(eyes, num_frames), f"eye track {eyes}"
    if blink == "open":
        return np.zeros(num_frames), "eyes open"
    if blink == "auto" and own is not None and len(own) >= num_frames:
        return np.asarray(own[:num_frames], dtype=np.float64), "the split's own eye track"
    track = eye_io.natural_blinks(num_frames, fps, seed)
    return track, f"natural blinks ({eye_io.BLINKS_PER_MINUTE:g}/min, seed {seed})"
