"""The image dataset: nerfstudio's, plus per-pixel semantic labels and the face rectangle."""

from __future__ import annotations

from typing import Dict

import torch
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset

from sahs_nerfstudio.data.sahs_dataparser import load_label_tensor


class SAHSDataset(InputDataset):
    """Adds ``semantics`` ([H, W, 1] class index, -1 = ignore) and ``face_rect`` ([H, W, 1] bool).

    Both are per pixel, so nerfstudio's pixel sampler gathers them for every sampled ray.
    """

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.label_paths = self.metadata.get("label_paths", [])
        self.label_sources = self.metadata.get("label_sources", [])
        self.face_rects: torch.Tensor = self.metadata["face_rects"]

    def get_metadata(self, data: Dict) -> Dict:
        idx = data["image_idx"]
        height, width = data["image"].shape[:2]
        out: Dict[str, torch.Tensor] = {}
        path = self.label_paths[idx] if idx < len(self.label_paths) else None
        if path is not None:
            out["semantics"] = load_label_tensor(path, self.label_sources[idx], self.scale_factor)
        x0, y0, x1, y1 = self.face_rects[idx].tolist()
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
        out["face_rect"] = inside[..., None]
        return out
