"""The viewer's SAHS panel: what nerfstudio's viewer finds on the model, what each control does,
and (in headless Chromium) that the panel is on the page of ``ns-viewer`` and moves the render."""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement
from viewer_browser import chromium_path, drive_viewer, free_port, start_viewer, stop_viewer  # tests/viewer_browser.py

from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
from sahs_nerfstudio.models.camera_outputs import DISPLAY_ORDER, display_outputs
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.viewer.controls import (
    AUDIO_WINDOW,
    DATASET_FRAME,
    EXPRESSION_SLIDERS,
    VIEWER_TIME,
    attach_avatar_controls,
    expression_pca,
)

W, H = 8, 6


def _field(driver: str) -> SAHSFieldConfig:
    sizes = dict(warp_width=16, hyper_width=16, canonical_width=32, colour_width=16, semantic_width=16)
    return SAHSFieldConfig.for_driver(driver, grid_resolution=4, grid_channels=4, **sizes)  # type: ignore[arg-type]


def _model(driver: str = "expression", frames: int = 12):
    gen = torch.Generator().manual_seed(0)
    if driver == "expression":
        # Codes spread mostly along two directions, so two components explain nearly everything.
        basis = torch.randn(2, 76, generator=gen)
        drivers = torch.randn(frames, 2, generator=gen) * torch.tensor([3.0, 1.0]) @ basis
        drivers = drivers + 0.01 * torch.randn(frames, 76, generator=gen)
    else:
        drivers = torch.randn(frames, 16 * 29, generator=gen)
    meta = {
        "driver_kind": driver,
        "near": 0.2,
        "far": 0.8,
        "background": torch.rand(H, W, 3, generator=gen),
        "audio_window": (16, 29) if driver == "audio" else None,
        "audio_table": torch.randn(20, 16, 29, generator=gen) if driver == "audio" else None,
        "drivers": drivers,
        "audio_indices": torch.arange(float(frames))[:, None],
    }
    config = SAHSModelConfig(
        audio_field=_field("audio"),
        expression_field=_field("expression"),
        num_coarse_samples=6,
        num_importance_samples=6,
    )
    torch.manual_seed(0)
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-0.5] * 3, [0.5] * 3])), num_train_data=frames, metadata=meta
    )
    # An untrained ReLU density can be zero everywhere (the render is then only the background and no
    # control could change it): give the density a positive bias so the field shows.
    with torch.no_grad():
        for field in (model.field_coarse, model.field_fine):
            field.canonical.trunk.layers[-1].bias[0] = 2.0
    attach_avatar_controls(model)  # what SAHSPipeline does after building the model
    model.eval()
    return model


def _camera(x: float = 0.0, time: float = 0.0) -> Cameras:
    """A viewer-like camera: times and a cam_idx only, no conditioning."""
    c2w = torch.eye(4)[:3]
    c2w[0, 3], c2w[2, 3] = x, 0.5
    return Cameras(
        camera_to_worlds=c2w[None],
        fx=torch.tensor([[9.0]]),
        fy=torch.tensor([[9.0]]),
        cx=torch.tensor([[W / 2]]),
        cy=torch.tensor([[H / 2]]),
        width=torch.tensor([[W]]),
        height=torch.tensor([[H]]),
        times=torch.tensor([[time]]),
        metadata={"cam_idx": 0},
    )


def test_viewer_finds_the_panel_on_the_model():
    model = _model("expression")
    found = dict(parse_object(model, ViewerElement, "Custom Elements"))
    names = [element.name for element in found.values()]
    assert names[:2] == ["Drive by", "Dataset frame"]  # sorted by attribute name: the panel's order
    assert any(name.startswith("PC1 (") and name.endswith("%)") for name in names)
    assert {"Sliders from dataset frame", "Reset expression", "View from dataset frame"} <= set(names)
    assert all(path.startswith("Custom Elements/avatar/") for path in found)
    assert len(parse_object(model, ViewerControl, "Custom Elements")) == 1
    audio = [e.name for _, e in parse_object(_model("audio"), ViewerElement, "x")]
    assert "Audio window" in audio and "Pose follows camera" in audio and not any("PC" in n for n in audio)


