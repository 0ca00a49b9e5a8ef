"""``sahs-data`` on files the generator wrote: rays, conditioning, labels, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.frame_store import read_labels
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.sahs_dataset import SAHSDataset
from sahs_nerfstudio.data.semantics import IGNORE_LABEL
from sahs_nerfstudio.errors import FormatError

# ---------------------------------------------------------------------------------------------
# Plain references: the original loaders' ray formulas and palette, written out independently.

PALETTE_BGR = [
    (0, 0, 0),
    (204, 0, 0),
    (76, 153, 0),
    (204, 204, 0),
    (51, 51, 255),
    (0, 255, 255),
    (102, 51, 0),
    (102, 204, 0),
    (255, 255, 0),
    (0, 0, 204),
    (255, 153, 51),
    (0, 204, 0),
]


def nerface_reference_rays(H, W, intrinsics, c2w):
    fx, fy, cx, cy = intrinsics
    i, j = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64), indexing="xy")
    dirs = np.stack([(i - W * cx) / fx, -(j - H * cy) / fy, -np.ones_like(i)], -1)
    rays_d = np.sum(dirs[..., None, :] * c2w[:3, :3], -1)
    return np.broadcast_to(c2w[:3, 3], rays_d.shape), rays_d


def adnerf_reference_rays(H, W, focal, cx, cy, c2w):
    i, j = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64), indexing="xy")
    dirs = np.stack([(i - cx) / focal, -(j - cy) / focal, -np.ones_like(i)], -1)
    rays_d = np.sum(dirs[..., None, :] * c2w[:3, :3], -1)
    return np.broadcast_to(c2w[:3, 3], rays_d.shape), rays_d


def reference_labels(path: Path) -> np.ndarray:
    bgr = np.asarray(Image.open(path).convert("RGB"))[..., ::-1]
    out = np.full(bgr.shape[:2], -1)
    for idx, colour in enumerate(PALETTE_BGR):
        out[np.all(bgr == np.array(colour), axis=-1)] = idx
    return out


def parse(root: Path, split: str = "train", **kw):
    return SAHSDataParserConfig(data=root, **kw).setup().get_dataparser_outputs(split=split)


def _normalised(d):
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------


def test_nerface_rays_match_original_loader(subject_nonsquare):
    root = subject_nonsquare / "nerface"
    meta = json.loads((root / "transforms_train.json").read_text())
    assert meta["intrinsics"][0] < 0, "the synthetic NeRFace data must exercise negative fx"
    out = parse(root)
    h, w = int(out.cameras.height[0]), int(out.cameras.width[0])
    assert (w, h) == (48, 40)
    for k in (0, 7, len(meta["frames"]) - 1):
        c2w = np.array(meta["frames"][k]["transform_matrix"])
        ref_o, ref_d = nerface_reference_rays(h, w, meta["intrinsics"], c2w)
        rays = out.cameras.generate_rays(camera_indices=k, keep_shape=True)
        np.testing.assert_allclose(rays.origins.numpy(), ref_o, atol=1e-5)
        np.testing.assert_allclose(rays.directions.numpy(), _normalised(ref_d), atol=1e-5)


def test_adnerf_rays_match_original_loader(subject_nonsquare):
    root = subject_nonsquare / "adnerf"
    meta = json.loads((root / "transforms_train.json").read_text())
    out = parse(root)
    h, w = int(out.cameras.height[0]), int(out.cameras.width[0])
    assert (w, h) == (48, 40)
    for k in (0, 5):
        c2w = np.array(meta["frames"][k]["transform_matrix"])
        ref_o, ref_d = adnerf_reference_rays(h, w, meta["focal_len"], meta["cx"], meta["cy"], c2w)
        rays = out.cameras.generate_rays(camera_indices=k, keep_shape=True)
        np.testing.assert_allclose(rays.origins.numpy(), ref_o, atol=1e-5)
        np.testing.assert_allclose(rays.directions.numpy(), _normalised(ref_d), atol=1e-5)


def test_layout_detection_and_splits(subject_nonsquare):
    nerface = SAHSDataParserConfig(data=subject_nonsquare / "nerface").setup()
    adnerf = SAHSDataParserConfig(data=subject_nonsquare / "adnerf").setup()
    assert nerface.layout() == "nerface" and adnerf.layout() == "adnerf"
    n_test = len(json.loads((subject_nonsquare / "nerface" / "transforms_test.json").read_text())["frames"])
    assert len(parse(subject_nonsquare / "nerface", "test").image_filenames) == n_test
    # AD-NeRF has no test split: ns-eval's "test" is AD-NeRF's val (the last 1/11 of the frames).
    val = json.loads((subject_nonsquare / "adnerf" / "transforms_val.json").read_text())["frames"]
    test_out = parse(subject_nonsquare / "adnerf", "test")
    assert [p.stem for p in test_out.image_filenames] == [str(f["img_id"]) for f in val]
    assert test_out.metadata["near"] < test_out.metadata["far"]


def test_expression_conditioning_equals_json(subject_nonsquare):
    root = subject_nonsquare / "nerface"
    for split in ("train", "test"):
        meta = json.loads((root / f"transforms_{split}.json").read_text())
        out = parse(root, split)
        expected = torch.tensor([f["expression"] for f in meta["frames"]], dtype=torch.float32)
        assert out.cameras.metadata["driver"].shape == (len(meta["frames"]), 76)
        assert torch.allclose(out.cameras.metadata["driver"], expected)
        assert out.metadata["driver_kind"] == "expression"
        # times run through the split so the viewer's slider and ns-render spiral move through it
        times = out.cameras.times[:, 0]
        assert times[0] == 0 and times[-1] == 1 and bool((times[1:] > times[:-1]).all())


def test_audio_conditioning_equals_aud_npy_with_clamping(subject_copy):
    root = subject_copy / "adnerf"
    aud = np.load(root / "aud.npy")
    assert aud.ndim == 3 and aud.shape[1:] == (16, 29)
    meta = json.loads((root / "transforms_train.json").read_text())
    # A trailing frame a few windows past the end: the original loader clamps it (far past is an error,
    # tests/test_robustness.py).
    meta["frames"][-1]["aud_id"] = aud.shape[0] + 2
    (root / "transforms_train.json").write_text(json.dumps(meta))
    out = parse(root)
    drivers = out.cameras.metadata["driver"]
    for k, fr in enumerate(meta["frames"]):
        idx = min(fr["aud_id"], aud.shape[0] - 1)
        assert torch.allclose(drivers[k], torch.from_numpy(aud[idx].reshape(-1)))
        assert out.cameras.metadata["audio_index"][k, 0] == idx
    assert out.metadata["audio_window"] == (16, 29)


def test_alternative_audio_features_by_option(subject_copy):
    root = subject_copy / "adnerf"
    n = np.load(root / "aud.npy").shape[0]
    np.save(root / "aud_eo.npy", np.random.default_rng(0).normal(size=(n, 16, 44)).astype(np.float32))
    out = parse(root, audio_features="aud_eo.npy")
    assert out.cameras.metadata["driver"].shape[1] == 16 * 44
    assert out.metadata["audio_window"] == (16, 44)


def test_labels_decode_to_the_right_classes(subject_nonsquare):
    for layout in ("nerface", "adnerf"):
        out = parse(subject_nonsquare / layout)
        dataset = SAHSDataset(out)
        for k in (0, 3):
            data = dataset[k]
            ref = reference_labels(out.metadata["label_paths"][k])
            assert data["semantics"].shape == (40, 48, 1)
            np.testing.assert_array_equal(data["semantics"][..., 0].numpy(), ref)
        all_labels = torch.cat([dataset[k]["semantics"].flatten() for k in range(len(dataset))])
        # every class of the palette is present (glasses on); at 48x40 the open mouth interior is only a
        # few pixels of a few frames, so it is checked at full size in test_synthetic.py instead
        assert set(torch.unique(all_labels).tolist()) >= set(range(12)) - {7}


def test_adnerf_parsing_fallback_maps_groups(subject_copy):
    root = subject_copy / "adnerf"
    for mask in (root / "com_imgs" / "masks").glob("*.png"):
        mask.unlink()
    out = parse(root)
    assert out.metadata["label_sources"][0] == "adnerf_parsing"
    labels = SAHSDataset(out)[0]["semantics"][..., 0]
    parsing = np.asarray(Image.open(root / "parsing" / "0.png").convert("RGB"))[..., ::-1]  # to B,G,R
    head = np.all(parsing == (255, 0, 0), -1)
    torso = np.all(parsing == (0, 0, 255), -1)
    bg = np.all(parsing == (255, 255, 255), -1)
    assert (labels.numpy()[head] == 1).all() and (labels.numpy()[torso] == 11).all()
    assert (labels.numpy()[bg] == 0).all() and head.any() and torso.any()


def test_jpeg_noise_in_masks_is_ignored_and_counted(subject_copy):
    root = subject_copy / "nerface"
    mask_path = root / "train" / "masks" / "f_0000.png"
    rgb = np.asarray(Image.open(mask_path).convert("RGB")).copy()
    clean = read_labels(mask_path, "palette").labels
    rgb[0, :5] = (128, 128, 128)  # far from every palette colour
    rgb[1, :5] = np.clip(rgb[1, :5].astype(int) + (3, -2, 4), 0, 255)  # JPEG-like noise: still its class
    Image.fromarray(rgb).save(mask_path)
    out = parse(root)
    assert read_labels(mask_path, "palette").num_unmatched == 5
    labels = SAHSDataset(out)[0]["semantics"][..., 0]
    assert (labels[0, :5] == IGNORE_LABEL).all() and (labels[1:] >= 0).all()
    assert (labels[1, :5].numpy() == clean[1, :5]).all()


def test_face_rect_is_per_pixel(subject_nonsquare):
    out = parse(subject_nonsquare / "adnerf")
    meta = json.loads((subject_nonsquare / "adnerf" / "transforms_train.json").read_text())
    x, y, w, h = meta["frames"][0]["face_rect"]
    rect = SAHSDataset(out)[0]["face_rect"][..., 0]
    assert rect[y + h // 2, x + w // 2] and not rect[0, 0]
    assert abs(int(rect.sum()) - w * h) <= 2 * (w + h) + 4


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and the field.


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def test_missing_image(subject_copy):
    root = subject_copy / "nerface"
    (root / "train" / "f_0004.png").unlink()
    with pytest.raises(FormatError, match=r"f_0004\.png.*frames\[4\] image.*no such file"):
        parse(root)


def test_unreadable_image(subject_copy):
    root = subject_copy / "nerface"
    (root / "train" / "f_0002.png").write_bytes(b"not a png at all")
    with pytest.raises(FormatError, match=r"f_0002\.png.*readable image"):
        parse(root)


def test_expression_length_mismatch(subject_copy):
    path = subject_copy / "nerface" / "transforms_train.json"
    _edit_json(path, lambda m: m["frames"][3].__setitem__("expression", m["frames"][3]["expression"][:70]))
    with pytest.raises(FormatError, match=r"transforms_train\.json.*frames\[3\]\.expression.*76 values.*70 values"):
        parse(subject_copy / "nerface")


def test_audio_of_wrong_rank(subject_copy):
    root = subject_copy / "adnerf"
    np.save(root / "aud.npy", np.zeros((10, 29), dtype=np.float32))
    with pytest.raises(FormatError, match=r"aud\.npy.*rank 3.*\(10, 29\)"):
        parse(root)


@pytest.mark.parametrize(
    "matrix,found",
    [
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "NaN"),
        ([[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]], "rigid"),
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "4x4"),
    ],
)
def test_bad_transform_matrix(subject_copy, matrix, found):
    path = subject_copy / "adnerf" / "transforms_train.json"
    text = json.dumps(matrix).replace("NaN", "NaN")
    _edit_json(path, lambda m: m["frames"][2].__setitem__("transform_matrix", json.loads(text)))
    with pytest.raises(FormatError, match=rf"transforms_train\.json.*frames\[2\]\.transform_matrix.*{found}"):
        parse(subject_copy / "adnerf")


def test_mask_of_other_size(subject_copy):
    root = subject_copy / "nerface"
    mask = root / "train" / "masks" / "f_0001.png"
    Image.open(mask).resize((24, 20), Image.Resampling.NEAREST).save(mask)
    with pytest.raises(FormatError, match=r"f_0001\.png.*mask size.*48x40.*24x20"):
        parse(root)


def test_missing_folder(tmp_path):
    with pytest.raises(FormatError, match="no such"):
        parse(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Inside nerfstudio


def test_registered_among_ns_train_dataparsers():
    out = subprocess.run(
        [sys.executable, "-m", "nerfstudio.scripts.train", "nerfacto", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sahs-data" in out.stdout


@pytest.mark.parametrize("layout", ["nerface", "adnerf"])
def test_vanilla_datamanager_batch_carries_per_frame_codes(subject_nonsquare, layout):
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig

    config = VanillaDataManagerConfig(
        _target=VanillaDataManager[SAHSDataset],
        dataparser=SAHSDataParserConfig(data=subject_nonsquare / layout),
        train_num_rays_per_batch=256,
    )
    dm = config.setup(device="cpu", test_mode="val")
    assert isinstance(dm.train_dataset, SAHSDataset)
    ray_bundle, batch = dm.next_train(0)
    image_idx = batch["indices"][:, 0].long()
    drivers = dm.train_dataset.cameras.metadata["driver"]
    assert ray_bundle.metadata["driver"].shape == (256, drivers.shape[1])
    assert torch.equal(ray_bundle.metadata["driver"], drivers[image_idx])
    assert torch.equal(ray_bundle.metadata["pose"], dm.train_dataset.cameras.metadata["pose"][image_idx])
    assert len(torch.unique(image_idx)) > 1, "a batch should mix frames"
    assert batch["semantics"].shape == (256, 1)


def test_write_read_round_trip(tmp_path):
    split = formats.NeRFaceSplit(
        camera_angle_x=0.7,
        intrinsics=(-100.0, 100.0, 0.5, 0.5),
        frames=[formats.NeRFaceFrame("./train/f_0000", np.eye(4), np.arange(76.0), (0.1, 0.9, 0.2, 0.8))],
    )
    formats.write_nerface_split(tmp_path, "train", split)
    back = formats.read_nerface_split(tmp_path, "train")
    assert back.intrinsics == split.intrinsics and back.frames[0].bbox == (0.1, 0.9, 0.2, 0.8)
    np.testing.assert_array_equal(back.frames[0].expression, np.arange(76.0))
