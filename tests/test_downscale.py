"""``downscale_factor``: NeRFace's ``half_res`` for both layouts, intrinsics and every image kind alike."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.frame_store import read_labels
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset


def _outputs(root, factor: int, split: str = "train"):
    return SAHSDataParserConfig(data=root, downscale_factor=factor).setup().get_dataparser_outputs(split)


def test_nerface_half_res_as_the_original(subject_nonsquare):
    root = subject_nonsquare / "nerface"
    meta = formats.read_nerface_split(root, "train")
    fx, fy, cxf, cyf = meta.intrinsics
    full = _outputs(root, 1)
    half = _outputs(root, 2)
    w, h = int(full.cameras.width[0, 0]), int(full.cameras.height[0, 0])
    cams = half.cameras
    assert (int(cams.width[0, 0]), int(cams.height[0, 0])) == (w // 2, h // 2)
    # NeRFace's half_res: fx, fy halved, cx, cy stay fractions of the new size (integer-pixel rays, +0.5 here).
    assert float(cams.fx[0, 0]) == pytest.approx(fx / 2) and float(cams.fy[0, 0]) == pytest.approx(fy / 2)
    assert float(cams.cx[0, 0]) == pytest.approx(cxf * (w // 2) + 0.5)
    assert float(cams.cy[0, 0]) == pytest.approx(cyf * (h // 2) + 0.5)

    dataset = SAHSDataset(half)
    item = dataset[0]
    original = formats.read_rgb(full.image_filenames[0])
    expected = cv2.resize(original, dsize=(w // 2, h // 2), interpolation=cv2.INTER_AREA)
    assert item["image"].shape == (h // 2, w // 2, 3)
    assert torch.equal((item["image"] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    labels = read_labels(formats.nerface_mask_path(root, meta.frames[0].file_path), "palette").labels
    assert torch.equal(item["semantics"][..., 0].long(), torch.from_numpy(labels[::2, ::2]).long())
    assert item["face_rect"].shape == (h // 2, w // 2, 1)
    assert tuple(half.metadata["background"].shape) == (h // 2, w // 2, 3)
    # The cache reads the same pixels as the per-image path.
    store = dataset.frame_store(workers=1)
    assert torch.equal(store.images[0], torch.from_numpy(expected))
    assert store.labels is not None and torch.equal(store.labels[0], item["semantics"])


def test_adnerf_downscaled_rays_follow_the_pixel_grid(subject_nonsquare):
    root = subject_nonsquare / "adnerf"
    meta = formats.read_adnerf_split(root, "train")
    half = _outputs(root, 2)
    cams = half.cameras
    c2w = cams.camera_to_worlds[0]
    pixels = torch.tensor([[0, 0], [3, 7], [int(cams.height[0, 0]) - 1, int(cams.width[0, 0]) - 1]])
    rays = cams.generate_rays(camera_indices=torch.zeros(3, 1, dtype=torch.long), coords=pixels.float() + 0.5)
    # Downscaled pixel (j', i') covers full-resolution pixels 2i'..2i'+1: its centre is full-res coordinate 2i'+0.5.
    i = 2 * pixels[:, 1].double() + 0.5
    j = 2 * pixels[:, 0].double() + 0.5
    f = meta.focal_len
    d = torch.stack([(i - meta.cx) / f, -(j - meta.cy) / f, -torch.ones_like(i)], dim=-1) @ c2w[:3, :3].double().T
    assert torch.allclose(rays.directions.double(), d / d.norm(dim=-1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("factor", [0, -2])
def test_bad_downscale_factor_is_refused(subject_nonsquare, factor):
    with pytest.raises(formats.FormatError, match="downscale_factor"):
        _outputs(subject_nonsquare / "nerface", factor)


def test_downscale_one_reads_the_original_pixels(subject_nonsquare):
    out = _outputs(subject_nonsquare / "nerface", 1)
    image = SAHSDataset(out)[0]["image"]
    assert np.array_equal((image.numpy() * 255).round().astype(np.uint8), formats.read_rgb(out.image_filenames[0]))
