"""LPIPS (AlexNet) only where its weights are already on disk: these machines are offline.

torchmetrics ships the LPIPS linear heads but fetches torchvision's AlexNet backbone from the
internet on first use. We look for the backbone file first and, when it is absent, say so once
and return None so callers skip the metric instead of failing or downloading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_warned = False


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def make_lpips() -> Optional[torch.nn.Module]:
    """torchmetrics' LPIPS (AlexNet, inputs in [0, 1]) or None, with one message, when weights are absent."""
    global _warned
    path = alexnet_weights_path()
    if not path.is_file():
        if not _warned:
            CONSOLE.print(
                f"[yellow]LPIPS skipped: AlexNet weights not found at {path} (offline; nothing is downloaded)."
            )
            _warned = True
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
