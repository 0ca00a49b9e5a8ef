"""The image dataset: nerfstudio's, plus semantic labels and the face rectangle, read at the camera's size.

Two paths, one set of readers (:mod:`sahs_nerfstudio.data.frame_store`):

- training batches come from :meth:`SAHSDataset.frame_store`, every frame decoded once into compact
  tensors (see ``SAHSDataManager``);
- single images (evaluation, the viewer, ``sahs-render``) come from ``dataset[i]``: ``image``
  ([H, W, 3] float32), ``semantics`` ([H, W, 1] int8 class index, -1 = ignore) and ``face_rect``
  ([H, W, 1] bool, for the whole-image metrics).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import numpy.typing as npt
import torch
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset

from sahs_nerfstudio.data.frame_store import FrameStore, LabelSource, read_frame_labels, read_frame_rgb, rect_image

PALETTE: LabelSource = "palette"


class SAHSDataset(InputDataset):
    """Frames of one split at their cameras' resolution (``downscale_factor`` / ``camera_res_scale_factor``)."""

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.label_paths = self.metadata.get("label_paths", [])
        self.label_sources = self.metadata.get("label_sources", [])
        self.face_rects: torch.Tensor = self.metadata["face_rects"]

    def image_size(self, idx: int) -> Tuple[int, int]:
        """(width, height) frame ``idx`` is read at: its camera's."""
        cam = self.cameras
        return int(cam.width[idx, 0]), int(cam.height[idx, 0])

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        return read_frame_rgb(self.image_filenames[image_idx], self.image_size(image_idx), f"frames[{image_idx}] image")

    def get_metadata(self, data: Dict) -> Dict:
        idx = data["image_idx"]
        width, height = self.image_size(idx)
        out: Dict[str, torch.Tensor] = {}
        path = self.label_paths[idx] if idx < len(self.label_paths) else None
        if path is not None:
            labels, _ = read_frame_labels(path, self.label_sources[idx], (width, height))
            out["semantics"] = torch.from_numpy(labels)[..., None]
        out["face_rect"] = rect_image(self.face_rects[idx].float(), height, width)
        return out

    def frame_store(self, workers: int = 2) -> FrameStore:
        """Every frame of the split decoded once into a compact cache (all frames share the first's size)."""
        sizes = {self.image_size(k) for k in range(len(self))}
        if len(sizes) != 1:
            raise ValueError(f"frames of one split must share one size for the cache, found {sorted(sizes)}")
        sources: List[LabelSource] = list(self.label_sources) if self.label_sources else [PALETTE] * len(self)
        store = FrameStore.fill(
            self.image_filenames,
            [self.label_paths[k] if k < len(self.label_paths) else None for k in range(len(self))],
            sources,
            self.face_rects,
            sizes.pop(),
            workers=workers,
        )
        return store
