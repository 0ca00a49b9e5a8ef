"""Image metrics, computed one way for the model, the renderer, the refiner, the benchmark and the tests.

Full frame, nothing pasted back onto the ground truth (pasting inflates PSNR by about 5 dB):
PSNR, SSIM, LPIPS (AlexNet, only where its weights are already on disk: these machines are
offline), PSNR over the mouth (ground-truth mouth interior + lips) and the head (every class but
background, neck and torso), and the mean IoU of predicted labels.

Images are floats in [0, 1], ``[H, W, 3]`` (nerfstudio's layout) unless said otherwise; SSIM and
LPIPS also take batches ``[N, 3, H, W]`` (torchmetrics' layout, the refiner's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sahs_nerfstudio.data.semantics import BACKGROUND, MOUTH_CLASSES, MOUTH_INTERIOR, NECK, TORSO

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's AlexNet backbone file, which torchmetrics' LPIPS would download on first use."""

_lpips_warned = False


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Standard PSNR (MSE averaged over every value, channels included), data range 1."""
    mse = ((pred - target) ** 2).mean()
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def batch_nchw(image: Float[Tensor, "h w 3"] | Float[Tensor, "n 3 h w"]) -> Float[Tensor, "n 3 h w"]:
    """An ``[H, W, 3]`` image as a batch of one ``[1, 3, H, W]``; a 4-d batch as it is."""
    return image.permute(2, 0, 1)[None] if image.dim() == 3 else image


def ssim(
    pred: Float[Tensor, "h w 3"] | Float[Tensor, "n 3 h w"], target: Float[Tensor, "h w 3"] | Float[Tensor, "n 3 h w"]
) -> float:
    """torchmetrics' SSIM (Gaussian window 11, sigma 1.5), data range 1; the batch mean for batches."""
    from torchmetrics.functional import structural_similarity_index_measure

    value = structural_similarity_index_measure(batch_nchw(pred), batch_nchw(target), data_range=1.0)
    return float(value)  # type: ignore[arg-type]