def test_pca_components_and_labels():
    model = _model("expression")
    pca = expression_pca(model.train_drivers)
    assert pca.components.shape[0] == model.avatar.num_components == 2  # noise directions get no slider
    assert float(pca.explained.sum()) <= 1.0 + 1e-6 and pca.explained[0] >= pca.explained[1]
    assert torch.allclose(pca.components @ pca.components.T, torch.eye(2), atol=1e-5)
    # Projecting a training code onto the sliders and back reproduces it (up to the dropped noise).
    avatar = model.avatar
    code = model.train_drivers[3]
    avatar.set_coefficients(avatar.project(code).tolist())
    assert torch.allclose(avatar.slider_code()[0], code, atol=0.1)


def test_default_is_the_time_slider_and_dataset_codes_win():
    model = _model("expression")
    cam = _camera(time=1.0)
    assert model.avatar.mode == VIEWER_TIME
    plain = model.get_outputs_for_camera(cam)["rgb"]
    last = model.train_drivers[-1:]
    assert torch.equal(model.driving_code_for_camera(cam, {}), last)  # time 1.0: the last training frame
    model.avatar.el00_drive_by.value = EXPRESSION_SLIDERS
    model.avatar.set_coefficients([3.0, -3.0])
    driven = model.get_outputs_for_camera(cam)["rgb"]
    assert (driven - plain).abs().max() > 1e-4
    # A camera with its own code (dataset, driven renders) ignores the panel.
    assert torch.equal(model.driving_code_for_camera(cam, {"driving_code": last}), last)


def test_frame_slider_and_buttons():
    model = _model("expression")
    avatar = model.avatar
    # A frame inside the sliders' +-3 standard deviations.
    frame = int(torch.stack([avatar.project(c).abs().max() for c in model.train_drivers]).argmin())
    avatar.el01_frame.value = frame
    avatar._sliders_from_frame()
    assert avatar.mode == EXPRESSION_SLIDERS
    assert torch.allclose(avatar.slider_code()[0], model.train_drivers[frame], atol=0.15)
    avatar._reset_sliders()
    assert torch.allclose(avatar.slider_code()[0], avatar.pca_mean)
    avatar.el00_drive_by.value = DATASET_FRAME
    assert torch.equal(model.driving_code_for_camera(_camera(), {}), model.train_drivers[frame : frame + 1])


def test_audio_window_and_frozen_pose():
    model = _model("audio")
    avatar = model.avatar
    cam = _camera()
    avatar.el00_drive_by.value = AUDIO_WINDOW
    codes = []
    for window in (2, 15):
        avatar.el02_audio_window.value = window
        codes.append(model.driving_code_for_camera(cam, {}))
    expected = model.encode_driver(model.audio_table[15:16].reshape(1, -1))
    assert torch.allclose(codes[1], expected) and not torch.allclose(codes[0], codes[1])
    # Following: each camera's pose; frozen: the last followed one.
    near, far = _camera(x=0.0), _camera(x=0.05)
    assert not torch.equal(model.pose_for_camera(near), model.pose_for_camera(far))
    followed = model.pose_for_camera(near)
    avatar.el03_pose_follows.value = False
    assert torch.equal(model.pose_for_camera(far), followed)
    avatar.el03_pose_follows.value = True
    assert not torch.equal(model.pose_for_camera(far), followed)


def test_output_menu():
    model = _model("audio")
    outputs = model.get_outputs_for_camera(_camera())
    keys = list(outputs)
    assert keys[: len(DISPLAY_ORDER)] == list(DISPLAY_ORDER)
    assert outputs["semantics"].shape == (H, W, 3) and outputs["deformation_magnitude"].shape == (H, W, 3)
    assert outputs["ambient_image"].shape == (H, W, 3) and outputs["depth"].shape == (H, W, 1)
    # The audio model's 2-d ambient coordinate cannot be colour-mapped by the viewer: not offered.
    assert all(value.shape[-1] != 2 for value in outputs.values())
    assert list(display_outputs(dict(outputs))) == keys


