"""Sampling bounds as the originals: near/far are depths along the optical axis, per ray.

Both originals sample ``o + z d`` with ``d = ((i - cx)/fx, -(j - cy)/fy, -1)`` rotated to the world and
``z = near + (far - near) t``: a sample's depth along the camera's optical axis is exactly ``z``. The
subjects here are written by the generator with a wide field of view (about 96 degrees across), where a
unit-ray reading of the same numbers would stop corner rays 25-35% short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nerfstudio.data.scene_box import SceneBox

import sahs_nerfstudio.data.synthetic.camera as synthetic_camera
from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject
from sahs_nerfstudio.presets import fast_cpu_model_config, tiny_model_config

WIDE_FOCAL_SCALE = 0.45
"""Focal = 0.45 * min(W, H): 96 degrees across a square image (the generator's default is 1.4)."""


@pytest.fixture(scope="module")
def wide_subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wide_fov")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic_camera, "FOCAL_SCALE", WIDE_FOCAL_SCALE)
        generate_subject(SyntheticConfig(output=root, width=36, height=30, num_train=12, num_val=1, seed=5))
    return root


def _corner_rays(outputs):
    """Rays of the four corner pixels (and the centre) of camera 0, with the integer pixel coordinates."""
    cams = outputs.cameras
    w, h = int(cams.width[0, 0]), int(cams.height[0, 0])
    pixels = torch.tensor([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [h // 2, w // 2]])
    # Pixel centres, as nerfstudio's RayGenerator casts them.
    coords = pixels.float() + 0.5
    rays = cams.generate_rays(camera_indices=torch.zeros(len(pixels), 1, dtype=torch.long), coords=coords)
    return rays, pixels


def _axis_depth(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Depth of world points along the camera's optical axis (the camera looks down its -z)."""
    return -((points - c2w[:3, 3]) @ c2w[:3, 2])


def _model(outputs, fast: bool):
    config = fast_cpu_model_config() if fast else tiny_model_config()
    radius = 1.0
    box = SceneBox(aabb=torch.tensor([[-radius] * 3, [radius] * 3]))
    return config.setup(scene_box=box, num_train_data=len(outputs.image_filenames), metadata=outputs.metadata)


@pytest.mark.parametrize("layout", ["nerface", "adnerf"])
def test_corner_ray_depths_equal_the_originals(wide_subject, layout):
    outputs = SAHSDataParserConfig(data=wide_subject / layout).setup().get_dataparser_outputs("train")
    near, far = outputs.metadata["near"], outputs.metadata["far"]
    model = _model(outputs, fast=False)
    model.eval()  # no stratified jitter: the bins are the originals' linspace
    rays, pixels = _corner_rays(outputs)
    rays = model.collider(rays)
    samples = model.sampler_uniform(rays)
    c2w = outputs.cameras.camera_to_worlds[0]
    starts = samples.frustums.get_start_positions()  # [R, S, 3]
    depth = _axis_depth(starts.reshape(-1, 3), c2w).reshape(starts.shape[:2])
    num = samples.frustums.starts.shape[1]
    t = torch.arange(num, dtype=torch.float64) / num
    expected = near + (far - near) * t
    assert torch.allclose(depth.double(), expected[None].expand_as(depth), atol=1e-5)
    # The far end of every ray is at depth far as well (where the background sample sits).
    ends = rays.origins + rays.directions * rays.fars
    assert torch.allclose(_axis_depth(ends, c2w), torch.full((len(pixels),), far), atol=1e-5)

    # The original's un-normalised direction of each corner pixel, from the file's own intrinsics.
    cams = outputs.cameras
    fx, fy, cx, cy = (float(v[0, 0]) for v in (cams.fx, cams.fy, cams.cx, cams.cy))
    i, j = pixels[:, 1].double(), pixels[:, 0].double()
    d_cam = torch.stack([(i - (cx - 0.5)) / fx, -(j - (cy - 0.5)) / fy, -torch.ones_like(i)], dim=-1)
    d_world = d_cam @ c2w[:3, :3].double().T
    original = rays.origins.double()[:, None] + d_world[:, None] * expected[None, :, None]
    assert torch.allclose(starts.double(), original, atol=1e-5)
    # The wide field of view matters: a unit-ray reading would end the corner rays this much short.
    corner_norm = float(d_cam[0].norm())
    assert corner_norm > 1.3


@pytest.mark.parametrize("layout", ["nerface", "adnerf"])
def test_proposal_sampler_spans_the_same_depths(wide_subject, layout):
    outputs = SAHSDataParserConfig(data=wide_subject / layout).setup().get_dataparser_outputs("train")
    near, far = outputs.metadata["near"], outputs.metadata["far"]
    model = _model(outputs, fast=True)
    model.eval()
    rays, _ = _corner_rays(outputs)
    rays = model.collider(rays)
    samples, _, samples_list = model.proposal_sampler(rays, density_fns=model.density_fns)
    c2w = outputs.cameras.camera_to_worlds[0]
    # The initial (uniform) level spans exactly [near, far] in depth on every ray; the resampled levels
    # stay inside it (a unit-ray reading would stop the corner rays near far / 1.4).
    for k, level in enumerate([*samples_list, samples]):
        f = level.frustums
        start = _axis_depth(f.get_start_positions().reshape(-1, 3), c2w).reshape(f.starts.shape[:2])
        end = _axis_depth((f.origins + f.directions * f.ends).reshape(-1, 3), c2w).reshape(f.ends.shape[:2])
        if k == 0:
            assert torch.allclose(start[:, 0], torch.full_like(start[:, 0], near), atol=1e-5)
            assert torch.allclose(end[:, -1], torch.full_like(end[:, -1], far), atol=1e-5)
        assert bool((start >= near - 1e-5).all()) and bool((end <= far + 1e-5).all())


def test_background_depth_is_the_per_ray_far_bound(wide_subject):
    outputs = SAHSDataParserConfig(data=wide_subject / "nerface").setup().get_dataparser_outputs("train")
    model = _model(outputs, fast=False)
    model.eval()
    for field in (model.field_coarse, model.field_fine):  # zero density everywhere
        last = field.canonical.trunk.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = -1e4
    rays, _ = _corner_rays(outputs)
    with torch.no_grad():
        out = model(rays)
    c2w = outputs.cameras.camera_to_worlds[0]
    hit = rays.origins + rays.directions * out["depth"]
    far = outputs.metadata["far"]
    assert torch.allclose(_axis_depth(hit, c2w), torch.full((hit.shape[0],), far), atol=1e-4)


def test_nerface_camera_angle_x_agrees_with_fx(wide_subject):
    """The original falls back to focal = 0.5 W / tan(camera_angle_x / 2): that must be the file's fx, sign included."""
    split = formats.read_nerface_split(wide_subject / "nerface", "train")
    width, _ = formats.image_size(formats.nerface_image_path(wide_subject / "nerface", split.frames[0].file_path), "")
    focal = 0.5 * width / np.tan(0.5 * split.camera_angle_x)
    assert split.intrinsics[0] < 0
    assert focal == pytest.approx(split.intrinsics[0], rel=1e-9)


# ------------------------------------------------------------------------------------------------
# AD-NeRF's config files (HeadNeRF_config.txt / TorsoNeRF_config.txt): near, far, testskip


def _origin_depths(root: Path) -> np.ndarray:
    """Depth of the world origin in every camera (train and val), through the inverse camera-to-world."""
    mats = [fr.transform_matrix for s in ("train", "val") for fr in formats.read_adnerf_split(root, s).frames]
    return np.array([-(np.linalg.inv(m) @ np.array([0.0, 0.0, 0.0, 1.0]))[2] for m in mats])


@pytest.fixture
def adnerf_copy(subject_nonsquare, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "adnerf"
    shutil.copytree(subject_nonsquare / "adnerf", dst)
    return dst


def _parse(root: Path, split: str = "train", **kwargs):
    return SAHSDataParserConfig(data=root, **kwargs).setup().get_dataparser_outputs(split)


def test_generator_writes_process_data_configs(adnerf_copy):
    mean_z = float(_origin_depths(adnerf_copy).mean())
    num_val = len(formats.read_adnerf_split(adnerf_copy, "val").frames)
    for name in ("HeadNeRF_config.txt", "TorsoNeRF_config.txt"):
        values = dict(
            (k.strip(), v.strip())
            for k, v in (line.split("=", 1) for line in (adnerf_copy / name).read_text().splitlines())
        )
        assert float(values["near"]) == pytest.approx(mean_z - 0.2, abs=1e-9)
        assert float(values["far"]) == pytest.approx(mean_z + 0.4, abs=1e-9)
        assert int(values["testskip"]) == num_val // 7


def test_config_file_bounds_and_testskip_are_applied(adnerf_copy):
    (adnerf_copy / "TorsoNeRF_config.txt").unlink()
    (adnerf_copy / "HeadNeRF_config.txt").write_text(
        "expname = x_head\ndatadir = somewhere\nnear = 0.3125\nfar = 0.9375\ntestskip = 2\n"
    )
    out = _parse(adnerf_copy)
    assert (out.metadata["near"], out.metadata["far"]) == (0.3125, 0.9375)
    assert out.metadata["bounds_source"] == "HeadNeRF_config.txt"
    val_ids = [fr.img_id for fr in formats.read_adnerf_split(adnerf_copy, "val").frames]
    for split in ("val", "test"):
        names = [p.name for p in _parse(adnerf_copy, split).image_filenames]
        assert names == [f"{i}.jpg" for i in val_ids[::2]]
    # Flags override the file.
    out = _parse(adnerf_copy, near=0.25, testskip=1)
    assert (out.metadata["near"], out.metadata["far"]) == (0.25, 0.9375)
    assert len(_parse(adnerf_copy, "val", testskip=1).image_filenames) == len(val_ids)
    # TorsoNeRF_config.txt alone is read too.
    (adnerf_copy / "HeadNeRF_config.txt").rename(adnerf_copy / "TorsoNeRF_config.txt")
    assert _parse(adnerf_copy).metadata["far"] == 0.9375


def test_without_config_files_the_process_data_formula_and_testskip_8(adnerf_copy):
    for name in ("HeadNeRF_config.txt", "TorsoNeRF_config.txt"):
        (adnerf_copy / name).unlink()
    depths = _origin_depths(adnerf_copy)
    out = _parse(adnerf_copy)
    assert out.metadata["near"] == pytest.approx(depths.mean() - 0.2, abs=1e-6)
    assert out.metadata["far"] == pytest.approx(depths.mean() + 0.4, abs=1e-6)
    # Mean depth along the axis, not the mean camera distance |t| (they differ for a camera off the axis).
    dist = np.mean(
        [np.linalg.norm(fr.transform_matrix[:3, 3]) for fr in formats.read_adnerf_split(adnerf_copy, "train").frames]
    )
    assert abs(dist - depths.mean()) > 1e-6
    val = formats.read_adnerf_split(adnerf_copy, "val").frames
    names = [p.name for p in _parse(adnerf_copy, "val").image_filenames]
    assert names == [f"{fr.img_id}.jpg" for fr in val[::8]]


def test_bad_config_file_is_one_clear_error(adnerf_copy):
    (adnerf_copy / "HeadNeRF_config.txt").write_text("near = close\nfar = 1.0\n")
    with pytest.raises(
        formats.FormatError, match=r"HeadNeRF_config.txt: field 'near': expected a number, found 'close'"
    ):
        _parse(adnerf_copy)


@pytest.mark.parametrize("layout", ["nerface", "adnerf"])
def test_frustum_scene_box_holds_every_sample_and_is_inside_the_camera_cube(wide_subject, layout):
    cube = SAHSDataParserConfig(data=wide_subject / layout).setup().get_dataparser_outputs("train")
    outputs = (
        SAHSDataParserConfig(data=wide_subject / layout, scene_box="frustum").setup().get_dataparser_outputs("train")
    )
    box, outer = outputs.scene_box.aabb, cube.scene_box.aabb
    assert bool((box[0] >= outer[0]).all() and (box[1] <= outer[1]).all())
    assert float((box[1] - box[0]).prod()) < float((outer[1] - outer[0]).prod())  # the point: a tighter box
    model = _model(outputs, fast=False)
    model.eval()
    cams = outputs.cameras
    for index in range(len(cams)):
        w, h = int(cams.width[index, 0]), int(cams.height[index, 0])
        pixels = torch.tensor([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [h // 2, w // 2]]).float() + 0.5
        rays = cams.generate_rays(camera_indices=torch.full((5, 1), index, dtype=torch.long), coords=pixels)
        samples = model.sampler_uniform(model.collider(rays))
        points = torch.cat(
            [samples.frustums.get_start_positions(), (rays.origins + rays.directions * rays.fars)[:, None]], 1
        )
        # Every sample the camera cube holds (the box it is cut from) lies in the frustum box.
        in_cube = ((points >= outer[0]) & (points <= outer[1])).all(-1)
        in_box = ((points >= box[0] - 1e-4) & (points <= box[1] + 1e-4)).all(-1)
        assert bool(in_box[in_cube].all()) and bool(in_cube.any()), index


def test_scene_radius_overrides_the_box_and_must_be_positive(wide_subject):
    outputs = (
        SAHSDataParserConfig(data=wide_subject / "nerface", scene_radius=0.3).setup().get_dataparser_outputs("train")
    )
    assert torch.allclose(outputs.scene_box.aabb, torch.tensor([[-0.3] * 3, [0.3] * 3]))
    with pytest.raises(formats.FormatError, match="scene-radius"):
        SAHSDataParserConfig(data=wide_subject / "nerface", scene_radius=-1.0).setup().get_dataparser_outputs("train")