def mouth_mask(labels: Int[Tensor, "*bs"]) -> Bool[Tensor, "*bs"]:
    """Pixels labelled mouth interior or lips."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for cls in MOUTH_CLASSES:
        mask |= labels == cls
    return mask


MOUTH_OPEN_FRACTION = 0.15
"""A frame's mouth counts as open when at least this share of its ground-truth mouth pixels (interior + lips) is
mouth interior. On the synthetic subject that is ``jaw_open`` above about 0.45 (closed lips show no interior)."""

MouthState = Literal["open", "closed"]


def mouth_state(labels: Int[Tensor, "*bs"]) -> MouthState | None:
    """``open`` / ``closed`` from ground-truth labels (:data:`MOUTH_OPEN_FRACTION`); None without mouth pixels."""
    mouth = int(mouth_mask(labels).sum())
    if mouth == 0:
        return None
    return "open" if int((labels == MOUTH_INTERIOR).sum()) >= MOUTH_OPEN_FRACTION * mouth else "closed"


def mouth_state_means(
    per_frame: Sequence[Mapping[str, float]], states: Sequence[MouthState | None]
) -> dict[str, float]:
    """Mean ``mouth_psnr`` over the frames whose mouth is open and over those where it is closed.

    Returns ``mouth_psnr_open`` / ``mouth_psnr_closed`` (only for a state with frames) and the frame counts
    ``frames_mouth_open`` / ``frames_mouth_closed``.
    """
    if len(per_frame) != len(states):
        raise ValueError(f"{len(per_frame)} frames of metrics but {len(states)} mouth states")
    out: dict[str, float] = {}
    for state in ("open", "closed"):
        values = [m["mouth_psnr"] for m, s in zip(per_frame, states, strict=True) if s == state and "mouth_psnr" in m]
        out[f"frames_mouth_{state}"] = float(len(values))
        if values:
            out[f"mouth_psnr_{state}"] = sum(values) / len(values)
    return out


def head_mask(labels: Int[Tensor, "*bs"]) -> Bool[Tensor, "*bs"]:
    """Pixels of a head class: neither background nor neck nor torso (nor unlabelled)."""
    return (labels > BACKGROUND) & (labels != NECK) & (labels != TORSO)


def region_psnr(
    pred: Float[Tensor, "h w 3"], target: Float[Tensor, "h w 3"], mask: Bool[Tensor, "h w"]
) -> float | None:
    """PSNR over the pixels of ``mask``; None when the mask is empty."""
    if not bool(mask.any()):
        return None
    return float(psnr(pred[mask], target[mask]))


def mean_iou(pred: Int[Tensor, "*bs"], target: Int[Tensor, "*bs"]) -> float:
    """Mean IoU over the classes present in the ground truth (ignored pixels, label < 0, excluded)."""
    valid = target >= 0
    pred, target = pred[valid], target[valid]
    ious = []
    for cls in torch.unique(target).tolist():
        p, t = pred == cls, target == cls
        ious.append(float((p & t).sum()) / max(float((p | t).sum()), 1.0))
    return sum(ious) / len(ious) if ious else math.nan


def image_metrics(
    pred: Float[Tensor, "h w 3"],
    target: Float[Tensor, "h w 3"],
    labels: Int[Tensor, "h w"] | None = None,
    pred_labels: Int[Tensor, "h w"] | None = None,
    mouth: Bool[Tensor, "h w"] | None = None,
    lpips: torch.nn.Module | None = None,
) -> dict[str, float]:
    """``psnr``, ``ssim``, and where their inputs exist ``lpips``, ``head_psnr``, ``mouth_psnr``, ``miou``.

    Args:
        pred: the render.
        target: the ground truth.
        labels: ground-truth class labels (head and mouth regions, mIoU).
        pred_labels: predicted labels (mIoU, with ``labels``).
        mouth: the mouth region when there are no labels (AD-NeRF's face rectangle); ignored with labels.
        lpips: a module from :func:`make_lpips` (None: no LPIPS).
    """
    metrics = {"psnr": float(psnr(pred, target)), "ssim": ssim(pred, target)}
    if lpips is not None:
        with torch.no_grad():
            metrics["lpips"] = float(lpips(batch_nchw(pred.clamp(0, 1)), batch_nchw(target)))
    if labels is not None:
        mouth = mouth_mask(labels)
        head = region_psnr(pred, target, head_mask(labels))
        if head is not None:
            metrics["head_psnr"] = head
        if pred_labels is not None:
            metrics["miou"] = mean_iou(pred_labels, labels)
    if mouth is not None:
        value = region_psnr(pred, target, mouth)
        if value is not None:
            metrics["mouth_psnr"] = value
    return metrics


# ----------------------------------------------------------------------------------------------
# LPIPS, only from weights on disk


def alexnet_weights_path() -> Path:
    """Where torchvision keeps (and torchmetrics would download) the AlexNet backbone."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def lpips_head_path() -> Path:
    """The LPIPS linear heads torchmetrics ships inside its wheel."""
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"


def lpips_unavailable() -> str | None:
    """Why LPIPS cannot be computed offline here, or None when every weight file is on disk."""
    for path, what in ((lpips_head_path(), "the LPIPS AlexNet head"), (alexnet_weights_path(), "AlexNet weights")):
        if not path.is_file():
            return f"LPIPS skipped: {what} not found at {path} (offline; nothing is downloaded)"
    return None


def lpips_or_reason() -> tuple[torch.nn.Module | None, str | None]:
    """torchmetrics' LPIPS (AlexNet, inputs ``[N, 3, H, W]`` in [0, 1]) in eval mode, or ``(None, why not)``."""
    reason = lpips_unavailable()
    if reason is not None:
        return None, reason
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval(), None


def make_lpips(device: torch.device | str | None = None) -> torch.nn.Module | None:
    """:func:`lpips_or_reason`'s module on ``device``, or None with one message per process."""
    global _lpips_warned
    metric, reason = lpips_or_reason()
    if metric is None:
        if not _lpips_warned:
            CONSOLE.print(reason, style="yellow", markup=False, soft_wrap=True)
            _lpips_warned = True
        return None
    return metric if device is None else metric.to(device)
