"""The held-out split, scored identically for every row with :mod:`sahs_nerfstudio.utils.metrics`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset
from sahs_nerfstudio.data.semantics import MOUTH_INTERIOR
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
        # Mouth open = the ground truth shows mouth-interior pixels (teeth / tongue / the dark inside).
        self.mouth_open = [labels is not None and bool((labels == MOUTH_INTERIOR).any()) for labels in self.labels]
        self.device = device
        self.lpips = make_lpips(device)

    def __len__(self) -> int:
        return len(self.images)

    def _indices(self, num_frames: int | None) -> list[int]:
        """``num_frames`` evenly spaced frames, first and last included (None: all)."""
        count = len(self) if num_frames is None else min(num_frames, len(self))
        return sorted({round(k * (len(self) - 1) / max(count - 1, 1)) for k in range(count)})

    def evaluate(self, model: Any, num_frames: int | None = None, subset: int | None = None) -> dict[str, float]:
        """Mean metrics over ``num_frames`` evenly spaced held-out frames (None: all), and the render FPS.
        ``mouth_open_psnr`` / ``mouth_closed_psnr``: the mouth PSNR over the frames with / without the mouth open
        (absent when there are none). ``subset_psnr``: the PSNR over the ``subset`` frames a ``num_frames=subset``
        evaluation scores, so that a curve of few-frame readings can end on a comparable point."""
        indices = self._indices(num_frames)
        subset_indices = set(self._indices(subset))
        subset_psnr: list[float] = []
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
            if "mouth_psnr" in frame:
                frame["mouth_open_psnr" if self.mouth_open[i] else "mouth_closed_psnr"] = frame["mouth_psnr"]
            for name, value in frame.items():
                scores.setdefault(name, []).append(value)
            if i in subset_indices:
                subset_psnr.append(frame["psnr"])
        model.train()
        result = {name: sum(v) / len(v) for name, v in scores.items()}
        if subset_psnr:
            result["subset_psnr"] = sum(subset_psnr) / len(subset_psnr)
        result["render_fps"] = len(indices) / max(render_time, 1e-9)
        result["num_frames"] = len(indices)
        return result
