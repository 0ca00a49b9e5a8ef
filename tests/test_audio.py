"""The audio feature extractor: shape, timing, sample-rate independence, sensitivity, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from sahs_nerfstudio.data.audio import CHANNELS, WINDOW, audio_features, load_wav, wav_to_features
from sahs_nerfstudio.errors import FormatError


def _voice(sample_rate: int, seconds: float = 2.0, loud: tuple[float, float] | None = None, f0: float = 150.0):
    """A harmonic tone (harmonics up to 3 kHz) with a slow tremolo; optionally 6x louder in ``loud`` seconds."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = np.zeros_like(t)
    for h in range(1, int(3000 // f0) + 1):
        x += np.sin(2 * np.pi * h * f0 * t) / h
    x *= 0.02 * (1.0 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
    if loud is not None:
        x[(t >= loud[0]) & (t < loud[1])] *= 6.0
    return x.astype(np.float32)


def _write(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    soundfile.write(str(path), samples, sample_rate, subtype="PCM_16")
    return path


def test_shape_and_frame_count(tmp_path):
    wav = _write(tmp_path / "a.wav", _voice(16000, 2.0), 16000)
    feats = wav_to_features(wav)
    assert feats.shape == (50, WINDOW, CHANNELS) == (50, 16, 29)  # 2 s at 25 fps
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    assert 0.3 < feats.std() < 3.0 and np.abs(feats).mean() < 2.0  # O(1) values
    assert wav_to_features(wav, num_frames=7).shape == (7, 16, 29)
    assert wav_to_features(wav, fps=50.0).shape == (100, 16, 29)
    # Consecutive video frames at 25 fps are 2 feature frames apart: window f+1 is window f shifted by 2.
    np.testing.assert_array_equal(feats[11, :-2], feats[10, 2:])


def test_stereo_is_mixed_to_mono(tmp_path):
    mono = _voice(16000, 1.0)
    wav = _write(tmp_path / "s.wav", np.stack([mono, mono], axis=1), 16000)
    samples, rate = load_wav(wav)
    assert samples.ndim == 1 and rate == 16000 and samples.shape[0] == mono.shape[0]
    assert wav_to_features(wav).shape == (25, 16, 29)


@pytest.mark.parametrize("rate", [44100, 8000])
def test_other_sample_rates_give_the_same_frames(tmp_path, rate):
    ref = wav_to_features(_write(tmp_path / "ref.wav", _voice(16000, 2.0, loud=(0.8, 1.2)), 16000))
    other = wav_to_features(_write(tmp_path / f"r{rate}.wav", _voice(rate, 2.0, loud=(0.8, 1.2)), rate))
    assert other.shape == ref.shape
    import librosa

    # Compare the bands below 3.5 kHz (an 8 kHz file has nothing above 4 kHz).
    edges = librosa.mel_frequencies(n_mels=CHANNELS + 2, fmin=40.0, fmax=8000.0)
    low = edges[2:] < 3500.0
    a, b = ref[:, 8, low], other[:, 8, low]
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr > 0.95, corr
    assert np.abs(a - b).mean() < 0.3


def test_a_louder_segment_changes_exactly_its_frames(tmp_path):
    quiet = wav_to_features(_write(tmp_path / "q.wav", _voice(16000, 2.0), 16000))
    loud = wav_to_features(_write(tmp_path / "l.wav", _voice(16000, 2.0, loud=(0.8, 1.2)), 16000))
    # The video frames whose centre lies well inside 0.8-1.2 s are 21..29 (at 25 fps: 0.84..1.16 s).
    level = loud[:, 8, :].mean(axis=1)  # centre feature frame of each window
    inside = level[21:30]
    outside = np.concatenate([level[:17], level[34:]])
    assert inside.min() > outside.max() + 0.3
    assert inside.mean() > outside.mean() + 1.0
    # The window centred on frame 10 (0.4 s) ends at 0.54 s: it must not see the loud part (the whole-recording
    # normalisation only rescales each channel, which standardising within the window undoes);
    # frame 17's window (0.52-0.82 s) does see it.

    def standardised(w):
        return (w - w.mean(0)) / np.maximum(w.std(0), 1e-6)

    varying = (quiet[10].std(0) > 0.05) & (loud[10].std(0) > 0.05)  # channels above 3 kHz are silent here
    assert varying.sum() >= 15
    np.testing.assert_allclose(standardised(loud[10])[:, varying], standardised(quiet[10])[:, varying], atol=2e-3)
    assert np.abs(standardised(loud[17]) - standardised(quiet[17])).max() > 0.5


def test_a_different_timbre_moves_energy_across_channels(tmp_path):
    t = np.arange(32000) / 16000
    low = 0.05 * np.sin(2 * np.pi * 300 * t)
    high = 0.05 * np.sin(2 * np.pi * 2500 * t)
    x = np.where((t >= 1.0) & (t < 1.4), high, low).astype(np.float32)
    feats = wav_to_features(_write(tmp_path / "t.wav", x, 16000))
    centre = feats[:, 8, :]
    peak = centre.argmax(axis=1)
    assert np.all(peak[27:34] > peak[5:20].max() + 5)  # 1.08..1.32 s: the 2.5 kHz tone's band


def test_errors_name_the_file(tmp_path):
    empty = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(FormatError, match="empty.wav"):
        wav_to_features(empty)
    with pytest.raises(FormatError, match="missing.wav"):
        wav_to_features(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    with pytest.raises(FormatError, match="bad.wav"):
        load_wav(bad)
    with pytest.raises(FormatError):
        audio_features(np.zeros(0, dtype=np.float32), 16000)
