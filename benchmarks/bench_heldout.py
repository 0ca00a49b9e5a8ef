"""The held-out split, scored identically for every row with :mod:`sahs_nerfstudio.utils.metrics`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset
from sahs_nerfstudio.utils.metrics import image_metrics, make_lpips


def sync(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class HeldOut:
    """The held-out split with ground-truth images and labels, scored identically for every row."""

    def __init__(self, data: Path, device: str) -> None:
        outputs = SAHSDataParserConfig(data=data).setup().get_dataparser_outputs("test")
        dataset = SAHSDataset(outputs)
        self.cameras = dataset.cameras.to(device)
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor | None] = []
        for i in range(len(dataset)):
            item = dataset[i]
            self.images.append(item["image"][..., :3].to(device))
            self.labels.append(item["semantics"][..., 0].long().to(device) if "semantics" in item else None)
        self.device = device
        self.lpips = make_lpips(device)

    def __len__(self) -> int:
        return len(self.images)

    def evaluate(self, model: Any, num_frames: int | None = None) -> dict[str, float]:
        """Mean metrics over ``num_frames`` evenly spaced held-out frames (None: all), and the render FPS."""
        count = len(self) if num_frames is None else min(num_frames, len(self))
        indices = sorted({round(k * (len(self) - 1) / max(count - 1, 1)) for k in range(count)})
        scores: dict[str, list[float]] = {}
        render_time = 0.0
        model.eval()
        for i in indices:
            camera = self.cameras[i : i + 1]
            sync(self.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(camera)
            sync(self.device)
            render_time += time.perf_counter() - t0
            key = "rgb" if "rgb" in outputs else "rgb_fine"  # vanilla NeRF (dnerf) renders rgb_coarse / rgb_fine
            rgb = outputs[key][..., :3].clamp(0, 1).float()
            probs = outputs.get("semantics_probs")
            pred_labels = probs.argmax(dim=-1) if probs is not None else None
            frame = image_metrics(rgb, self.images[i], self.labels[i], pred_labels, lpips=self.lpips)
            for name, value in frame.items():
                scores.setdefault(name, []).append(value)
        model.train()
        result = {name: sum(v) / len(v) for name, v in scores.items()}
        result["render_fps"] = len(indices) / max(render_time, 1e-9)
        result["num_frames"] = len(indices)
        return result
