"""Driving the avatar from nerfstudio's viewer: the "SAHS avatar" controls and the output menu.

nerfstudio's viewer (``nerfstudio.viewer.viewer.Viewer``) collects every ``ViewerElement`` it finds
by walking the pipeline's attributes and, recursively, its ``nn.Module`` children
(``nerfstudio.viewer.utils.parse_object``): elements sorted by attribute name, each in a folder
named after the path to it. :class:`AvatarControls` is therefore an ``nn.Module`` child of the
model (``model.avatar``, no parameters, nothing in the state dict; the pipeline attaches it with
:func:`attach_avatar_controls`) holding the elements as plain attributes whose names (``el00_...``)
fix their order on the panel:

* **Drive by**: ``viewer time`` (the default: the training frame nearest nerfstudio's Time slider,
  as without a viewer), ``dataset frame`` (the frame slider), ``expression sliders`` (expression
  models) or ``audio window`` (audio models). Touching a slider switches to its mode.
* **Dataset frame**: a training frame; its driving code (expression, or audio window through the
  audio network) drives the render.
* **Audio window** (audio models): scrub through every window of the dataset's ``aud.npy``.
* **Pose follows camera** (models whose field takes the pose code): off freezes the pose code at
  the last camera it followed (the torso stops moving with the view).
* **Eyes follow frame** / **Eye closure** (audio models trained with an eye track, ``use_eye``): on, the
  eyes are those of the driving frame (the Time slider's or the dataset frame's; open for an audio
  window); the Eye closure slider (0 open .. 1 shut) sets them instead and switches "follow" off.
* **Driver clip** / **Load driver clip** / **Driver clip position**: a face video (tracked and mapped into
  the subject's expression basis, as ``sahs-render --driver clip.mp4`` does; frames without a face are
  left out) or a driving file (``.npy``, transforms ``.json``, audio); the position slider (0 .. 1) plays it
  frame by frame, so the transfer can be seen before rendering a video.
* **PC1 .. PC8** (expression models): the leading principal components of the training expression
  codes, in standard deviations (-3 .. 3), each labelled with the share of variance it explains
  (``PC1 (51%)``);
  **Sliders from dataset frame** projects the frame's expression onto them; **Reset expression**
  puts them back at the mean expression.
* **Render frames/s** (read only): the rate of the viewer's last frame, ``1 / seconds`` of the model's
  ``get_outputs_for_camera`` for it, with the frame's size (the viewer renders small while the camera moves).
  nerfstudio's viewer has no render hook, so when it sets the panel up (:class:`~sahs_nerfstudio.viewer.camera_sync.FrameCameraControl`) the
  model's ``get_outputs_for_camera`` is wrapped (:func:`~sahs_nerfstudio.viewer.camera_sync.time_viewer_renders`); only calls from the viewer's
  render threads are timed, so evaluation and ``sahs-render`` frames never show up there.

The model asks :meth:`AvatarControls.driving_code` and :meth:`AvatarControls.pose` only for cameras
that carry no conditioning of their own (the viewer's, spiral renders), so dataset renders,
evaluation and the driven renderer never depend on the panel. Without a viewer the elements keep
their default values (drive by viewer time, pose follows camera): the model behaves as before.

The GUI handles the viewer attaches are not picklable: pickling or deep-copying the model keeps
the control values and rebuilds fresh, uninstalled elements.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerCheckbox,
    ViewerDropdown,
    ViewerElement,
    ViewerParameter,
    ViewerSlider,
    ViewerText,
)
from torch import Tensor, nn

from sahs_nerfstudio.viewer.camera_sync import FrameCameraControl
from sahs_nerfstudio.viewer.expression_pca import NUM_COMPONENTS, expression_pca

if TYPE_CHECKING:
    from sahs_nerfstudio.models.sahs_model import SAHSModel

VIEWER_TIME = "viewer time"
DATASET_FRAME = "dataset frame"
EXPRESSION_SLIDERS = "expression sliders"
AUDIO_WINDOW = "audio window"
DRIVER_CLIP = "driver clip"

SLIDER_RANGE = 3.0
"""The component sliders span +-3 standard deviations."""
SLIDER_STEP = 0.01


class ViewerReadout(ViewerText):
    """A read-only text the server writes. Installed without an update callback: nerfstudio's viewer re-renders
    whenever an element's value changes, so a readout that each render writes would re-render forever."""

    def __init__(self, name: str, default_value: str, hint: str | None = None) -> None:
        super().__init__(name, default_value, disabled=True, hint=hint)

    def install(self, viser_server: Any) -> None:
        """Create the GUI handle only (no ``on_update``: the viewer's re-render hook never fires)."""
        self._create_gui_handle(viser_server)


