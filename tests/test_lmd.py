"""LMD, the lip-sync metric: dlib's mouth landmarks of a render against its ground truth.

On a real photograph (scikit-image's astronaut) warped by known amounts, on the synthetic subject at
128x128 (found only with the detector's upsampling), and through ``ns-eval``'s averaging
(:meth:`SAHSPipeline.get_average_eval_image_metrics`) and its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sahs_nerfstudio.utils import face_landmarks as fl

# Measured: isotropic mouth scalings by 1.15 / 1.3 give LMD 1.87 / 3.45 px against the 1.76 / 3.52 px the
# ground-truth points scaled about their centre would give (ratios 1.06 / 0.98); whole-photo shifts of
# 1-8 px give LMD 0.38-0.63 px. Tolerances keep about 2-3x of margin.
WARP_TOL = 0.25
SHIFT_LMD_MAX = 1.5


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    """The photo (512x512 RGB uint8) and its landmarks."""
    from skimage import data

    img = data.astronaut()
    points = fl.detect_landmarks(img)
    assert points is not None
    return img, points


def scale_mouth(img: np.ndarray, points: np.ndarray, s: float) -> np.ndarray:
    """The mouth region scaled by ``s`` about the mouth centre, blending smoothly into the unwarped face."""
    mouth = points[list(fl.MOUTH)]
    centre, half = mouth.mean(0), (mouth.max(0) - mouth.min(0)) / 2
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float32)
    # Full scaling up to 1.6 half-extents from the centre, fading to none over one more (x) / two more (y).
    dx = np.maximum(np.abs(xx - centre[0]) - 1.6 * half[0], 0) / half[0]
    dy = np.maximum(np.abs(yy - centre[1]) - 1.6 * half[1], 0) / (2 * half[1])
    w = np.clip(1 - np.hypot(dx, dy), 0, 1)
    k = 1 + (s - 1) * w * w * (3 - 2 * w)
    map_x = (centre[0] + (xx - centre[0]) / k).astype(np.float32)
    map_y = (centre[1] + (yy - centre[1]) / k).astype(np.float32)
    return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR)


def test_lmd_is_zero_for_identical_images_with_a_face(astronaut):
    img, points = astronaut
    assert fl.interocular(points) > 40  # the real face, not a false detection
    scorer = fl.LipSyncScorer()
    assert scorer.add(img, torch.from_numpy(img).float() / 255.0)  # uint8 and float [0, 1] inputs alike
    out = scorer.summary(get_std=True)
    assert out == {
        "lmd_frames": 1.0,
        "lmd_skipped": 0.0,
        "lmd": 0.0,
        "lmd_std": 0.0,
        "lmd_iod": 0.0,
        "lmd_iod_std": 0.0,
    }


def test_lmd_follows_a_known_mouth_scaling(astronaut):
    img, points = astronaut
    mouth = points[list(fl.MOUTH)]
    offsets = mouth - mouth.mean(0)
    measured = []
    for s in (1.15, 1.3):
        scorer = fl.LipSyncScorer()
        assert scorer.add(scale_mouth(img, points, s), img)
        out = scorer.summary()
        expected = float(np.linalg.norm((s - 1) * offsets, axis=1).mean())
        assert out["lmd"] == pytest.approx(expected, rel=WARP_TOL), (s, out)
        assert out["lmd_iod"] == pytest.approx(out["lmd"] / fl.interocular(points))
        measured.append(out["lmd"])
    assert measured[1] > measured[0] * 1.4


def test_a_displaced_head_is_not_a_lip_sync_error(astronaut):
    """LMD removes each mouth's own mean: a face moved by k pixels scores near 0, not k."""
    img, points = astronaut
    for k in (3, 8):
        moved = np.roll(img, (k, k), axis=(0, 1))
        found = fl.detect_landmarks(moved, near=points)
        assert found is not None
        # The landmarks did move with the face (about k*sqrt(2)) ...
        assert np.linalg.norm(found[list(fl.MOUTH)] - points[list(fl.MOUTH)], axis=1).mean() > k
        assert fl.lmd(found, points) < SHIFT_LMD_MAX  # ... but the mouth's shape did not change


def test_the_most_confident_face_wins_and_the_render_face_must_be_the_same_one(astronaut):
    """A 1-px shift makes dlib also report a weak, larger false face on the suit; LMD must not score it."""
    img, points = astronaut
    moved = np.roll(img, (1, 1), axis=(0, 1))
    detector, _ = fl.dlib_models()
    rects, scores, _ = detector.run(cv2.cvtColor(moved, cv2.COLOR_RGB2GRAY), 0, 0.0)
    assert len(rects) == 2 and max(r.area() for r in rects) > rects[int(np.argmax(scores))].area()
    found = fl.detect_landmarks(moved)
    assert found is not None and np.abs(found - points).max() < 5
    # A render whose only face lies elsewhere (here: the photo's lower half) is not the ground truth's face.
    elsewhere = np.zeros_like(img)
    elsewhere[256:] = img[:256]
    assert fl.detect_landmarks(elsewhere) is not None
    assert fl.detect_landmarks(elsewhere, near=points) is None


