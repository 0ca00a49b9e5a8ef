"""The audio track: voiced syllables synthesised to a waveform, and the mouth controls they cause.

``aud.wav`` (16 kHz) is a sequence of voiced syllables (a glottal harmonic source through the
formant filters of a vowel a/e/i/o/u). ``jaw_open`` is the RMS of the wav in the 40 ms around the
frame (a fixed affine map, clipped to [0, 1]); ``smile``/``pucker`` are set by the timbre: the vowel
being voiced around the frame (taken from the syllable schedule the wav was synthesised from, not
re-estimated from the waveform), weighted by its envelope (i, e smile; u, o pucker; a neither).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data.synthetic.config import SAMPLE_RATE

VOWELS = {
    # formants (Hz) and bandwidths, and the lip shape the vowel sets: (smile, pucker)
    "a": ((730, 1090, 2440), (90, 110, 160), (0.15, 0.0)),
    "e": ((530, 1840, 2480), (70, 100, 160), (0.5, 0.0)),
    "i": ((270, 2290, 3010), (60, 100, 170), (0.9, 0.0)),
    "o": ((570, 840, 2410), (70, 80, 160), (0.0, 0.6)),
    "u": ((300, 870, 2240), (60, 80, 160), (0.0, 0.9)),
}


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


def schedule(rng: np.random.Generator, t0: float, t1: float, held_out: bool) -> list[Syllable]:
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


def synthesize(rng: np.random.Generator, syllables: list[Syllable], num_samples: int) -> np.ndarray:
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


def timbre(syllables: list[Syllable], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
