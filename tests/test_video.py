"""utils/video.py: mp4 (H.264 + optional AAC) written with PyAV, checked by decoding it back."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sahs_nerfstudio.utils.video import read_video_frames, video_fps, write_video


def _frames(n: int, h: int, w: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return [
        np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 20 * i)], -1).astype(
            np.uint8
        )
        for i in range(n)
    ]


def _probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        info: dict = {"audio": None}
        v = container.streams.video[0]
        info["size"] = (v.codec_context.width, v.codec_context.height)
        info["rate"] = v.average_rate
        if container.streams.audio:
            a = container.streams.audio[0]
            info["audio"] = {"seconds": float(a.duration * a.time_base), "rate": a.rate, "channels": a.channels}
        info["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return info


def test_video_with_audio_round_trip(tmp_path: Path) -> None:
    frames = _frames(12, 24, 32)
    sr, seconds = 16000, 12 / 25
    t = np.arange(int(sr * seconds)) / sr
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    info = write_video(tmp_path / "sub" / "a.mp4", iter(frames), fps=25, audio=audio, sample_rate=sr)
    assert (
        info.num_frames == 12 and (info.width, info.height) == (32, 24) and info.audio_seconds == pytest.approx(seconds)
    )
    probe = _probe(tmp_path / "sub" / "a.mp4")
    assert len(probe["frames"]) == 12 and probe["size"] == (32, 24) and probe["rate"] == 25
    assert probe["audio"]["rate"] == sr and probe["audio"]["channels"] == 1
    assert probe["audio"]["seconds"] == pytest.approx(seconds, abs=1024 / sr)
    # content survives the (near-lossless) encoding
    err = np.abs(probe["frames"][5].astype(int) - frames[5].astype(int)).mean()
    assert err < 6
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_odd_size_is_padded_and_no_audio_stream(tmp_path: Path) -> None:
    frames = _frames(5, 23, 31)
    info = write_video(tmp_path / "b.mp4", frames, fps=29.97)
    assert (info.width, info.height, info.pad_right, info.pad_bottom) == (32, 24, 1, 1)
    assert info.fps == Fraction(30000, 1001) and info.audio_seconds is None
    probe = _probe(tmp_path / "b.mp4")
    assert probe["audio"] is None and probe["size"] == (32, 24) and len(probe["frames"]) == 5
    assert video_fps(tmp_path / "b.mp4") == pytest.approx(29.97, abs=1e-3)
    decoded = list(read_video_frames(tmp_path / "b.mp4"))
    assert [i for i, _ in decoded] == [0, 1, 2, 3, 4] and decoded[0][1].shape == (24, 32, 3)


def test_float_and_int16_inputs(tmp_path: Path) -> None:
    frames = [f.astype(np.float32) / 255 for f in _frames(3, 16, 16)]
    audio = (np.ones(8000) * 1000).astype(np.int16)
    info = write_video(tmp_path / "c.mp4", frames, fps=10, audio=audio, sample_rate=8000)
    assert info.num_frames == 3 and info.audio_seconds == pytest.approx(1.0)
    assert _probe(tmp_path / "c.mp4")["audio"]["seconds"] == pytest.approx(1.0, abs=1024 / 8000)


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "d.mp4", [], fps=25)
    with pytest.raises(ValueError, match="sample_rate"):
        write_video(tmp_path / "d.mp4", _frames(2, 8, 8), fps=25, audio=np.zeros(100, np.float32))
    mixed = _frames(2, 8, 8) + _frames(1, 10, 8)
    with pytest.raises(ValueError, match="frame 2: size 8x10 differs"):
        write_video(tmp_path / "d.mp4", mixed, fps=25)
    assert not (tmp_path / "d.mp4").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="mono"):
        write_video(
            tmp_path / "d.mp4", _frames(2, 8, 8), fps=25, audio=np.zeros((100, 2), np.float32), sample_rate=8000
        )


def test_existing_folder_as_path_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "out.mp4"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_video(folder, _frames(2, 8, 8), fps=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"] and not any(folder.iterdir())
