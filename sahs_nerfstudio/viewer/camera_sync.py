"""The viewer's side of the avatar panel: the camera put where a training camera was, and the viewer's renders timed
for the panel's frames/s (nerfstudio's viewer has no render hook, so the model's ``get_outputs_for_camera`` is wrapped
on the instance; only calls from the viewer's render threads are timed)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from nerfstudio.viewer.viewer_elements import ViewerControl
from torch import Tensor

from sahs_nerfstudio.compat.viser_camera import camera_reported

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

VISER_SCALE = 10.0
"""nerfstudio's ``VISER_NERFSTUDIO_SCALE_RATIO``: viewer units per world unit."""


class PanelClock(Protocol):
    """What the camera control and the render timer need of the panel."""

    def frame_index(self) -> int: ...

    def record_render(self, seconds: float, width: int, height: int) -> float: ...


class FrameCameraControl(ViewerControl):
    """Puts the viewer's camera where a training camera was (new clients start at the frame slider's)."""

    def __init__(self, controls: PanelClock) -> None:
        self.controls = controls
        self.viewer: Viewer | None = None

    def _setup(self, viewer: "Viewer") -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self._on_connect)
        time_viewer_renders(viewer.get_model(), self.controls)

    def _on_connect(self, client: Any) -> None:
        # The client's camera is unknown until it reports it; wait for that off the server's thread.
        def wait_then_look() -> None:
            for _ in range(200):
                if camera_reported(client.camera):
                    self.look_through(self.controls.frame_index(), [client])
                    return
                time.sleep(0.05)

        threading.Thread(target=wait_then_look, daemon=True).start()

    def look_through(self, frame: int, clients: list[Any] | None = None) -> None:
        """Move the viewer camera of ``clients`` (all by default) to training camera ``frame``."""
        if self.viewer is None:
            return
        cameras = self.viewer.pipeline.datamanager.train_dataset.cameras  # type: ignore[union-attr]
        frame = min(max(frame, 0), len(cameras) - 1)
        c2w = cameras.camera_to_worlds[frame].detach().cpu().double().numpy()
        height = float(cameras.height[frame, 0])
        fov = float(2.0 * np.arctan(height / (2.0 * abs(float(cameras.fy[frame, 0])))))
        position = c2w[:3, 3] * VISER_SCALE
        forward = -c2w[:3, 2]  # nerfstudio cameras look along -z, y up
        for client in clients if clients is not None else list(self.viser_server.get_clients().values()):
            if not camera_reported(client.camera):
                continue
            with client.atomic():
                client.camera.up_direction = c2w[:3, 1]
                client.camera.position = position
                client.camera.look_at = position + forward * VISER_SCALE * 0.5
                client.camera.fov = fov


class TimedViewerRender:
    """A model's ``get_outputs_for_camera`` that, called from one of the viewer's render threads, reports its
    time to the panel (``controls.record_render``); any other caller gets the plain call."""

    def __init__(self, render: Any, controls: PanelClock) -> None:
        self.render = render
        self.controls = controls

    def __call__(self, camera: Any, obb_box: Any = None) -> dict[str, Tensor]:
        """Render ``camera`` as the model does, timing it when the viewer asked."""
        if not _in_viewer_render_thread():
            return self.render(camera, obb_box=obb_box)
        start = time.perf_counter()
        outputs = self.render(camera, obb_box=obb_box)
        device = camera.camera_to_worlds.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the GPU's queued work belongs to this frame's time
        seconds = time.perf_counter() - start
        self.controls.record_render(seconds, int(camera.width.flatten()[0]), int(camera.height.flatten()[0]))
        return outputs


def _in_viewer_render_thread() -> bool:
    """Whether the caller is one of the viewer's render threads (one per browser client)."""
    from nerfstudio.viewer.render_state_machine import RenderStateMachine

    return isinstance(threading.current_thread(), RenderStateMachine)


def time_viewer_renders(model: Any, controls: PanelClock) -> TimedViewerRender:
    """Wrap ``model.get_outputs_for_camera`` (on the instance; the class is untouched) so that the viewer's
    renders show their frames/s on ``controls``; calling it again only points the wrapper at ``controls``."""
    current = model.__dict__.get("get_outputs_for_camera")
    if isinstance(current, TimedViewerRender):
        current.controls = controls
        return current
    timed = TimedViewerRender(model.get_outputs_for_camera, controls)
    # nerfstudio's render thread calls model.get_outputs_for_camera: an instance attribute is found first.
    model.get_outputs_for_camera = timed
    return timed
