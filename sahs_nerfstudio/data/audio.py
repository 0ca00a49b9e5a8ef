"""The audio feature extractor: a wav file -> one ``[16, 29]`` feature window per video frame.

AD-NeRF drives its model with DeepSpeech 0.1.0 logits (``aud.npy``, ``[N_frames, 16, 29]``:
29 values at 50 feature frames per second, 16-frame windows, stride 2 feature frames per video
frame at 25 fps). DeepSpeech 0.1.0 needs TensorFlow 1 and is not installable here, so this module
computes features of the same shape and timing from a log-mel spectrogram instead:

* audio is read with soundfile, mixed to mono and resampled to 16 kHz (any input rate works);
* log-mel power with ``channels`` bands (25 ms Hann window, hop ``sr / 50`` = 20 ms, centred),
  so feature frame ``k`` is centred at ``k / 50`` seconds;
* per channel normalisation over the whole recording (mean 0, standard deviation 1, with a
  1 dB floor on the deviation so silent channels stay at 0): values are O(1) and a gain change of
  the whole recording leaves them unchanged;
* video frame ``f`` (time ``f / fps``) takes the 16 feature frames centred on feature frame
  ``round(f * 50 / fps)`` (8 before, 8 from it on), edge-padded at both ends of the recording.

The synthetic subject computes its ``aud.npy`` with :func:`wav_to_features` on the ``aud.wav`` it
writes, so training data and users' driving wavs go through the very same code.

Provenance: a run records which extractor made its training features (:func:`feature_provenance`):
this one (:func:`project_extractor_description`, with its parameters) or ``external: <file> [shape]``
(DeepSpeech logits of a released AD-NeRF subject, wav2vec / HuBERT features, ...). Only a model trained
on this extractor's features can be driven by a recording, since only then is the recording turned
into features of the same meaning.

Smoothing (AD-NeRF's AudioAttNet input, :func:`smoothing_positions`): frame ``i`` of a sequence is
smoothed over the windows at positions ``i - 4 .. i + 3`` of that same sequence (the training set
during training, the driving sequence when driven); positions outside it contribute all-zero
windows, as AD-NeRF's trainer pads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sahs_nerfstudio.errors import FormatError

FEATURE_SAMPLE_RATE = 16000
"""Audio is resampled to this rate before feature extraction."""
FEATURE_RATE = 50.0
"""Feature frames per second (DeepSpeech's rate)."""
WINDOW = 16
"""Feature frames per video frame window."""
CHANNELS = 29
"""Values per feature frame (DeepSpeech's 29 character logits)."""
SMOOTHING_WINDOW = 8
"""Frames AudioAttNet smooths over (AD-NeRF's ``smo_size``)."""
PROJECT_EXTRACTOR = "sahs log-mel"
"""How :func:`feature_provenance` names features made by this module."""
_WIN_SECONDS = 0.025
_TOP_DB = 80.0
_STD_FLOOR_DB = 1.0


def load_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of an audio file (stereo is averaged).

    Raises :class:`FormatError` naming the file when it is missing, unreadable or empty.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "<file>", "an audio file (.wav)", "no such file")
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise FormatError(path, "<file>", "a readable audio file (.wav)", f"{type(err).__name__}: {err}") from None
    if samples.shape[0] == 0:
        raise FormatError(path, "<samples>", "at least one audio sample", "an empty recording (0 samples)")
    mono = samples.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise FormatError(path, "<samples>", "finite audio samples", "NaN or infinity")
    return mono, int(sample_rate)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = FEATURE_SAMPLE_RATE) -> np.ndarray:
    """Resample mono samples to ``target_rate`` (a no-op when the rates agree)."""
    samples = np.asarray(samples, dtype=np.float32)
    if int(sample_rate) == int(target_rate):
        return samples
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    import librosa

    return librosa.resample(samples, orig_sr=int(sample_rate), target_sr=int(target_rate)).astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = FEATURE_SAMPLE_RATE, channels: int = CHANNELS) -> np.ndarray:
    """Normalised log-mel spectrogram ``[F, channels]`` at 50 frames per second (frame k at k/50 s)."""
    import librosa

    hop = int(round(sample_rate / FEATURE_RATE))
    win = int(round(sample_rate * _WIN_SECONDS))
    n_fft = 1 << int(np.ceil(np.log2(win)))
    mel = librosa.feature.melspectrogram(
        y=np.asarray(samples, dtype=np.float32),
        sr=sample_rate,
        n_fft=n_fft,
        hop_length=hop,
        win_length=win,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=channels,
        fmin=40.0,
        fmax=sample_rate / 2.0,
    )
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=_TOP_DB)  # [channels, F]
    mean = db.mean(axis=1, keepdims=True)
    std = np.maximum(db.std(axis=1, keepdims=True), _STD_FLOOR_DB)
    return ((db - mean) / std).T.astype(np.float32)


