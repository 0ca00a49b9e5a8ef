"""nerfstudio's VanillaDataManager with a compact, bounded frame cache (:mod:`~sahs_nerfstudio.data.frame_store`).

What changes against nerfstudio's ``CacheDataloader`` path, and why (measured at 512x512):

- the cache is uint8 images + int8 labels + one rectangle per frame (4 B/pixel instead of 20), filled
  in place rather than built as a list of per-frame dicts and then stacked (nerfstudio's loader holds
  both at its peak, and the allocator keeps the list's pages);
- each image and mask is decoded once;
- the cache stays on the CPU: the pixel sampler draws there and only the sampled rays (their float32
  colour, int64 label and face-rectangle flag) move to the model's device. nerfstudio moves every
  per-pixel tensor but the image to the GPU (the labels of 5,500 frames alone are ~12 GiB as int64).

Evaluation batches of rays use the same cache (of the eval split); whole eval images and the viewer
read single frames through the same readers (``SAHSDataset``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Type

import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader, RandIndicesEvalDataloader
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sahs_nerfstudio.data.frame_store import FrameStore
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset


@dataclass
class SAHSDataManagerConfig(VanillaDataManagerConfig):
    """nerfstudio's data manager options, with frames cached compactly (see the module docstring)."""

    _target: Type = field(default_factory=lambda: SAHSDataManager)
    cache_workers: int = 2
    """Threads decoding frames into the cache at start-up."""


class StoreBatches:
    """Image batches from a :class:`FrameStore`: every frame (views, no copy), or a random subset of
    ``num_images`` frames re-drawn every ``repeat`` batches (nerfstudio's ``*_num_images_to_sample_from``)."""

    def __init__(self, store: FrameStore, num_images: int = -1, repeat: int = -1) -> None:
        self.store = store
        self.num_images = num_images
        self.repeat = repeat
        self._count = 0
        self._current: Optional[Dict[str, Tensor]] = None

    def __iter__(self) -> Iterator[Dict[str, Tensor]]:
        return self

    def __next__(self) -> Dict[str, Tensor]:
        n = len(self.store)
        if self.num_images < 0 or self.num_images >= n:
            return self.store.batch()
        if self._current is None or (self.repeat > 0 and self._count % self.repeat == 0):
            indices = torch.tensor(sorted(random.sample(range(n), self.num_images)), dtype=torch.long)
            self._current = self.store.batch(indices)
        self._count += 1
        return self._current


class SAHSDataManager(VanillaDataManager[SAHSDataset]):
    """Trains and evaluates from compact frame caches that stay on the CPU."""

    config: SAHSDataManagerConfig
    train_store: FrameStore
    eval_store: FrameStore

    def _store(self, dataset: SAHSDataset, what: str) -> FrameStore:
        CONSOLE.print(f"Caching {len(dataset)} {what} frames (uint8 images, int8 labels)...")
        store = dataset.frame_store(workers=getattr(self.config, "cache_workers", 2))
        if store.num_unmatched:
            CONSOLE.print(
                f"[yellow]sahs-data: {store.num_unmatched} mask pixels of the {what} frames match no palette colour "
                "(e.g. JPEG noise); they are ignored by the semantic loss."
            )
        return store

    def setup_train(self) -> None:
        assert self.train_dataset is not None
        self.train_store = self._store(self.train_dataset, "training")
        self.iter_train_image_dataloader = StoreBatches(
            self.train_store, self.config.train_num_images_to_sample_from, self.config.train_num_times_to_repeat_images
        )
        self.train_pixel_sampler = self._get_pixel_sampler(self.train_dataset, self.config.train_num_rays_per_batch)
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras.to(self.device))

    def setup_eval(self) -> None:
        assert self.eval_dataset is not None
        self.eval_store = self._store(self.eval_dataset, "evaluation")
        self.iter_eval_image_dataloader = StoreBatches(
            self.eval_store, self.config.eval_num_images_to_sample_from, self.config.eval_num_times_to_repeat_images
        )
        self.eval_pixel_sampler = self._get_pixel_sampler(self.eval_dataset, self.config.eval_num_rays_per_batch)
        self.eval_ray_generator = RayGenerator(self.eval_dataset.cameras.to(self.device))
        self.fixed_indices_eval_dataloader = FixedIndicesEvalDataloader(
            input_dataset=self.eval_dataset, device=self.device, num_workers=self.world_size * 4
        )
        self.eval_dataloader = RandIndicesEvalDataloader(
            input_dataset=self.eval_dataset, device=self.device, num_workers=self.world_size * 4
        )
