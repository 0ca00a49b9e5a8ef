"""The real-clip benchmark's own numbers (``benchmarks/real_metrics.py``, ``benchmarks/real_video.py``) on small
arrays built here, each with one right answer; nothing reads ``../shared`` (a user's clone has none)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from real_metrics import (
    SplitImages,
    baselines,
    best_frame,
    consecutive_pairs,
    flicker_counts,
    label_flicker,
    nearest_pose,
    pose_jitter,
    rotation_accelerations_deg,
    stage_cpu_ms_per_frame,
)
from real_video import render_markdown, table_row

from sahs_nerfstudio.process.images import write_png
from sahs_nerfstudio.process.pose import rodrigues
from sahs_nerfstudio.utils.metrics import psnr


def _c2w(angle_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    """A camera turned ``angle_deg`` about y at translation ``t``."""
    m = np.eye(4)
    m[:3, :3] = rodrigues(np.array([[0.0, math.radians(angle_deg), 0.0]]))[0]
    m[:3, 3] = t
    return m


def _split(images: torch.Tensor, c2w: list[np.ndarray]) -> SplitImages:
    return SplitImages(images=images, c2w=np.stack(c2w), paths=[Path(f"{i}.png") for i in range(len(images))])


def test_baselines_mean_image_and_oracle():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(6, 8, 8, 3, generator=gen)
    held = torch.stack([train[4], torch.rand(8, 8, 3, generator=gen)])  # held-out 0 is training frame 4
    poses = [_c2w(0, (0, 0, 1.0 + 0.1 * i)) for i in range(6)]
    base = baselines(_split(train, poses), _split(held, [poses[2], poses[5]]))
    mean = train.mean(dim=0)
    expected_mean = (float(psnr(mean, held[0])) + float(psnr(mean, held[1]))) / 2
    assert base["mean_image_psnr"] == pytest.approx(expected_mean, abs=1e-5)
    assert base["best_frame_picks"][0] == 4
    # The oracle's pick is the best of all frames; identical images reach the PSNR's 100 dB cap.
    assert float(psnr(train[4], held[0])) == pytest.approx(100.0)
    best1 = max(float(psnr(t, held[1])) for t in train)
    assert base["best_frame_psnr"] == pytest.approx((100.0 + best1) / 2, abs=1e-4)
    assert base["nearest_pose_picks"] == [2, 5]
    assert base["held_out_frames"] == 2


def test_best_frame_is_lowest_mse():
    train = torch.zeros(3, 4, 4, 3)
    train[1] += 0.5
    train[2] += 0.9
    assert best_frame(train, torch.full((2, 4, 4, 3), 0.8)).tolist() == [2, 2]
    assert best_frame(train, torch.full((1, 4, 4, 3), 0.3)).tolist() == [1]


def test_nearest_pose_weighs_rotation_and_translation():
    train = [_c2w(0, (0, 0, 1)), _c2w(30, (0, 0, 1)), _c2w(0, (0.5, 0, 1))]
    # Turned 25 degrees: nearest the 30-degree camera; shifted 0.4: nearest the shifted one.
    held = [_c2w(25, (0, 0, 1)), _c2w(0, (0.4, 0, 1)), _c2w(2, (0.01, 0, 1))]
    assert nearest_pose(np.stack(train), np.stack(held)).tolist() == [1, 2, 0]


def _frames(h: int = 16, w: int = 16) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    a = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return a, a.copy()


def test_flicker_zero_on_identical_labels():
    a, b = _frames()
    labels = np.random.default_rng(1).integers(0, 12, (16, 16))
    assert flicker_counts(a, b, labels, labels.copy()) == (0, 256)


def test_flicker_counts_flipped_static_pixels_and_ignores_moved_ones():
    a, b = _frames()
    a[:, :8], b[:, :8] = 0, 255  # the left half moved (far beyond the threshold, even blurred)
    labels_a = np.zeros((16, 16), np.int64)
    labels_b = labels_a.copy()
    labels_b[:, :4] = 5  # changes on moved pixels: not flicker
    labels_b[2:4, 12:15] = 3  # 6 static pixels flip
    changed, static = flicker_counts(a, b, labels_a, labels_b)
    assert changed == 6
    # Static: the right half, less the column next to the edit that the 3x3 blur reaches.
    assert static == 16 * 7


def test_label_flicker_over_work_folder(tmp_path: Path):
    from sahs_nerfstudio.data.formats import write_rgb

    work = tmp_path / "work"
    frame = np.full((8, 8, 3), 100, np.uint8)
    for f in (0, 1, 2, 4):  # frame 3 dropped: only pairs (0, 1) and (1, 2)
        write_rgb(work / "frames" / f"{f:06d}.jpg", frame)
        labels = np.zeros((8, 8), np.uint8)
        if f == 1:
            labels[0, :4] = 7  # 4 of 64 static pixels differ from frames 0 and 2
        write_png(work / "labels" / f"{f:06d}.png", labels)
    assert consecutive_pairs([0, 1, 2, 4]) == [(0, 1), (1, 2)]
    result = label_flicker(work, [0, 1, 2, 4])
    assert result["flicker_pairs"] == 2
    assert result["static_fraction"] == pytest.approx(1.0)
    assert result["label_flicker"] == pytest.approx(8 / 128)


def test_jitter_zero_for_steady_turn_and_known_for_a_jump():
    axis = np.array([0.3, 0.8, 0.1]) / np.linalg.norm([0.3, 0.8, 0.1])
    steady = np.outer(np.arange(10) * 0.05, axis)  # constant rate about one axis
    assert np.abs(rotation_accelerations_deg(steady, range(10))).max() < 1e-6
    jump = np.zeros((9, 3))
    jump[4] = [0.0, 0.0, math.radians(5.0)]  # one frame off by 5 degrees: 5, 10, 5 around it
    acc = rotation_accelerations_deg(jump, range(9))
    assert acc.max() == pytest.approx(10.0, abs=1e-6)
    assert acc.sum() == pytest.approx(20.0, abs=1e-6)
    stats = pose_jitter(jump, range(9))
    assert stats["pose_jitter_triples"] == 7
    assert stats["pose_jitter_mean_deg"] == pytest.approx(20.0 / 7, abs=1e-6)


def test_jitter_skips_dropped_frames():
    rv = np.zeros((6, 3))
    rv[3] = np.nan  # a dropped frame (NaN row) breaks the triples around it
    rv[5] = [0.0, 1.0, 0.0]
    stats = pose_jitter(rv, [0, 1, 2, 4, 5])
    assert stats["pose_jitter_triples"] == 1  # only (0, 1, 2)
    assert stats["pose_jitter_max_deg"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(pose_jitter(rv, [0, 2, 4])["pose_jitter_mean_deg"])


def test_stage_cpu_ms_per_frame_keeps_this_layout():
    seconds = {"decode": 9.0, "decode_cpu": 2.0, "pose_cpu": 1.0, "layout_nerface_cpu": 0.5, "layout_adnerf_cpu": 4.0}
    ms = stage_cpu_ms_per_frame(seconds, 100, "nerface")
    assert ms == pytest.approx({"decode": 20.0, "pose": 10.0, "layout_nerface": 5.0, "total": 35.0})


def test_table_row_margin_and_missing_cells():
    row = {
        "clip": "c",
        "layout": "nerface",
        "metrics": {"psnr": 26.5, "mouth_psnr": 17.0},
        "baselines": {"best_frame_psnr": 22.0, "held_out_frames": 18},
        "margin_db": 4.5,
        "flicker": {"label_flicker": 0.0123},
    }
    line = table_row(row)
    assert "| +4.50 |" in line and "| 26.50 |" in line and "| 1.23 |" in line
    assert line.count("–") >= 5  # SSIM, Stage II, LMD, two baselines, jitter, timing
    text = render_markdown([row], "- header")
    assert text.startswith("- header\n\n| clip |")