def audio_features(
    samples: np.ndarray,
    sample_rate: int,
    fps: float = 25.0,
    num_frames: int | None = None,
    window: int = WINDOW,
    channels: int = CHANNELS,
) -> np.ndarray:
    """One ``[window, channels]`` window of normalised log-mel features per video frame.

    Args:
        samples: mono audio samples ``[T]`` (any rate; resampled to 16 kHz).
        sample_rate: their rate in Hz.
        fps: video frame rate; window ``f`` is centred at ``f / fps`` seconds.
        num_frames: number of windows; defaults to ``round(duration * fps)`` (at least 1).
        window: feature frames per window (16 as in AD-NeRF).
        channels: mel bands per feature frame (29 as DeepSpeech's logits).

    Returns:
        float32 array ``[N, window, channels]``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.ndim != 1 or samples.shape[0] == 0:
        raise FormatError("<samples>", "<samples>", "at least one mono audio sample", f"shape {samples.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    duration = samples.shape[0] / float(sample_rate)
    samples = resample(samples, sample_rate, FEATURE_SAMPLE_RATE)
    feats = log_mel(samples, FEATURE_SAMPLE_RATE, channels)  # [F, C]
    if num_frames is None:
        num_frames = max(1, int(round(duration * fps)))
    centres = np.round(np.arange(num_frames) * (FEATURE_RATE / fps)).astype(np.int64)
    offsets = np.arange(window) - window // 2
    index = np.clip(centres[:, None] + offsets[None, :], 0, feats.shape[0] - 1)
    return feats[index].astype(np.float32)


def wav_to_features(path: Path | str, fps: float = 25.0, num_frames: int | None = None) -> np.ndarray:
    """:func:`load_wav` then :func:`audio_features`: ``[N, 16, 29]`` float32 for an audio file."""
    samples, sample_rate = load_wav(path)
    return audio_features(samples, sample_rate, fps=fps, num_frames=num_frames)


# ----------------------------------------------------------------------------------------------
# Provenance


def project_extractor_description(fps: float = 25.0, window: int = WINDOW, channels: int = CHANNELS) -> str:
    """This extractor with every parameter that changes its output."""
    return (
        f"{PROJECT_EXTRACTOR} (sahs_nerfstudio/data/audio.py): {FEATURE_SAMPLE_RATE} Hz mono, {channels} mel bands "
        f"40 Hz-{FEATURE_SAMPLE_RATE // 2} Hz, {_WIN_SECONDS * 1000:g} ms Hann, {FEATURE_RATE:g} feature frames/s, "
        f"{window}-frame windows at {fps:g} fps, per-recording normalised"
    )


def is_project_extractor(provenance: str) -> bool:
    """Whether a recorded provenance names this module's extractor."""
    return provenance.startswith(PROJECT_EXTRACTOR)


def external_description(path: Path, shape: tuple[int, ...]) -> str:
    return f"external: {Path(path).name} [{', '.join(str(int(v)) for v in shape)}]"


def feature_provenance(features: np.ndarray, path: Path, wav: Path | None, fps: float = 25.0) -> str:
    """The project's extractor when ``features`` are exactly what it makes of ``wav``; else external.

    Recomputing is cheap (about a second for a 5,000-frame subject) and needs no side files: a
    feature file is the project's only if it can be reproduced from the recording beside it.
    """
    if wav is not None and wav.is_file() and tuple(features.shape[1:]) == (WINDOW, CHANNELS):
        try:
            again = wav_to_features(wav, fps=fps, num_frames=int(features.shape[0]))
        except FormatError:
            again = None
        if again is not None and np.allclose(again, features, atol=1e-4, rtol=0.0):
            return project_extractor_description(fps)
    return external_description(path, tuple(features.shape))


# ----------------------------------------------------------------------------------------------
# Smoothing neighbourhoods


def smoothing_positions(
    positions: Int[Tensor, " B"], length: int, size: int = SMOOTHING_WINDOW
) -> Int[Tensor, "B size"]:
    """Positions ``p - size//2 .. p - size//2 + size - 1`` for each ``p``; -1 where outside ``[0, length)``.

    For ``size`` 8 that is ``p - 4 .. p + 3``: AD-NeRF's ``auds[i - 4 : i + 4]`` with zero padding.
    """
    offsets = torch.arange(size, device=positions.device) - size // 2
    index = positions.long()[:, None] + offsets[None]
    return torch.where((index >= 0) & (index < length), index, torch.full_like(index, -1))


def gather_zero_padded(rows: Float[Tensor, "T W C"], index: Int[Tensor, "B S"]) -> Float[Tensor, "B S W C"]:
    """``rows[index]`` with all-zero rows where ``index`` is -1 (AD-NeRF's padding of the window)."""
    picked = rows[index.long().clamp(min=0)]
    keep = (index >= 0).to(rows.dtype).view(*index.shape, *([1] * (rows.dim() - 1)))
    return picked * keep
