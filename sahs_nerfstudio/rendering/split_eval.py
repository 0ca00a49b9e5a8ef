"""Every frame of a dataset split with its own driving code and camera: mean metrics, optionally an mp4."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.rendering.common import render_progress, sahs_model, split_dataset
from sahs_nerfstudio.utils.face_landmarks import LipSyncScorer
from sahs_nerfstudio.utils.images import to_uint8
from sahs_nerfstudio.utils.metrics import MouthState, mouth_state, mouth_state_means
from sahs_nerfstudio.utils.run_loader import load_run
from sahs_nerfstudio.utils.video import write_video


def render_split_video(
    config_path: Path,
    video: Path | None,
    split: str = "test",
    side_by_side: bool = True,
    max_frames: int | None = None,
    fps: float = 25.0,
) -> dict[str, float]:
    """Render every frame of ``split`` with its own driving code and camera; return mean metrics.

    The metrics are the model's own (:meth:`SAHSModel.get_image_metrics_and_images`), averaged over
    frames, plus ``render_fps``, ``num_frames`` and the mouth PSNR of the frames whose ground truth shows the mouth
    open / closed (:func:`~sahs_nerfstudio.utils.metrics.mouth_state_means`). With ``side_by_side`` each video frame is
    render | ground truth | semantics.
    """
    _, pipeline, _, _ = load_run(config_path, test_mode="test" if split == "test" else "val")
    dataset = split_dataset(pipeline, split)
    model = sahs_model(pipeline)
    model.eval()
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    sums: dict[str, list[float]] = defaultdict(list)
    frames: list[np.ndarray] = []
    per_frame: list[dict[str, float]] = []
    states: list[MouthState | None] = []
    lip_sync = LipSyncScorer()
    render_seconds = 0.0  # the model's rendering alone: not loading, scoring or encoding
    with render_progress() as progress:
        task = progress.add_task(split, total=count, fps=0.0)
        for i in range(count):
            camera = dataset.cameras[i : i + 1].to(model.device)
            tick = time.perf_counter()
            outputs = model.get_outputs_for_camera(camera)
            render_seconds += time.perf_counter() - tick
            batch = dataset[i]
            metrics, _ = model.get_image_metrics_and_images(outputs, batch)
            for key, value in metrics.items():
                sums[key].append(float(value))
            per_frame.append(metrics)
            lip_sync.add(outputs["rgb"], batch["image"])
            states.append(mouth_state(batch["semantics"][..., 0]) if "semantics" in batch else None)
            parts = [outputs["rgb"]]
            if side_by_side:
                parts.append(batch["image"][..., :3].to(outputs["rgb"].device))
                if "semantics" in outputs:
                    parts.append(outputs["semantics"])
            frames.append(to_uint8(torch.cat(parts, dim=1)))
            progress.update(task, advance=1, fps=(i + 1) / max(render_seconds, 1e-9))
    result = {key: float(np.nanmean(values)) for key, values in sums.items()}
    result.update(mouth_state_means(per_frame, states))  # mouth PSNR with the mouth open / closed
    result.update(lip_sync.summary())  # LMD over the frames where dlib finds both faces
    result["render_fps"] = count / max(render_seconds, 1e-9)
    result["num_frames"] = count
    if video is not None:
        info = write_video(video, iter(frames), fps=fps)
        CONSOLE.print(f"wrote {info.num_frames} frames ({info.width}x{info.height}) to {video}")
    return result
