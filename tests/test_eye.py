"""The eye channel of audio models: ``au.csv`` (OpenFace AU45), the dataparser, the fields, the viewer and
``sahs-render``'s blinks (``data/eye.py``, ``fields/base.py``, ``viewer/controls.py``, ``rendering/driven.py``)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import nn

from sahs_nerfstudio.data import eye as eye_io
from sahs_nerfstudio.data import keys
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.data.synthetic import SUBJECT_FILE
from sahs_nerfstudio.driving.sequence import driving_eyes
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY
from sahs_nerfstudio.fields.fast_field import SAHSFastField, SAHSFastFieldConfig
from sahs_nerfstudio.fields.sahs_field import SAHSField, SAHSFieldConfig
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.viewer.controls import attach_avatar_controls

# ----------------------------------------------------------------------------------------------
# au.csv


def test_au_csv_round_trip_reads_as_openface(tmp_path):
    au45 = np.array([0.0, 0.25, 1.9, 2.0, 4.5, 0.0])
    path = eye_io.write_au_csv(tmp_path / "au.csv", au45)
    assert np.allclose(eye_io.read_au_csv(path), au45, atol=1e-4)
    # As pandas / ER-NeRF see it: ", " separators, so the column is named " AU45_r"; frames from 1.
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r[" AU45_r"]) for r in rows] == pytest.approx(au45.tolist(), abs=1e-4)
    assert [int(r["frame"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    # The model reads ER-NeRF's closure clip(AU45, 0, 2) / 2: 0 open, 1 shut.
    assert np.allclose(eye_io.closure_from_au45(au45), [0.0, 0.125, 0.95, 1.0, 1.0, 0.0])
    assert np.allclose(eye_io.closure_from_au45(eye_io.au45_from_closure(np.array([0.0, 0.3, 1.0]))), [0, 0.3, 1])
    # The landmark mapping: usual eye (openness 1) -> 0, shut (0) -> 2, wider than usual -> 0.
    assert np.allclose(eye_io.au45_from_openness(np.array([1.0, 0.5, 0.0, 1.2])), [0.0, 1.0, 2.0, 0.0])


def test_reads_a_full_openface_file(tmp_path):
    path = tmp_path / "au.csv"
    header = "frame, face_id, timestamp, confidence, success, AU01_r, AU45_r, AU01_c, AU45_c"
    rows = [f"{k + 1}, 0, {k * 0.04:.2f}, 0.98, 1, 0.3, {v}, 0, {int(v > 1)}" for k, v in enumerate([0.1, 2.6, 0.0])]
    path.write_text("\n".join([header, *rows]) + "\n")
    assert np.allclose(eye_io.read_au_csv(path), [0.1, 2.6, 0.0])


@pytest.mark.parametrize(
    "text, field, found",
    [
        ("frame, AU01_r\n1, 0.0\n", "<header>", "columns ['frame', 'AU01_r']"),
        ("frame, AU45_r\n", "AU45_r", "only the header"),
        ("frame, AU45_r\n1, 0.0\n2, abc\n", "AU45_r (row 3)", "'abc'"),
        ("frame, AU45_r\n1, 7.5\n", "AU45_r (row 2)", "7.5"),
        ("frame, AU45_r\n1, nan\n", "AU45_r (row 2)", "nan"),
        ("frame, AU45_r\n1, 0.0\n3, 0.0\n", "frame (row 3)", "3"),
        ("frame, AU45_r\n1\n", "AU45_r (row 2)", "1"),
        ("", "<header>", "an empty file"),
    ],
)
def test_bad_au_csv_is_one_line_naming_file_and_field(tmp_path, text, field, found):
    path = tmp_path / "au.csv"
    path.write_text(text)
    with pytest.raises(FormatError) as err:
        eye_io.read_au_csv(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert err.value.field_name == field and err.value.found == found


# ----------------------------------------------------------------------------------------------
# Dataparser


def _blinks(root: Path) -> np.ndarray:
    sidecar = json.loads((root / SUBJECT_FILE).read_text())
    return np.asarray(sidecar["controls"])[:, sidecar["control_names"].index("blink")]


def test_dataparser_exposes_the_eye_track(subject_nonsquare):
    root = subject_nonsquare / "adnerf"
    blink = _blinks(subject_nonsquare)
    assert blink.max() > 0.5, "the synthetic subject blinks in training"
    parser = SAHSDataParserConfig(data=root).setup()
    for split in ("train", "val"):
        out = parser.get_dataparser_outputs(split)
        eye = out.cameras.metadata[keys.EYE]
        ids = [int(p.stem) for p in out.image_filenames]
        assert eye.shape == (len(ids), 1)
        # The synthetic subject writes AU45 = 2 * blink (4 decimals): the closure is its blink control.
        assert np.allclose(eye[:, 0].numpy(), blink[ids], atol=1e-4)
    assert torch.equal(out.metadata[keys.EYE], out.cameras.metadata[keys.EYE])
    # The expression layout needs none: its code has eye channels.
    nerface = SAHSDataParserConfig(data=subject_nonsquare / "nerface").setup().get_dataparser_outputs("train")
    assert keys.EYE not in nerface.cameras.metadata


def test_missing_au_csv_means_no_eye_said_once_and_bad_one_refused(subject_copy, capsys):
    root = subject_copy / "adnerf"
    (root / "au.csv").unlink()
    parser = SAHSDataParserConfig(data=root).setup()
    for split in ("train", "val", "train"):
        out = parser.get_dataparser_outputs(split)
        assert keys.EYE not in out.cameras.metadata and out.metadata[keys.EYE] is None
    said = capsys.readouterr().out
    assert said.count("no eye channel") == 1 and "au.csv" in said
    # Fewer rows than frames: one line naming the file and the column.
    eye_io.write_au_csv(root / "au.csv", np.zeros(3))
    with pytest.raises(FormatError, match=r"au\.csv: field 'AU45_r': expected a row for every frame"):
        parser.get_dataparser_outputs("train")


# ----------------------------------------------------------------------------------------------
# Fields

MLP_TINY = dict(
    warp_depth=2, warp_width=16, warp_skips=(1,), hyper_depth=2, hyper_width=8, hyper_skips=(1,),
    canonical_depth=2, canonical_width=16, canonical_skips=(1,), colour_depth=1, colour_width=8,
    semantic_depth=1, semantic_width=8, grid_resolution=4, grid_channels=4, position_frequencies=4,
)  # fmt: skip
GRID_TINY = dict(
    implementation="torch", num_levels=4, max_res=64, log2_hashmap_size=10, plane_resolutions=(8, 16),
    plane_channels=2, deform_num_levels=2, deform_max_res=32, deform_log2_hashmap_size=8,
)  # fmt: skip


def _samples(eye: float, num_rays: int = 5, num_samples: int = 7) -> RaySamples:
    gen = torch.Generator().manual_seed(0)
    metadata = {
        keys.DRIVING_CODE: torch.randn(num_rays, 76, generator=gen),
        keys.POSE: torch.randn(num_rays, 6, generator=gen) * 0.3,
        keys.EYE: torch.full((num_rays, 1), eye),
    }
    bundle = RayBundle(
        origins=torch.randn(num_rays, 3, generator=gen) * 0.05,
        directions=nn.functional.normalize(torch.randn(num_rays, 3, generator=gen), dim=-1),
        pixel_area=torch.ones(num_rays, 1),
        camera_indices=torch.zeros(num_rays, 1, dtype=torch.long),
        metadata=metadata,
    )
    bins = torch.linspace(0.0, 0.3, num_samples + 1).expand(num_rays, -1)[..., None]
    return bundle.get_ray_samples(bin_starts=bins[:, :-1], bin_ends=bins[:, 1:])


def _build(kind: str, driver: str, **overrides):
    torch.manual_seed(0)
    if kind == "sahs":
        field = SAHSField(SAHSFieldConfig.for_driver(driver, deformation_init_scale=0.0, **MLP_TINY, **overrides))  # type: ignore[arg-type]
        with torch.no_grad():
            trunk: Any = field.canonical.trunk
            trunk.layers[-1].bias[0] = 2.0  # an untrained ReLU density may be 0 everywhere
        return field
    return SAHSFastField(SAHSFastFieldConfig.for_driver(driver, deformation_init_scale=0.0, **GRID_TINY, **overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sahs", "sahs-fast"])
@pytest.mark.parametrize("driver", ["audio", "expression"])
def test_field_with_eye_differs_between_open_and_closed(kind, driver):
    field = _build(kind, driver, use_eye=True).eval()
    assert field.eye_code is not None and field.eye_code.shape == (76,)
    # A new field starts as the eye-less one (the direction is zero) and learns it: closed eyes give it a gradient.
    assert torch.equal(field(_samples(0.0))[FieldHeadNames.RGB], field(_samples(1.0))[FieldHeadNames.RGB])
    field(_samples(1.0))[FieldHeadNames.DENSITY].sum().backward()
    assert field.eye_code.grad is not None and field.eye_code.grad.abs().max() > 0
    field.zero_grad()
    field(_samples(0.0))[FieldHeadNames.DENSITY].sum().backward()
    assert field.eye_code.grad is not None and field.eye_code.grad.abs().max() == 0  # open eyes say nothing
    with torch.no_grad():
        field.eye_code.copy_(torch.randn(76, generator=torch.Generator().manual_seed(1)))  # as after training
        opened, closed = field(_samples(0.0)), field(_samples(1.0))
    # The eye moves the warp and the hyper-space coordinates, hence the density (the grid field's colour starts
    # almost constant, so the colour is not a fair check before training).
    for head in (DEFORMATION_KEY, AMBIENT_KEY, FieldHeadNames.DENSITY):
        assert (opened[head] - closed[head]).abs().max() > 1e-6, head
    # Without the eye in the metadata the field says what is missing.
    samples = _samples(0.0)
    assert samples.metadata is not None
    del samples.metadata[keys.EYE]
    with pytest.raises(KeyError, match="eye"):
        field(samples)


@pytest.mark.parametrize("kind", ["sahs", "sahs-fast"])
def test_field_without_eye_is_unchanged(kind):
    # Undecided (None, the default) and off both build the eye-less networks and ignore an eye in the metadata.
    for use_eye in (None, False):
        field = _build(kind, "audio", use_eye=use_eye).eval()
        reference = _build(kind, "audio").eval()
        assert field.eye_code is None
        with torch.no_grad():
            opened, closed = field(_samples(0.0)), field(_samples(1.0))
            assert torch.equal(opened[FieldHeadNames.RGB], closed[FieldHeadNames.RGB])
            assert torch.equal(opened[FieldHeadNames.RGB], reference(_samples(0.0))[FieldHeadNames.RGB])
        assert opened[FieldHeadNames.RGB].shape == (5, 7, 3)
        assert {k: v.shape for k, v in field.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()
        }


def test_eye_decision_and_configs_saved_before_it():
    audio, expression = SAHSFieldConfig.for_driver("audio"), SAHSFieldConfig.for_driver("expression")
    assert audio.use_eye is None
    assert audio.with_eye_track(True).use_eye is True and audio.with_eye_track(False).use_eye is False
    assert expression.with_eye_track(True).use_eye is False
    with pytest.raises(ValueError, match="no eye track"):
        SAHSFieldConfig.for_driver("audio", use_eye=True).with_eye_track(False)
    # A config.yml written before use_eye existed: loads with it off, even where the data now has a track.
    text = yaml.dump(SAHSFastFieldConfig.for_driver("audio"))
    assert "use_eye: null" in text
    old = yaml.load(text.replace("use_eye: null\n", ""), Loader=yaml.Loader)
    assert old.use_eye is False and old.with_eye_track(True).use_eye is False
    assert yaml.load(text, Loader=yaml.Loader).with_eye_track(True).use_eye is True


# ----------------------------------------------------------------------------------------------
# Natural blinks


def _runs(closure: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """(start, length) of the runs of frames above ``threshold``."""
    above = np.concatenate([[False], closure > threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(int)))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_natural_blinks_rate_duration_and_range(fps):
    minutes = 6.0
    for seed in range(4):
        track = eye_io.natural_blinks(int(minutes * 60 * fps), fps, seed=seed)
        assert track.min() >= 0.0 and track.max() <= 1.0 and track.max() > 0.95
        runs = _runs(track)
        assert 15.0 <= len(runs) / minutes <= 20.0, (seed, len(runs))
        # Each blink: closed at >= 1 frame, and no longer than 0.3 s of lid motion.
        touched = _runs(track, 0.0)
        assert len(touched) == len(runs)
        assert all(length <= np.ceil(0.3 * fps) for _, length in touched)
        assert all(b - a >= fps for (a, _), (b, _) in zip(touched, touched[1:], strict=False))  # >= 1 s apart
        assert np.array_equal(track, eye_io.natural_blinks(len(track), fps, seed=seed))
    assert not np.array_equal(eye_io.natural_blinks(3000, 25.0, 0), eye_io.natural_blinks(3000, 25.0, 1))


def test_driving_eyes_sources(tmp_path):
    own = np.linspace(0, 1, 10)
    assert np.array_equal(driving_eyes(10, 25.0, own=own)[0], own)
    assert np.array_equal(driving_eyes(10, 25.0, blink="open", own=own)[0], np.zeros(10))
    natural, said = driving_eyes(300, 25.0, blink="natural", seed=3, own=np.zeros(300))
    assert np.array_equal(natural, eye_io.natural_blinks(300, 25.0, 3)) and "natural blinks" in said
    path = eye_io.write_au_csv(tmp_path / "au.csv", np.array([0.0, 1.0, 2.0, 3.0]))
    assert np.allclose(driving_eyes(3, 25.0, eyes=path, own=own)[0], [0.0, 0.5, 1.0])
    with pytest.raises(FormatError, match=r"AU45_r': expected a row for each of the 5 video frames, found 4"):
        driving_eyes(5, 25.0, eyes=path)


# ----------------------------------------------------------------------------------------------
# Model, viewer and sahs-render


def _audio_model_with_eye(frames: int = 6):
    gen = torch.Generator().manual_seed(0)
    field_config = SAHSFieldConfig.for_driver("audio", deformation_init_scale=0.0, **MLP_TINY)  # type: ignore[arg-type]
    meta = {
        "driver_kind": "audio",
        "near": 0.2,
        "far": 0.8,
        "background": torch.rand(6, 8, 3, generator=gen),
        "audio_window": (16, 29),
        "audio_table": torch.randn(frames, 16, 29, generator=gen),
        "drivers": torch.randn(frames, 16 * 29, generator=gen),
        "audio_indices": torch.arange(float(frames))[:, None],
        keys.EYE: torch.linspace(0.0, 1.0, frames)[:, None],
    }
    config = SAHSModelConfig(audio_field=field_config, num_coarse_samples=6, num_importance_samples=6)
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-0.5] * 3, [0.5] * 3])), num_train_data=frames, metadata=meta
    )
    with torch.no_grad():
        for field in (model.field_coarse, model.field_fine):
            field.canonical.trunk.layers[-1].bias[0] = 2.0  # a visible density from the start
            field.eye_code.copy_(torch.randn(76, generator=gen) * 3.0)  # an eye direction, as training learns one
    attach_avatar_controls(model)
    return model.eval()


def _viewer_camera(time: float) -> Cameras:
    c2w = torch.eye(4)[:3]
    c2w[2, 3] = 0.5
    return Cameras(
        camera_to_worlds=c2w[None], fx=torch.tensor([[9.0]]), fy=torch.tensor([[9.0]]), cx=torch.tensor([[4.0]]),
        cy=torch.tensor([[3.0]]), width=torch.tensor([[8]]), height=torch.tensor([[6]]),
        times=torch.tensor([[time]]), metadata={"cam_idx": 0},
    )  # fmt: skip


def test_model_and_viewer_slider_drive_the_eyes():
    model = _audio_model_with_eye()
    assert model.uses_eye and model.field_fine.config.use_eye
    avatar = model.avatar
    cam = _viewer_camera(time=1.0)
    # Following: the eyes of the training frame nearest the Time slider (the last one: shut).
    assert float(model.eye_for_camera(cam, {})) == pytest.approx(1.0)
    followed = model.get_outputs_for_camera(cam)["rgb"]
    # The slider sets them (and stops following): open eyes change the render.
    avatar.el05_eye.value = 0.0
    avatar.el05_eye.cb_hook(avatar.el05_eye)
    assert avatar.el04_eye_follows.value is False
    assert float(model.eye_for_camera(cam, {})) == 0.0
    opened = model.get_outputs_for_camera(cam)["rgb"]
    assert not torch.allclose(followed, opened, atol=1e-6)
    avatar.el05_eye.value = 1.0
    assert torch.allclose(model.get_outputs_for_camera(cam)["rgb"], followed)
    # A camera that carries its own eye wins over the panel.
    assert float(model.eye_for_camera(cam, {keys.EYE: torch.tensor([[0.25]])})) == 0.25
    # No eye track in the data: the same config builds no eye input, and the panel has no eye elements.
    assert "el05_eye" in avatar.elements()


@pytest.fixture(scope="module")
def audio_run_with_eye_input(tiny_run_audio):
    """The tiny audio run (its synthetic data has an au.csv), with its eye direction made large."""
    from sahs_nerfstudio.utils.run_loader import load_run

    config, pipeline, _, _ = load_run(tiny_run_audio)
    model: Any = pipeline.model
    assert model.uses_eye
    # Training saw blinks: it moved the eye direction off its zero start.
    assert float(model.field_fine.eye_code.abs().max()) > 0
    with torch.no_grad():
        for field in (model.field_coarse, model.field_fine):
            field.eye_code.copy_(torch.randn(76, generator=torch.Generator().manual_seed(0)) * 30.0)
    return tiny_run_audio, (config, pipeline)


def test_render_passes_the_eye_track_to_the_model(audio_run_with_eye_input, tmp_path, monkeypatch):
    from sahs_nerfstudio.fields.base import SAHSFieldBase
    from sahs_nerfstudio.rendering.driven import render_driven_video

    config_path, loaded = audio_run_with_eye_input
    seen: list[float] = []
    original = SAHSFieldBase.with_eye

    def spy(self, code, eye):
        if eye is not None:
            seen.append(float(eye.flatten()[0]))
            assert torch.all(eye == eye.flatten()[0]), "one eye value per rendered frame"
        return original(self, code, eye)

    monkeypatch.setattr(SAHSFieldBase, "with_eye", spy)
    track = eye_io.write_au_csv(tmp_path / "au.csv", np.array([0.0, 2.0, 1.0, 0.0]))
    common = dict(cameras="frame", max_frames=3, loaded=loaded, resolution_scale=0.5)
    result = render_driven_video(config_path, None, eyes=track, **common)  # type: ignore[arg-type]
    assert result.eye is not None
    assert np.allclose(result.eye, [0.0, 1.0, 0.5]) and "au.csv" in str(result.eye_source)
    assert sorted(set(np.round(seen, 4))) == [0.0, 0.5, 1.0]

    # Same camera and audio: eyes open vs the track renders differently exactly where the eye differs.
    shut = eye_io.write_au_csv(tmp_path / "shut.csv", np.full(3, 2.0))
    videos = {}
    for name, kwargs in {"open": dict(blink="open"), "shut": dict(eyes=shut)}.items():
        out = tmp_path / f"{name}.mp4"
        render_driven_video(config_path, out, **common, **kwargs)  # type: ignore[arg-type]
        videos[name] = out
    from sahs_nerfstudio.utils.video import read_video_frames

    frames = {k: np.stack([f for _, f in read_video_frames(v)]).astype(float) for k, v in videos.items()}
    assert np.abs(frames["open"] - frames["shut"]).mean() > 1.0

    # The split's own track when it drives itself (the training split blinks), natural blinks for another driver.
    own = render_driven_video(config_path, None, split="train", max_frames=16, loaded=loaded, resolution_scale=0.25)
    train_eye = loaded[1].datamanager.train_dataset.cameras.metadata[keys.EYE][:16, 0].numpy()
    assert own.eye is not None and train_eye.max() > 0.5 and np.allclose(own.eye, train_eye)
    assert own.eye_source == "the split's own eye track"
    data_root = Path(loaded[0].pipeline.datamanager.dataparser.data)
    natural = render_driven_video(config_path, None, driver=data_root / "aud.npy", **common)  # type: ignore[arg-type]
    assert natural.eye is not None and np.array_equal(natural.eye, eye_io.natural_blinks(3, 25.0, 0))
    assert str(natural.eye_source).startswith("natural blinks")


def test_eyes_flag_refused_for_a_model_without_eye_input(tiny_run_expression, tmp_path, capsys):
    from sahs_nerfstudio.scripts import render as render_cli

    track = eye_io.write_au_csv(tmp_path / "au.csv", np.zeros(3))
    argv = ["--load-config", str(tiny_run_expression), "--output", str(tmp_path / "x.mp4"), "--eyes", str(track)]
    argv += ["--max-frames", "2"]
    assert render_cli.run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eyes" in err[0] and "eye channel" in err[0]


def test_checkpoint_saved_before_the_eye_channel_still_loads(tiny_subject, tmp_path):
    from conftest import _train_tiny_run

    from sahs_nerfstudio.utils.run_loader import load_run

    root = tmp_path / "subject"
    shutil.copytree(tiny_subject / "adnerf", root / "adnerf")
    track = (root / "adnerf" / eye_io.AU_CSV).read_bytes()
    (root / "adnerf" / eye_io.AU_CSV).unlink()  # the data as it was before au.csv existed
    config_path = _train_tiny_run(root, "adnerf", steps=2)
    text = config_path.read_text()
    assert text.count("use_eye: null") == 2  # audio and expression field configs
    # The config.yml of such a run has no use_eye at all; the dataset regenerated since has an au.csv.
    config_path.write_text(re.sub(r"\n *use_eye: null", "", text))
    (root / "adnerf" / eye_io.AU_CSV).write_bytes(track)
    _, pipeline, _, _ = load_run(config_path)
    model: Any = pipeline.model
    assert not model.uses_eye and not model.field_fine.config.use_eye
    # The same run with an undecided use_eye would take the eye now, and its checkpoint no longer fits.
    config_path.write_text(text)
    with pytest.raises(FormatError, match=r"missing \(e\.g\. '[\w.]*eye_code'\)"):
        load_run(config_path)
