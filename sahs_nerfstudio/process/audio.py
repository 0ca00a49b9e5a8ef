"""Stage 7: the audio of the kept frames, and its features (one window per kept frame).

Decoded frame ``k`` shows the instant ``k / fps``; its sound is the span ``[k / fps, (k + 1) / fps)``
of the decoded track (aligned to the first frame by :mod:`.decode`). The AD-NeRF layout lists the
kept frames renumbered ``0..K-1``, so its ``aud.wav`` is those spans one after the other: kept frame
``i`` is heard at ``[i / fps, (i + 1) / fps)`` of it, as it is seen at ``i / fps``. ``aud.npy`` is
:func:`~sahs_nerfstudio.data.audio.wav_to_features` of that very wav with ``K`` windows, so window
``i`` is centred on kept frame ``i``, and the features are exactly what the extractor makes of the
layout's own recording (:func:`~sahs_nerfstudio.data.audio.feature_provenance` names the project's
extractor, and a model trained on them can be driven by a recording). Where frames were dropped
from the middle, windows within 8 feature frames (0.16 s) of the cut hear both sides of it, as a
model driven by the cut recording would.

Frames past the end of the track (a video whose sound stops early) get silence, and the run says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from jaxtyping import Float, Int


def frame_spans(frames: Int[np.ndarray, " K"], fps: float, sample_rate: int) -> Int[np.ndarray, "K 2"]:
    """Sample ranges ``[start, end)`` of decoded frames ``frames`` (frame ``k``: ``[k / fps, (k + 1) / fps)``)."""
    k = np.asarray(frames, dtype=np.int64)
    return np.stack([np.round(k * sample_rate / fps), np.round((k + 1) * sample_rate / fps)], axis=1).astype(np.int64)


def cut_to_frames(
    samples: Float[np.ndarray, " T"], sample_rate: int, frames: Int[np.ndarray, " K"], fps: float
) -> Tuple[Float[np.ndarray, " S"], int]:
    """The spans of ``frames`` joined in order, and how many of their samples lay past the track (silence)."""
    spans = frame_spans(frames, fps, sample_rate)
    total = int((spans[:, 1] - spans[:, 0]).sum())
    out = np.zeros(total, np.float32)
    pos = missing = 0
    for start, end in spans:
        length = int(end - start)
        have = max(0, min(int(end), len(samples)) - int(start))
        out[pos : pos + have] = samples[start : start + have]
        missing += length - have
        pos += length
    return out, missing


def kept_audio(wav: Path, kept: Int[np.ndarray, " K"], fps: float, out_wav: Path, out_features: Path) -> None:
    """Write the kept frames' audio (``out_wav``, 16-bit) and its features (``out_features``, ``[K, 16, 29]``)."""
    import soundfile

    from sahs_nerfstudio.data.audio import load_wav, wav_to_features

    samples, rate = load_wav(wav)
    cut, _ = cut_to_frames(samples, rate, kept, fps)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    out_wav.unlink(missing_ok=True)
    soundfile.write(str(out_wav), cut, rate, subtype="PCM_16")
    np.save(out_features, wav_to_features(out_wav, fps, len(kept)).astype(np.float32))


def silent_tail_note(kept: Int[np.ndarray, " K"], fps: float, audio_seconds: float) -> Optional[str]:
    """A note when kept frames lie more than a frame past the end of the track, else None."""
    end = (int(kept[-1]) + 1) / fps if len(kept) else 0.0
    if end - audio_seconds <= 1.0 / fps:  # rounding at the end is not worth a line
        return None
    return (
        f"the audio track ends at {audio_seconds:.2f} s, before the last kept frame ({end:.2f} s): "
        "the frames past it get silence in aud.wav"
    )
