"""Whether a viser client has reported its camera yet (written against viser 0.2.7, as nerfstudio 1.1.5 pins it).

A viser 0.2.7 ``CameraHandle`` starts with zeros and learns the browser's camera from the client's
first camera message; until then every public getter (``position``, ``fov``, ``update_timestamp``...)
fails an ``assert``, and viser offers no "has reported" query. The private ``_state.update_timestamp``
stays ``0.0`` exactly until that first message (or until the server moves the camera), so it is read here.
"""

from __future__ import annotations

from typing import Any

VISER_VERSION = "0.2.7"
"""The viser release whose private camera state this reads."""


def camera_reported(camera: Any) -> bool:
    """Whether ``camera`` (a viser ``CameraHandle``) holds a camera state, i.e. its client reported one."""
    return camera._state.update_timestamp != 0.0
