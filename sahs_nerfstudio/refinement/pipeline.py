"""Stage II on a trained Stage-I run in one call: render, train the refiner, score and refine the held-out frames."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from sahs_nerfstudio.refinement.evaluation import evaluate_refiner
from sahs_nerfstudio.refinement.inference import refine_frames
from sahs_nerfstudio.refinement.stage_one import release_stage_one_pipeline, render_stage_one
from sahs_nerfstudio.refinement.training import RefinerTrainConfig, train_refiner

STAGE_TWO_PARTS = ("stage1", "refiner", "refined", "metrics.json")
"""What :func:`run_stage_two` writes under its ``out_dir`` (and removes first unless ``reuse``)."""


def run_stage_two(
    config_path: Path,
    out_dir: Path,
    train_config: RefinerTrainConfig | None = None,
    video: Path | None = None,
    fps: float | None = None,
    lpips: bool = False,
    reuse: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Stage II for the Stage-I run ``config_path`` (its ``config.yml``).

    Renders the run's train and eval splits (``<out_dir>/stage1/{train,eval}``), trains the
    refiner on the train renders (``<out_dir>/refiner``, default :class:`RefinerTrainConfig`),
    scores the held-out (eval) renders before and after refinement (``<out_dir>/metrics.json``)
    and writes the refined held-out frames to ``<out_dir>/refined`` (and ``video`` if given).

    Args:
        config_path: The Stage-I run's ``config.yml``.
        out_dir: Output folder.
        train_config: Refiner schedule and network; the defaults suit a CPU.
        video: Also write the refined held-out frames as this mp4.
        fps: Frame rate of ``video`` (default 25).
        lpips: Also score LPIPS (only where the AlexNet weights are on disk; never downloads).
        reuse: Keep what an earlier call left in ``out_dir`` (renders, a refiner to resume);
            by default it is removed, so a retrained Stage-I run is never scored with stale files.
        show_progress: Show progress bars.

    Returns:
        ``{"psnr_before", "psnr_after", "ssim_before", "ssim_after", ["lpips_before",
        "lpips_after",] "num_images", "checkpoint", "refined_dir", "metrics_json",
        "epochs_run", "best_epoch", "seconds"}`` (PSNR/SSIM/LPIPS on the held-out frames).
    """
    out_dir = Path(out_dir)
    if not reuse:
        for part in STAGE_TWO_PARTS:
            path = out_dir / part
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    config = train_config or RefinerTrainConfig()
    t0 = time.perf_counter()
    train_renders, train_gt = render_stage_one(config_path, "train", out_dir / "stage1" / "train")
    eval_renders, eval_gt = render_stage_one(config_path, "eval", out_dir / "stage1" / "eval")
    release_stage_one_pipeline()
    result = train_refiner(train_renders, train_gt, out_dir / "refiner", config, show_progress=show_progress)
    assert result.checkpoint is not None
    metrics_json = out_dir / "metrics.json"
    report = evaluate_refiner(
        result.checkpoint,
        eval_renders,
        eval_gt,
        metrics_json,
        device=config.device,
        lpips=lpips,
        show_progress=show_progress,
    )
    refined_dir = out_dir / "refined"
    refine_frames(
        result.checkpoint,
        eval_renders,
        refined_dir,
        video=video,
        fps=fps,
        device=config.device,
        show_progress=show_progress,
    )
    return {
        **report["results"],
        "checkpoint": str(result.checkpoint),
        "refined_dir": str(refined_dir),
        "metrics_json": str(metrics_json),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": time.perf_counter() - t0,
    }
