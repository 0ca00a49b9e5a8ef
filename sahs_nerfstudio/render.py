"""Rendering a dataset split of a trained run: frames, metrics and an mp4, in one pass."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sahs_nerfstudio.utils.video import write_video


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def render_split_video(
    config_path: Path,
    video: Optional[Path],
    split: str = "test",
    side_by_side: bool = True,
    max_frames: Optional[int] = None,
    fps: float = 25.0,
) -> Dict[str, float]:
    """Render every frame of ``split`` with its own driving code and camera; return mean metrics.

    With ``side_by_side`` each video frame is render | ground truth | semantics.
    """
    _, pipeline, _, _ = eval_setup(config_path, test_mode="test" if split == "test" else "val")
    dataset = pipeline.datamanager.eval_dataset if split != "train" else pipeline.datamanager.train_dataset
    model = pipeline.model
    model.eval()
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    sums: Dict[str, List[float]] = defaultdict(list)
    frames: List[np.ndarray] = []
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]rendering {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}  {task.fields[fps]:.2f} frames/s"),
        TimeRemainingColumn(),
        console=CONSOLE,
    ) as progress:
        task = progress.add_task(split, total=count, fps=0.0)
        for i in range(count):
            camera = dataset.cameras[i : i + 1].to(model.device)
            outputs = model.get_outputs_for_camera(camera)
            batch = dataset[i]
            metrics, _ = model.get_image_metrics_and_images(outputs, batch)
            for key, value in metrics.items():
                sums[key].append(float(value))
            parts = [outputs["rgb"]]
            if side_by_side:
                parts.append(batch["image"][..., :3].to(outputs["rgb"].device))
                if "semantics" in outputs:
                    parts.append(outputs["semantics"])
            frames.append(to_uint8(torch.cat(parts, dim=1)))
            progress.update(task, advance=1, fps=(i + 1) / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    result = {key: float(np.nanmean(values)) for key, values in sums.items()}
    result["render_fps"] = count / elapsed
    result["num_frames"] = count
    if video is not None:
        info = write_video(video, _iterate(frames), fps=fps)
        CONSOLE.print(f"wrote {info.num_frames} frames ({info.width}x{info.height}) to {video}")
    return result


def _iterate(frames: List[np.ndarray]) -> Iterator[np.ndarray]:
    yield from frames