def test_checkpoints_copies_and_pickles_are_unaffected():
    viser = pytest.importorskip("viser")
    model = _model("expression")
    assert not [key for key in model.state_dict() if "avatar" in key]
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        for _, element in parse_object(model, ViewerElement, "x"):
            element.install(server)  # as the viewer does: live GUI handles (not picklable)
        model.avatar.set_coefficients([1.5, -0.5])
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        twin = copy.deepcopy(model)
        restored = pickle.loads(pickle.dumps(model.avatar))
    finally:
        server.stop()
    for avatar in (twin.avatar, restored):
        assert avatar.coefficients().tolist() == [1.5, -0.5]
        assert all(element.gui_handle is None for element in avatar.elements().values())
    assert twin.avatar.el00_drive_by.value == EXPRESSION_SLIDERS


def test_viewer_frames_show_their_frames_per_second():
    """Set up by a viewer, the panel shows the frames/s of the viewer's last frame: 1 / the seconds of the
    model's get_outputs_for_camera in the viewer's render thread, and only there (evaluation, sahs-render)."""
    import threading
    import time
    from types import SimpleNamespace

    from nerfstudio.viewer.render_state_machine import RenderStateMachine

    viser = pytest.importorskip("viser")
    model = _model("expression")
    avatar = model.avatar
    cam = _camera()
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        rerenders = []
        for _, element in parse_object(model, ViewerElement, "x"):
            element.install(server)
            element.cb_hook = rerenders.append  # nerfstudio's viewer re-renders on every element update
        avatar.viewer_control._setup(SimpleNamespace(viser_server=server, get_model=lambda: model))
        timed = model.get_outputs_for_camera
        avatar.viewer_control._setup(SimpleNamespace(viser_server=server, get_model=lambda: model))
        assert model.get_outputs_for_camera is timed  # a second viewer set-up does not wrap twice
        model.get_outputs_for_camera(cam)  # not the viewer's thread: nothing shown
        assert (avatar.last_render, avatar.el93_render_fps.value) == (None, "-")

        class RenderThread(RenderStateMachine):
            """What the viewer's render thread does with the model, without a viewer."""

            def __init__(self) -> None:
                threading.Thread.__init__(self, daemon=True)
                self.outputs: dict = {}
                self.wall = 0.0

            def run(self) -> None:
                tick = time.perf_counter()
                self.outputs = model.get_outputs_for_camera(cam)
                self.wall = time.perf_counter() - tick

        thread = RenderThread()
        thread.start()
        thread.join(60)
        assert avatar.last_render is not None
        fps, width, height = avatar.last_render
        assert (width, height) == (W, H)
        assert 0.0 < 1.0 / fps <= thread.wall  # the model's time, inside the wall time of the call
        handle = avatar.el93_render_fps.gui_handle
        assert handle.value == f"{fps:.2f} ({W}x{H})" and handle.disabled  # on the page, read only
        time.sleep(0.5)  # viser runs update callbacks on its own threads
        assert rerenders == []  # showing a frame's rate must not ask for another frame
        twin = copy.deepcopy(model)
    finally:
        server.stop()
    # The timed call renders what the model's own method does.
    assert torch.equal(thread.outputs["rgb"], type(model).get_outputs_for_camera(model, cam)["rgb"])
    # A copy's wrapper renders the copy and reports to the copy's panel.
    assert twin.get_outputs_for_camera.render.__self__ is twin and twin.get_outputs_for_camera.controls is twin.avatar


# ----------------------------------------------------------------------------------------------
# ns-viewer in headless Chromium


