"""Scoring the refiner: PSNR / SSIM / LPIPS of renders before and after refinement (ns-eval layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.refinement.audio import assign_audio_rows
from sahs_nerfstudio.refinement.inference import audio_windows_for, load_refiner
from sahs_nerfstudio.refinement.io import load_image, pair_frames
from sahs_nerfstudio.refinement.runtime import progress_bar
from sahs_nerfstudio.utils import metrics

METRIC_ORDER = ("psnr_before", "psnr_after", "ssim_before", "ssim_after", "lpips_before", "lpips_after")


def evaluate_refiner(
    checkpoint: Path,
    renders_dir: Path,
    gt_dir: Path,
    output_json: Path | None = None,
    audio: Path | None = None,
    device: str = "auto",
    lpips: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """PSNR / SSIM / LPIPS of the renders and of the refined renders against the ground truth.

    Refined frames are scored after rounding to 8 bit, i.e. exactly as
    :func:`~sahs_nerfstudio.refinement.inference.refine_frames` writes them. Metrics are per-image
    means (like ``ns-eval``); full frame, nothing pasted. LPIPS only where the AlexNet weights are
    already on disk (nothing is downloaded); otherwise it is skipped with one message.

    Returns (and writes to ``output_json`` if given) ``{"experiment_name", "method_name":
    "sahs-refine", "checkpoint", "results": {"psnr_before", "psnr_after", "ssim_before",
    "ssim_after", ["lpips_before", "lpips_after",] "num_images"}}``.
    """
    if output_json is not None and Path(output_json).is_dir():
        raise FormatError(output_json, "--output", "a JSON file name", "a folder")
    refiner = load_refiner(checkpoint, device)
    pairs, _ = pair_frames(renders_dir, gt_dir)
    windows = audio_windows_for(refiner, audio)
    if windows is not None:
        rows = assign_audio_rows([p.name for p in pairs], len(windows), audio or "--audio")
        for pair, row in zip(pairs, rows, strict=True):
            pair.audio_row = row
    lpips_metric = metrics.make_lpips(refiner.device) if lpips else None  # says once per process when skipped
    skip_reason = metrics.lpips_unavailable() if lpips and lpips_metric is None else None
    sums: dict[str, float] = {}
    with progress_bar(show_progress) as progress:
        task = progress.add_task("evaluating", total=len(pairs), loss="-")
        for pair in pairs:
            render = load_image(pair.render).to(refiner.device)[None]
            gt = load_image(pair.gt).to(refiner.device)[None]
            aud = None if windows is None or pair.audio_row is None else torch.from_numpy(windows[pair.audio_row])
            refined = refiner.refine(render, aud).mul(255).round().div(255)
            for tag, pred in (("before", render), ("after", refined)):
                scores = metrics.image_metrics(pred[0].permute(1, 2, 0), gt[0].permute(1, 2, 0), lpips=lpips_metric)
                for key, value in scores.items():
                    sums[f"{key}_{tag}"] = sums.get(f"{key}_{tag}", 0.0) + value
            progress.update(task, advance=1)
    results: dict[str, Any] = {k: sums[k] / len(pairs) for k in METRIC_ORDER if k in sums}
    results["num_images"] = len(pairs)
    report: dict[str, Any] = {
        "experiment_name": refiner.checkpoint.get("experiment_name", Path(checkpoint).parent.parent.name),
        "method_name": "sahs-refine",
        "checkpoint": str(checkpoint),
        "results": results,
    }
    if skip_reason is not None:
        report["lpips_skipped"] = skip_reason
    if output_json is not None:
        output_json = Path(output_json)
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(json.dumps(report, indent=2))
    return report
