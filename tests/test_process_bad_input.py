"""``sahs-process`` on bad input: each case ends with its one line (errors: exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import moving_photo as mp
import numpy as np
import pytest

from sahs_nerfstudio.scripts.process import run

SPEECH = Path(__file__).parent / "data" / "speech.wav"
SIZE = 256


def _speech(seconds: float) -> tuple[np.ndarray, int]:
    import soundfile

    samples, rate = soundfile.read(str(SPEECH), dtype="float32")
    return samples[: int(seconds * rate)], rate


def _video(path: Path, frames: int, audio: bool = True, blank=None, seed: int = 1) -> mp.MovingPhoto:
    truth = mp.make_motion(frames, size=SIZE, seed=seed, blank=blank)
    samples, rate = _speech(frames / 25.0) if audio else (None, 16000)
    mp.write_moving_photo(path, truth, samples, rate)
    return truth


def _process(tmp_path: Path, video: Path, *extra: str) -> int:
    return run([str(video), "--output", str(tmp_path / "out"), "--size", str(SIZE), *extra])


def test_unreadable_video(tmp_path, capsys):
    video = tmp_path / "notes.mp4"
    video.write_text("this is not a video\n")
    assert _process(tmp_path, video) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sahs-process: error: {video}: field '<file>': expected a video PyAV can read, found ")
    assert "\n" not in err and "Traceback" not in err


def test_zero_length_video(tmp_path, capsys):
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    assert _process(tmp_path, video) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sahs-process: error: {video}: field '<file>': expected a video file, found an empty file (0 bytes)"


def test_missing_video(tmp_path, capsys):
    assert _process(tmp_path, tmp_path / "nowhere.mp4") == 2
    assert "field '<file>': expected a video file, found no such file" in capsys.readouterr().err


def test_too_short_video(tmp_path, capsys):
    video = tmp_path / "short.mp4"
    _video(video, 10)
    assert _process(tmp_path, video, "--min-seconds", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sahs-process: error: {video}: field '<duration>': expected at least 1 s (25 frames at 25 fps, "
        "--min-seconds), found 0.40 s (10 frames)"
    )


def test_no_audio_refuses_adnerf_with_the_reason(tmp_path, capsys):
    video = tmp_path / "silent.mp4"
    _video(video, 14, audio=False)
    assert _process(tmp_path, video, "--layout", "adnerf", "--min-seconds", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sahs-process: error: {video}: field '<audio stream>': expected an audio track "
        "(the AD-NeRF layout is audio-driven), found none"
    )


def test_no_audio_writes_the_expression_layout_only(tmp_path, capsys):
    video = tmp_path / "silent.mp4"
    _video(video, 14, audio=False)
    assert _process(tmp_path, video, "--min-seconds", "0.5") == 0
    out = capsys.readouterr().out
    line = "sahs-process: no audio track: writing the NeRFace (expression) layout only; AD-NeRF needs audio"
    assert out.count(line) == 1
    assert (tmp_path / "out" / "nerface" / "transforms_train.json").is_file()
    assert not (tmp_path / "out" / "adnerf").exists()


def test_frames_without_a_face_short_gaps_filled_long_gaps_dropped(tmp_path, capsys):
    video = tmp_path / "gaps.mp4"
    n = 60
    truth = _video(video, n, blank=[(10, 11), (25, 38)])
    assert _process(tmp_path, video, "--min-seconds", "0.5", "--max-gap-seconds", "0.2") == 0
    out = capsys.readouterr().out
    assert "sahs-process: no face in frames 10-11 (0.40-0.48 s): interpolated (short gaps)" in out
    assert "sahs-process: no face in frames 25-38 (1.00-1.56 s): dropped from the dataset" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames_without_face"] == 16 and report["frames_kept"] == n - 14
    assert 25 not in report["kept_frames"] and 10 in report["kept_frames"]
    assert truth.num_frames == n
    # The interpolated frames lie between their neighbours (never a wild pose).
    points = np.load(tmp_path / "out" / "work" / "landmarks.npz")["points"]
    mid = points[10:12].mean(axis=1)
    lo, hi = np.minimum(points[9].mean(0), points[12].mean(0)), np.maximum(points[9].mean(0), points[12].mean(0))
    assert np.all(mid >= lo - 1.0) and np.all(mid <= hi + 1.0)
    _check_audio_follows_the_kept_frames(tmp_path / "out", report["kept_frames"])


def _check_audio_follows_the_kept_frames(out: Path, kept: list) -> None:
    """AD-NeRF's aud.wav is the kept frames' audio in order, aud.npy its features: both align with img_id."""
    import soundfile

    from sahs_nerfstudio.data.audio import feature_provenance, is_project_extractor, wav_to_features

    full, rate = soundfile.read(str(out / "work" / "audio.wav"), dtype="float32")
    cut, cut_rate = soundfile.read(str(out / "adnerf" / "aud.wav"), dtype="float32")
    per_frame = rate // 25
    assert cut_rate == rate and len(cut) == len(kept) * per_frame
    for i, k in enumerate(kept):  # kept frame i is heard where it is seen: [i / 25, (i + 1) / 25) s
        np.testing.assert_array_equal(
            cut[i * per_frame : (i + 1) * per_frame], full[k * per_frame : (k + 1) * per_frame]
        )
    feats = np.load(out / "adnerf" / "aud.npy")
    assert feats.shape == (len(kept), 16, 29)
    np.testing.assert_allclose(feats, wav_to_features(out / "adnerf" / "aud.wav", 25.0, len(kept)), atol=1e-6)
    assert is_project_extractor(feature_provenance(feats, out / "adnerf" / "aud.npy", out / "adnerf" / "aud.wav"))
    # Past the cut (frames 25-38 dropped), window i still hears kept frame i: it matches the uncut
    # recording's window at the original frame, not the one at the renumbered index.
    whole = wav_to_features(out / "work" / "audio.wav", 25.0, max(kept) + 1)
    # A window hears frames k - 4 .. k + 4 (16 feature frames at 50 Hz), plus half an STFT window.
    after = [i for i, k in enumerate(kept) if k >= 39 + 5 and k + 5 <= max(kept)]
    assert after

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])

    aligned = np.mean([corr(feats[i], whole[kept[i]]) for i in after])
    shifted = np.mean([corr(feats[i], whole[i]) for i in after])
    assert aligned > 0.9 and aligned > shifted + 0.2, (aligned, shifted)


def test_no_face_at_all(tmp_path, capsys):
    video = tmp_path / "wall.mp4"
    _video(video, 14, blank=[(0, 13)])
    assert _process(tmp_path, video, "--min-seconds", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sahs-process: error: {video}: field '<faces>': expected a face in at least 13 frames "
        "(--min-seconds 0.5), found a face in 0 of 14 frames"
    )


def test_several_faces_follow_the_largest_and_say_so_once(tmp_path, capsys):
    import cv2

    truth = mp.make_motion(14, size=SIZE, seed=2, max_angle_deg=2.0, max_shift=0.01)
    frames = []
    for k in range(truth.num_frames):
        big = mp.render_frame(truth, k)
        small = cv2.resize(big, (216, 216), interpolation=cv2.INTER_AREA)
        canvas = np.full((480, 480, 3), 90, np.uint8)
        canvas[112 : 112 + SIZE, 0:SIZE] = big
        canvas[132 : 132 + 216, 264:480] = small
        frames.append(canvas)
    video = tmp_path / "two.mp4"
    mp.write_video(video, frames, 25.0, _speech(14 / 25)[0])
    assert run([str(video), "--output", str(tmp_path / "out"), "--size", "0", "--min-seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("faces found (first in frame 0): following the largest one") == 1
    assert "sahs-process: 2 faces found (first in frame 0): following the largest one" in out
    points = np.load(tmp_path / "out" / "work" / "landmarks.npz")["points"]
    assert np.all(points[:, :, 0].mean(1) < SIZE)  # the big face on the left throughout


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--fps", "0", "a positive frame rate"), ("--val-fraction", "1.5", "a fraction between 0 and 1")],
)
def test_bad_flags(tmp_path, capsys, flag, value, expected):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    assert _process(tmp_path, video, flag, value) == 2
    assert f"field '{flag}': expected {expected}" in capsys.readouterr().err


def test_a_decode_error_mid_stream_is_said_and_what_decoded_is_kept(tmp_path, monkeypatch):
    """A file damaged part-way: decoding stops at the damage with one line each for video and sound, naming the
    time, and keeps what came before (it used to stop silently)."""
    import av

    from sahs_nerfstudio.process import decode as dec

    video = tmp_path / "damaged.mp4"
    _video(video, 30)
    real_open = dec.open_video

    class DamagedAfter:
        """The real container, whose streams raise FFmpeg's invalid-data error after 12 packets' frames."""

        def __init__(self, path):
            self.real = real_open(path)
            self.streams = self.real.streams

        def decode(self, stream):
            for k, frame in enumerate(self.real.decode(stream)):
                if k == 12:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

        def close(self):
            self.real.close()

    monkeypatch.setattr(dec, "open_video", DamagedAfter)
    info = dec.decode(video, tmp_path / "frames", tmp_path / "audio.wav", size=64, fps=25.0, min_seconds=0.1)
    assert info.num_frames == 12 and info.source_frames == 12  # the 12 frames before the damage
    assert len(info.decode_errors) == 2, info.decode_errors
    video_line, sound_line = info.decode_errors
    assert video_line.startswith("damaged.mp4: the video stopped decoding after 0.48 s (12 frames; InvalidDataError")
    assert "the frames before it are kept" in video_line
    assert sound_line.startswith("damaged.mp4: the sound stopped decoding after ") and "is kept" in sound_line
    assert 0.0 < info.audio_seconds < 30 / 25.0
    info.save(tmp_path / "decode.json")
    assert dec.DecodeInfo.load(tmp_path / "decode.json").decode_errors == info.decode_errors
