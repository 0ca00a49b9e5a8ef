"""Start nerfstudio's stock models offline (written against nerfstudio 1.1.5 and torchmetrics 1.9).

nerfstudio 1.1.5's stock models (nerfacto, dnerf's vanilla NeRF, ...) build torchmetrics'
``LearnedPerceptualImagePatchSimilarity`` in ``populate_modules`` (``from torchmetrics.image.lpip import
...`` inside the method, or at module level), and torchmetrics downloads torchvision's AlexNet on first
use, which fails offline. The benchmark trains those models beside ours: when the AlexNet weights are
not on disk, :func:`disable_stock_lpips` replaces that class, in this process only, by a stub whose
score is NaN. Our own LPIPS (:mod:`sahs_nerfstudio.utils.metrics`) is never affected: it is computed
from weights on disk or not at all.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import torch

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose models build LPIPS this way."""
TORCHMETRICS_MODULE = "torchmetrics.image.lpip"
"""Where nerfstudio's models import the LPIPS class from."""
CLASS_NAME = "LearnedPerceptualImagePatchSimilarity"
"""The LPIPS class's name in torchmetrics and in the nerfstudio modules that import it."""


class NoLPIPS(torch.nn.Module):
    """Stands in for torchmetrics' LPIPS: takes any arguments, scores NaN."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.tensor(float("nan"))


def disable_stock_lpips(lpips_unavailable: Callable[[], Optional[str]]) -> bool:
    """When LPIPS cannot be computed offline (``lpips_unavailable()`` gives why: the project's
    :func:`~sahs_nerfstudio.utils.metrics.lpips_unavailable`), stub it out for the stock models of this process; True
    if so. The check is passed in: ``compat/`` imports nothing of the package."""
    if lpips_unavailable() is None:
        return False
    import torchmetrics.image
    import torchmetrics.image.lpip

    setattr(torchmetrics.image.lpip, CLASS_NAME, NoLPIPS)
    setattr(torchmetrics.image, CLASS_NAME, NoLPIPS)
    for name, module in list(sys.modules.items()):
        if name.startswith("nerfstudio.models.") and hasattr(module, CLASS_NAME):
            setattr(module, CLASS_NAME, NoLPIPS)
    return True