def test_lmd_skipped_with_one_message_without_faces(astronaut, capsys):
    from skimage import data

    img, _ = astronaut
    no_face = data.coffee()
    scorer = fl.LipSyncScorer()
    assert not scorer.add(no_face, no_face)
    assert not scorer.add(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))
    assert scorer.summary(get_std=True) == {"lmd_frames": 0.0, "lmd_skipped": 2.0}
    out = capsys.readouterr().out
    assert out.count("LMD skipped") == 1 and "dlib found no face in 2 of 2 frames" in out
    # A face in the ground truth only (a render without one) is skipped too; the rest is still scored.
    assert not scorer.add(no_face, img)
    assert scorer.add(img, img)
    assert scorer.summary() == {"lmd_frames": 1.0, "lmd_skipped": 3.0, "lmd": 0.0, "lmd_iod": 0.0}
    out = capsys.readouterr().out
    assert "no face in 3 of 4 frames" in out and "LMD is over the other 1" in out


# ----------------------------------------------------------------------------------------------
# The synthetic subject at 128x128, and ns-eval's averaging


@pytest.fixture(scope="module")
def subject_128(tmp_path_factory) -> Path:
    from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject

    root = tmp_path_factory.mktemp("subject_128")
    generate_subject(
        SyntheticConfig(output=root, resolution=128, num_train=8, num_test=2, num_val=2, seed=1, layouts=("nerface",))
    )
    return root


def test_the_synthetic_face_at_128_px_needs_the_detectors_upsampling(subject_128):
    from sahs_nerfstudio.data.formats import read_rgb

    frames = sorted((subject_128 / "nerface" / "train").glob("*.png"))
    assert frames
    rgb = read_rgb(frames[0])[..., :3]
    assert rgb.shape[:2] == (128, 128) and fl.MIN_DETECT_SIZE > 128
    detector, _ = fl.dlib_models()
    assert len(detector(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 0)) == 0  # its face is below dlib's 80-px window
    points = fl.detect_landmarks(rgb)
    assert points is not None
    assert 10 < fl.interocular(points) < 64


def test_ns_eval_average_reports_lmd_over_the_frames_with_faces(subject_128, tmp_path, capsys):
    """An untrained model renders no face; an oracle render (its ground truth) of the first eval image does.

    nerfstudio averages over the first image's keys, so LMD must not be a per-image key: it comes out
    over the one frame with faces in both images, with the count of frames scored and skipped.
    """
    from sahs_nerfstudio.models.sahs_model import SAHSModel, SAHSModelConfig
    from sahs_nerfstudio.presets import tiny_trainer_config

    config = tiny_trainer_config(subject_128 / "nerface", steps=1, rays=64, output_dir=tmp_path)
    # Untrained renders need no samples to speak of: 4 + 4 per ray keep the 2 renders ~2 s each.
    model_config = config.pipeline.model
    assert isinstance(model_config, SAHSModelConfig)
    model_config.num_coarse_samples = model_config.num_importance_samples = 4
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model
    assert isinstance(model, SAHSModel)
    num_eval = len(pipeline.datamanager.fixed_indices_eval_dataloader)
    assert num_eval == 2

    real = model.get_image_metrics_and_images
    seen = []

    def first_frame_rendered_perfectly(outputs, batch):
        if not seen:
            outputs = {**outputs, "rgb": batch["image"][..., :3].to(outputs["rgb"])}
        seen.append(1)
        return real(outputs, batch)

    model.get_image_metrics_and_images = first_frame_rendered_perfectly  # type: ignore[method-assign]
    metrics = pipeline.get_average_eval_image_metrics(get_std=True)
    assert len(seen) == num_eval
    assert metrics["lmd_frames"] == 1 and metrics["lmd_skipped"] == num_eval - 1
    assert metrics["lmd"] == 0.0 and metrics["lmd_iod"] == 0.0 and metrics["lmd_std"] == 0.0
    assert np.isfinite(metrics["psnr"]) and "psnr_std" in metrics  # nerfstudio's own means are untouched
    assert "dlib found no face in 1 of 2 frames" in capsys.readouterr().out
    json.dumps(metrics, allow_nan=False)
    assert model.lip_sync is None  # armed only while averaging: per-step eval images skip dlib


def test_ns_eval_json_says_how_many_frames_lmd_skipped(tiny_run_expression, tmp_path, capsys):
    """``ns-eval`` on a trained 32x32 run: no face at that size, so the JSON has the skip count and no LMD."""
    from nerfstudio.scripts.eval import ComputePSNR

    out = tmp_path / "eval.json"
    ComputePSNR(load_config=tiny_run_expression, output_path=out).main()
    results = json.loads(out.read_text())["results"]
    assert results["lmd_frames"] == 0 and "lmd" not in results
    assert results["lmd_skipped"] >= 1 and "psnr" in results
    n = int(results["lmd_skipped"])
    assert f"LMD skipped: dlib found no face in {n} of {n} frames" in capsys.readouterr().out


def test_split_eval_metrics_carry_the_lmd_skip_count(tiny_run_expression, capsys):
    """``sahs-demo``'s held-out metrics (:func:`render_split_video`): the same LMD keys and message."""
    from sahs_nerfstudio.rendering.split_eval import render_split_video

    result = render_split_video(tiny_run_expression, None, split="test")
    n = int(result["num_frames"])
    assert n >= 1 and result["lmd_frames"] == 0 and result["lmd_skipped"] == n and "lmd" not in result
    assert capsys.readouterr().out.count(f"LMD skipped: dlib found no face in {n} of {n} frames") == 1