class AvatarControls(nn.Module):
    """The viewer panel that drives a SAHS model (see the module docstring)."""

    pca_mean: Tensor
    pca_components: Tensor
    pca_std: Tensor
    pca_explained: Tensor
    expressions: Tensor
    viewer_control: FrameCameraControl

    def __init__(
        self,
        driver_kind: str,
        train_drivers: Float[Tensor, "N D"],
        num_audio_windows: int = 0,
        uses_pose: bool = False,
        num_components: int = NUM_COMPONENTS,
        uses_eye: bool = False,
    ) -> None:
        super().__init__()
        self.uses_eye = bool(uses_eye)
        self.driver_kind = driver_kind
        self.num_frames = int(train_drivers.shape[0])
        self.num_audio_windows = int(num_audio_windows)
        self.uses_pose = bool(uses_pose)
        pca = expression_pca(train_drivers, num_components if driver_kind == "expression" else 0)
        self.register_buffer("pca_mean", pca.mean, persistent=False)
        self.register_buffer("pca_components", pca.components, persistent=False)
        self.register_buffer("pca_std", pca.std, persistent=False)
        self.register_buffer("pca_explained", pca.explained, persistent=False)
        # The training expressions, for "sliders from dataset frame" (expression models only).
        expressions = train_drivers.detach().float().clone() if driver_kind == "expression" else torch.zeros(0)
        self.register_buffer("expressions", expressions, persistent=False)
        self.num_components = int(pca.components.shape[0])
        self.basis_file: Path | None = None
        """The subject's expression basis (``expression_basis.npz`` in its dataset), for driver videos."""
        self._driver_rows: Tensor | None = None
        self._driver_eyes: np.ndarray | None = None
        self._frozen_pose: Tensor | None = None
        self.last_render: tuple[float, int, int] | None = None
        """The viewer's last frame: (frames/s, width, height); None before the first."""
        self.audio_window: tuple[int, int] | None = None
        """The audio window ``(W, C)`` an audio model takes: a loaded recording is cut into these."""
        self.driver_spec: Any = None
        """What the model accepts as a driver (a :class:`~sahs_nerfstudio.driving.DriverSpec`, set by
        :meth:`for_model`): a loaded clip gets the same check as ``sahs-render``'s."""
        self._element_names: list[str] = []
        self._build_elements({})

    @classmethod
    def for_model(cls, model: "SAHSModel") -> "AvatarControls":
        from sahs_nerfstudio.driving.sequence import DriverSpec

        table = model.audio_table
        controls = cls(
            driver_kind=model.driver_kind,
            train_drivers=model.train_drivers,
            num_audio_windows=int(table.shape[0]) if table.ndim == 3 else 0,
            uses_pose=bool(model.field_config.resolved().use_pose),
            uses_eye=bool(getattr(model, "uses_eye", False)),
        )
        controls.driver_spec = spec = DriverSpec.of(model)
        if spec.kind == "audio":
            controls.audio_window = (int(spec.shape[0]), int(spec.shape[1]))
        return controls

    # ------------------------------------------------------------------------------------------
    # Elements

    def modes(self) -> list[str]:
        modes = [VIEWER_TIME, DATASET_FRAME]
        if self.num_components > 0:
            modes.append(EXPRESSION_SLIDERS)
        if self.num_audio_windows > 0:
            modes.append(AUDIO_WINDOW)
        return modes + [DRIVER_CLIP]

    def _add(self, name: str, element: ViewerElement) -> None:
        # Plain attribute (not a submodule): nerfstudio's parse_object finds it through dir().
        object.__setattr__(self, name, element)
        self._element_names.append(name)

    def elements(self) -> dict[str, ViewerElement]:
        """The viewer elements by attribute name, in panel order."""
        return {name: getattr(self, name) for name in self._element_names}

    def _build_elements(self, values: dict[str, Any]) -> None:
        self._element_names = []

        def value(name: str, default: Any) -> Any:
            return values.get(name, default)

        modes = self.modes()
        mode = value("el00_drive_by", VIEWER_TIME)
        self._add(
            "el00_drive_by",
            ViewerDropdown(
                "Drive by",
                mode if mode in modes else VIEWER_TIME,
                modes,
                hint="What drives the avatar: the Time slider's nearest training frame, a dataset frame, "
                "the expression sliders or an audio window",
            ),
        )
        last_frame = max(self.num_frames - 1, 1)
        self._add(
            "el01_frame",
            ViewerSlider(
                "Dataset frame",
                int(value("el01_frame", 0)),
                0,
                last_frame,
                1,
                cb_hook=lambda _: self._switch_mode(DATASET_FRAME),
                hint=f"Training frame 0..{self.num_frames - 1} whose driving code is rendered",
            ),
        )
        if self.num_audio_windows > 0:
            self._add(
                "el02_audio_window",
                ViewerSlider(
                    "Audio window",
                    int(value("el02_audio_window", 0)),
                    0,
                    max(self.num_audio_windows - 1, 1),
                    1,
                    cb_hook=lambda _: self._switch_mode(AUDIO_WINDOW),
                    hint=f"Window 0..{self.num_audio_windows - 1} of the dataset's audio features",
                ),
            )
        if self.uses_pose:
            self._add(
                "el03_pose_follows",
                ViewerCheckbox(
                    "Pose follows camera",
                    bool(value("el03_pose_follows", True)),
                    hint="On: the pose code is the viewer camera's; off: frozen at the last one",
                ),
            )
        if self.uses_eye:
            self._add(
                "el04_eye_follows",
                ViewerCheckbox(
                    "Eyes follow frame",
                    bool(value("el04_eye_follows", True)),
                    hint="On: the driving frame's own eyes; off: the Eye closure slider",
                ),
            )
            self._add(
                "el05_eye",
                ViewerSlider(
                    "Eye closure",
                    float(value("el05_eye", 0.0)),
                    0.0,
                    1.0,
                    SLIDER_STEP,
                    cb_hook=lambda _: self._set_eyes_follow(False),
                    hint="The eye channel (OpenFace AU45 / 2): 0 open .. 1 shut",
                ),
            )
        self._add(
            "el06_driver_path",
            ViewerText(
                "Driver clip",
                str(value("el06_driver_path", "")),
                hint="A face video (.mp4, .mov, ...) or a driving file (.npy, .json, .wav); then Load driver clip",
            ),
        )
        self._add("el07_driver_load", ViewerButton("Load driver clip", cb_hook=lambda _: self.load_driver()))
        self._add(
            "el08_driver_position",
            ViewerSlider(
                "Driver clip position",
                float(value("el08_driver_position", 0.0)),
                0.0,
                1.0,
                0.001,
                cb_hook=lambda _: self._switch_mode(DRIVER_CLIP),
                hint="Where in the loaded driver clip (0: first frame, 1: last)",
            ),
        )
        for k in range(self.num_components):
            share = 100.0 * float(self.pca_explained[k])
            name = f"el{10 + k:02d}_pc{k}"
            self._add(
                name,
                ViewerSlider(
                    f"PC{k + 1} ({share:.0f}%)",
                    float(value(name, 0.0)),
                    -SLIDER_RANGE,
                    SLIDER_RANGE,
                    SLIDER_STEP,
                    cb_hook=lambda _: self._switch_mode(EXPRESSION_SLIDERS),
                    hint=f"Principal component {k + 1} of the training expressions ({share:.1f}% of their "
                    "variance), in standard deviations from the mean expression",
                ),
            )
        if self.num_components > 0:
            self._add("el90_from_frame", ViewerButton("Sliders from dataset frame", cb_hook=self._sliders_from_frame))
            self._add("el91_reset", ViewerButton("Reset expression", cb_hook=self._reset_sliders))
        self._add(
            "el92_look_through",
            ViewerButton(
                "View from dataset frame", cb_hook=lambda _: self.viewer_control.look_through(self.frame_index())
            ),
        )
        # Read only: the viewer's render threads write it (record_render), never the user.
        self._add(
            "el93_render_fps",
            ViewerReadout(
                "Render frames/s",
                "-",
                hint="The viewer's last frame: 1 / seconds of the model's rendering (get_outputs_for_camera), "
                "at the frame's size",
            ),
        )
        # Not a ViewerElement: nerfstudio sets it up with the viewer (it moves the viewer's camera).
        object.__setattr__(self, "viewer_control", FrameCameraControl(self))

    def component_sliders(self) -> list[ViewerSlider]:
        return [getattr(self, f"el{10 + k:02d}_pc{k}") for k in range(self.num_components)]

    def _switch_mode(self, mode: str) -> None:
        dropdown: ViewerDropdown = self.el00_drive_by  # type: ignore[attr-defined]
        if dropdown.value != mode:
            dropdown.value = mode

    def _set_eyes_follow(self, follow: bool) -> None:
        checkbox: ViewerCheckbox = self.el04_eye_follows  # type: ignore[attr-defined]
        if bool(checkbox.value) != follow:
            checkbox.value = follow

    def load_driver(self, path: str | Path | None = None) -> bool:
        """Load a driver clip (the Driver clip field's path when ``path`` is None) for the driver-clip mode; a
        file that cannot drive this model is one printed line and keeps the clip loaded before."""
        from sahs_nerfstudio.data.audio import CHANNELS as AUDIO_CHANNELS
        from sahs_nerfstudio.data.audio import WINDOW as AUDIO_WINDOW_SIZE
        from sahs_nerfstudio.driving.sequence import VIDEO_SUFFIXES, check_driver, load_driver, load_video_driver
        from sahs_nerfstudio.errors import FormatError

        path = Path(str(self.el06_driver_path.value if path is None else path))  # type: ignore[attr-defined]
        kind = "audio" if self.driver_kind == "audio" else "expression"
        window, channels = self.audio_window if self.audio_window is not None else (AUDIO_WINDOW_SIZE, AUDIO_CHANNELS)
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                seq = load_video_driver(
                    path, kind, self.basis_file, window=window, channels=channels, skip_missing=True
                )
            else:
                seq = load_driver(path, window=window, channels=channels)
            rows = np.asarray(seq.rows, dtype=np.float32)
            if self.driver_spec is not None:
                check_driver(seq, self.driver_spec)  # here, not in the render thread: one line, the old clip kept
            elif seq.kind != kind or (kind == "expression" and rows.shape[1] != int(self.expressions.shape[1])):
                raise FormatError(path, seq.field_name, f"{kind} rows for this model", f"{seq.kind} rows {rows.shape}")
        except FormatError as err:
            CONSOLE.print(f"driver clip not loaded: {err}", markup=False, soft_wrap=True)
            return False
        self._driver_rows = torch.from_numpy(rows)
        self._driver_eyes = seq.eye_closure
        CONSOLE.print(f"driver clip: {path}: {len(rows)} frames", markup=False)
        self._switch_mode(DRIVER_CLIP)
        return True

    def driver_index(self) -> int:
        """The loaded clip's frame at the position slider."""
        if self._driver_rows is None:
            return 0
        position = min(max(float(self.el08_driver_position.value), 0.0), 1.0)  # type: ignore[attr-defined]
        return int(round(position * (len(self._driver_rows) - 1)))

    def _sliders_from_frame(self, _: Any = None) -> None:
        code = self.expressions[self.frame_index()]
        for slider, coeff in zip(self.component_sliders(), self.project(code).tolist(), strict=False):
            slider.value = float(max(-SLIDER_RANGE, min(SLIDER_RANGE, round(coeff, 2))))
        self._switch_mode(EXPRESSION_SLIDERS)

    def _reset_sliders(self, _: Any = None) -> None:
        for slider in self.component_sliders():
            slider.value = 0.0
        self._switch_mode(EXPRESSION_SLIDERS)

    # ------------------------------------------------------------------------------------------
    # Values

    @property
    def mode(self) -> str:
        return str(self.el00_drive_by.value)  # type: ignore[attr-defined]

    def frame_index(self) -> int:
        return int(min(max(round(float(self.el01_frame.value)), 0), self.num_frames - 1))  # type: ignore[attr-defined]

    def audio_window_index(self) -> int:
        if self.num_audio_windows == 0:
            return 0
        value = float(self.el02_audio_window.value)  # type: ignore[attr-defined]
        return int(min(max(round(value), 0), self.num_audio_windows - 1))

    def follows_camera(self) -> bool:
        return not self.uses_pose or bool(self.el03_pose_follows.value)  # type: ignore[attr-defined]

    def coefficients(self) -> Float[Tensor, " K"]:
        return torch.tensor([float(s.value) for s in self.component_sliders()], dtype=torch.float32)

    def set_coefficients(self, values: list[float]) -> None:
        for slider, v in zip(self.component_sliders(), values, strict=False):
            slider.value = float(v)

    def slider_code(self) -> Float[Tensor, "1 D"]:
        """The expression ``mean + sum_k a_k std_k v_k`` of the component sliders."""
        coeff = self.coefficients().to(self.pca_std.device)
        return (self.pca_mean + (coeff * self.pca_std) @ self.pca_components)[None]

    def project(self, code: Float[Tensor, " D"]) -> Float[Tensor, " K"]:
        """Slider values (standard deviations) of an expression's leading components."""
        centred = code.to(self.pca_mean) - self.pca_mean
        return (centred @ self.pca_components.T) / self.pca_std.clamp(min=1e-12)

    # ------------------------------------------------------------------------------------------
    # What the model asks

    @torch.no_grad()
    def driving_code(self, model: "SAHSModel") -> Float[Tensor, "1 code"] | None:
        """The code the panel asks for, or None to let the model use the camera's time."""
        mode = self.mode
        device = model.device
        if mode == DATASET_FRAME:
            f = self.frame_index()
            return model.training_frame_code(f)
        if mode == EXPRESSION_SLIDERS and self.num_components > 0:
            return self.slider_code().to(device)
        if mode == AUDIO_WINDOW and self.num_audio_windows > 0:
            i = self.audio_window_index()
            window = model.audio_table[i : i + 1].reshape(1, -1)
            return model.encode_driver(window, torch.tensor([[float(i)]], device=device))
        if mode == DRIVER_CLIP and self._driver_rows is not None:
            row = self._driver_rows[self.driver_index()].reshape(1, -1).to(device)
            return row if self.driver_kind != "audio" else model.encode_driver(row)
        return None

    @torch.no_grad()
    def eye(self, model: "SAHSModel") -> Float[Tensor, "1 1"] | None:
        """The eye closure the panel asks for, or None to let the model use the camera's time (or no eye input)."""
        if not self.uses_eye:
            return None
        device = model.device
        if not bool(self.el04_eye_follows.value):  # type: ignore[attr-defined]
            value = min(max(float(self.el05_eye.value), 0.0), 1.0)  # type: ignore[attr-defined]
            return torch.tensor([[value]], device=device)
        if self.mode == DATASET_FRAME and model.train_eye.numel() > 0:
            f = self.frame_index()
            return model.train_eye[f : f + 1].to(device)
        if self.mode == AUDIO_WINDOW:
            return torch.zeros(1, 1, device=device)  # an audio window has no eyes of its own: open
        if self.mode == DRIVER_CLIP and self._driver_rows is not None:
            if self._driver_eyes is None:
                return torch.zeros(1, 1, device=device)
            return torch.tensor([[float(self._driver_eyes[self.driver_index()])]], device=device)
        return None

    def record_render(self, seconds: float, width: int, height: int) -> float:
        """Show a viewer frame of ``width`` x ``height`` that took ``seconds`` to render as frames/s on the
        panel; returns the frames/s."""
        fps = 1.0 / max(seconds, 1e-9)
        self.last_render = (fps, width, height)
        self.el93_render_fps.value = f"{fps:.2f} ({width}x{height})"  # type: ignore[attr-defined]
        return fps

    def pose(self, pose: Float[Tensor, "1 6"]) -> Float[Tensor, "1 6"]:
        """The camera's pose code while following; the last followed one while frozen."""
        if self.follows_camera() or self._frozen_pose is None:
            self._frozen_pose = pose.detach().clone()
            return pose
        return self._frozen_pose.to(pose.device)

    # ------------------------------------------------------------------------------------------
    # Pickling: GUI handles cannot be pickled; keep values, rebuild fresh elements.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        values = {}
        state.pop("viewer_control", None)
        for name in self._element_names:
            element = state.pop(name, None)
            if isinstance(element, ViewerParameter):
                values[name] = element.value
        state["_element_values"] = values
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        values = state.pop("_element_values", {})
        super().__setstate__(state)
        self._build_elements(values)


def attach_avatar_controls(model: "SAHSModel", basis_file: Path | None = None) -> AvatarControls:
    """Build the panel for ``model`` and set it as ``model.avatar``, where the viewer and the model find it;
    ``basis_file``: the subject's expression basis, for driver videos."""
    controls = AvatarControls.for_model(model)
    controls.basis_file = basis_file
    model.avatar = controls
    return controls