@pytest.mark.skipif(chromium_path() is None, reason="no Chromium at /usr/bin/chromium (make browser)")
def test_ns_viewer_panel_in_chromium(tiny_run_expression, tmp_path):
    pytest.importorskip("playwright")
    port = free_port()
    proc = start_viewer(tiny_run_expression, port, tmp_path / "viewer.log")
    try:
        check = drive_viewer(f"http://127.0.0.1:{port}", tmp_path / "viewer.png", max_res=64, slider="PC1 (")
    finally:
        stop_viewer(proc)
    assert all(check.labels.values()), check.labels
    assert check.moved.startswith("PC1 (") and check.moved.endswith("%)")
    assert check.mode_after == EXPRESSION_SLIDERS  # touching a component slider drives by the sliders
    assert check.mean_change > 1.0, f"moving {check.moved} changed the render by {check.mean_change:.3f}"
    # The panel's frames/s is the last render's: the size on it is the viewer's own "Resolution:" line's.
    fps = re.fullmatch(r"(\d+\.\d+) \((\d+)x(\d+)\)", check.render_fps)
    size = re.search(r"(\d+)\s*[x\u00d7]\s*(\d+)", check.resolution)
    assert fps is not None and size is not None, (check.render_fps, check.resolution)
    assert float(fps.group(1)) > 0 and fps.group(2, 3) == size.group(1, 2)
    assert (tmp_path / "viewer.png").stat().st_size > 10_000


def test_a_driver_clip_plays_frame_by_frame(tmp_path, capsys):
    """A driving file loaded into the panel: its position slider picks the clip's frames; a file of the wrong
    kind is one line and the clip loaded before stays."""
    import numpy as np

    from sahs_nerfstudio.viewer.controls import DRIVER_CLIP

    model = _model("expression")
    avatar = model.avatar
    cam = _camera()
    rows = np.random.default_rng(0).normal(size=(5, 76)).astype(np.float32)
    np.save(tmp_path / "clip.npy", rows)
    avatar.el06_driver_path.value = str(tmp_path / "clip.npy")
    assert avatar.load_driver()
    assert avatar.mode == DRIVER_CLIP and "driver clip: " in capsys.readouterr().out
    for position, frame in ((0.0, 0), (0.5, 2), (1.0, 4)):
        avatar.el08_driver_position.value = position
        assert torch.allclose(model.driving_code_for_camera(cam, {}), torch.from_numpy(rows[frame : frame + 1]))
    np.save(tmp_path / "narrow.npy", rows[:, :50])
    assert not avatar.load_driver(tmp_path / "narrow.npy")
    line = capsys.readouterr().out.strip()
    assert line.startswith("driver clip not loaded: ") and "narrow.npy" in line and len(line.splitlines()) == 1
    assert torch.allclose(model.driving_code_for_camera(cam, {}), torch.from_numpy(rows[4:5]))  # the old clip


def test_an_audio_driver_clip_is_cut_to_the_models_window_and_checked_on_loading(tmp_path, capsys):
    """An audio model's panel: a recording is cut into the model's window (not the default one), and features of
    another shape are one console line at loading, with the clip loaded before kept (they used to fail later, inside
    the render thread)."""
    import numpy as np
    import soundfile

    from sahs_nerfstudio.viewer.controls import DRIVER_CLIP

    model = _model("audio")
    avatar = model.avatar
    assert avatar.audio_window == (16, 29)
    t = np.arange(8000) / 16000.0
    soundfile.write(tmp_path / "voice.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert avatar.load_driver(tmp_path / "voice.wav")
    assert avatar.mode == DRIVER_CLIP and "driver clip: " in capsys.readouterr().out
    loaded = avatar._driver_rows
    assert loaded is not None and tuple(loaded.shape[1:]) == (16, 29) and len(loaded) == 12  # 0.5 s at 25 frames/s
    np.save(tmp_path / "hubert.npy", np.zeros((6, 2, 1024), np.float32))  # another extractor's windows
    assert not avatar.load_driver(tmp_path / "hubert.npy")
    line = capsys.readouterr().out.strip()
    assert line.startswith("driver clip not loaded: ") and len(line.splitlines()) == 1
    assert "hubert.npy" in line and "[16, 29]" in line and "[2, 1024]" in line
    assert avatar._driver_rows is loaded  # the recording stays loaded
