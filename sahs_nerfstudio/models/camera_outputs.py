"""What a rendered camera returns: the outputs in menu order (the viewer shows the first), plus derived images."""

from __future__ import annotations

from nerfstudio.utils.colormaps import apply_float_colormap
from torch import Tensor

DISPLAY_ORDER: tuple[str, ...] = (
    "rgb",
    "semantics",
    "deformation_magnitude",
    "ambient_image",
    "depth",
    "accumulation",
)
"""Outputs listed first in the viewer's output menu (the first one is shown by default)."""


def display_outputs(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The outputs of a rendered camera, ordered for the viewer's menu, plus ``deformation_magnitude``.

    ``deformation_magnitude`` is the rendered ``|x' - x|`` through the turbo colour map, normalised
    by its maximum in the image (the raw ``deformation`` stays available for the viewer's own
    colour map with fixed limits). Two-channel outputs (the audio model's 2-d ambient coordinate) are
    left out: the viewer cannot colour-map two channels; ``ambient_image`` shows them.
    """
    extra: dict[str, Tensor] = {}
    deformation = outputs.get("deformation")
    if deformation is not None and deformation.shape[-1] == 1:
        scale = deformation.max().clamp(min=1e-12)
        extra["deformation_magnitude"] = apply_float_colormap((deformation / scale).clamp(0, 1), colormap="turbo")
    merged = {**outputs, **extra}
    ordered: dict[str, Tensor] = {key: merged[key] for key in DISPLAY_ORDER if key in merged}
    for key, value in merged.items():
        if key in ordered or (value.ndim >= 1 and value.shape[-1] == 2):
            continue
        ordered[key] = value
    return ordered
