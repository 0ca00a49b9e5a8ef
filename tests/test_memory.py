"""Compact, bounded frames in memory (``SAHSDataManager``): 4 bytes per pixel, batches unchanged in value.

The reference is nerfstudio's own path on the same files (``VanillaDataManager`` with its
``CacheDataloader``: float32 images and a per-pixel face-rectangle image); both draw their rays with the
same semantic sampler and seed, so every ray, colour, label and face flag must agree exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig

from sahs_nerfstudio.data.datamanager import SAHSDataManager, SAHSDataManagerConfig
from sahs_nerfstudio.data.frame_store import BYTES_PER_PIXEL
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset
from sahs_nerfstudio.data.semantics import NUM_CLASSES
from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSamplerConfig

RAYS = 512


def _config(cls, root, face_rect_fraction=None):
    kwargs: dict[str, Any] = dict(
        dataparser=SAHSDataParserConfig(data=root),
        pixel_sampler=SemanticPixelSamplerConfig(face_rect_fraction=face_rect_fraction),
        train_num_rays_per_batch=RAYS,
        eval_num_rays_per_batch=RAYS,
    )
    if cls is SAHSDataManagerConfig:
        return SAHSDataManagerConfig(**kwargs)
    return VanillaDataManagerConfig(_target=VanillaDataManager[SAHSDataset], **kwargs)


@pytest.mark.parametrize("layout", ["nerface", "adnerf"])
def test_cache_holds_at_most_4_bytes_per_pixel(subject_nonsquare, layout):
    dm = _config(SAHSDataManagerConfig, subject_nonsquare / layout).setup(device="cpu", test_mode="val")
    assert isinstance(dm, SAHSDataManager)
    store = dm.train_store
    n, h, w = store.images.shape[:3]
    assert n == len(dm.train_dataset) and store.labels is not None
    # Every per-frame tensor the data manager holds, counted in bytes.
    per_pixel = store.nbytes() / (n * h * w)
    assert per_pixel <= BYTES_PER_PIXEL + 16 / (h * w)  # + one (x0, y0, x1, y1) float32 rectangle per frame
    assert store.images.dtype == torch.uint8 and store.labels.dtype == torch.int8
    assert store.images.device.type == "cpu" and store.labels.device.type == "cpu"
    batch = next(dm.iter_train_image_dataloader)
    assert batch["image"].data_ptr() == store.images.data_ptr()  # a view of the cache, not a copy
    assert "face_rect" not in batch and batch["face_rects"].shape == (n, 4)
    # nerfstudio's own cache is not built alongside.
    assert not hasattr(dm, "train_image_dataloader")


@pytest.mark.parametrize("layout,fraction", [("nerface", None), ("adnerf", 0.9)])
def test_training_batches_equal_the_float32_path(subject_nonsquare, layout, fraction):
    root = subject_nonsquare / layout
    compact = _config(SAHSDataManagerConfig, root, fraction).setup(device="cpu", test_mode="val")
    reference = _config(VanillaDataManagerConfig, root, fraction).setup(device="cpu", test_mode="val")
    cached = reference.train_image_dataloader.cached_collated_batch
    assert cached["image"].dtype == torch.float32 and cached["face_rect"].shape[:3] == cached["image"].shape[:3]
    # nerfstudio caches the frames in a random order: put them in file order (same values) so that the same
    # random draws address the same frames in both paths.
    order = torch.argsort(torch.as_tensor(cached["image_idx"]))
    for key, value in list(cached.items()):
        cached[key] = value[order]
    probs = torch.linspace(1.0, 3.0, NUM_CLASSES)  # non-uniform: draws depend on every label
    for dm in (compact, reference):
        dm.train_pixel_sampler.set_class_probabilities(probs)
    for step in range(3):
        torch.manual_seed(step)
        rays_c, batch_c = compact.next_train(step)
        torch.manual_seed(step)
        rays_r, batch_r = reference.next_train(step)
        assert set(batch_c) == set(batch_r)
        for key in batch_r:
            assert batch_c[key].dtype == batch_r[key].dtype, key
            assert torch.equal(batch_c[key], batch_r[key]), key
        assert torch.equal(rays_c.origins, rays_r.origins) and torch.equal(rays_c.directions, rays_r.directions)
    if fraction is not None:
        assert float(batch_c["face_rect"].float().mean()) == pytest.approx(fraction, abs=0.02)


def test_eval_images_read_the_same_pixels(subject_nonsquare):
    dm = _config(SAHSDataManagerConfig, subject_nonsquare / "nerface").setup(device="cpu", test_mode="val")
    _, batch = dm.next_eval_image(0)
    k = int(batch["image_idx"])
    assert torch.equal((batch["image"] * 255).round().to(torch.uint8), dm.eval_store.images[k])
    assert torch.equal(batch["semantics"], dm.eval_store.labels[k])  # type: ignore[index]
