"""Where the refiner runs and how it reports progress: the torch device and one progress bar style."""

from __future__ import annotations

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sahs_nerfstudio.errors import flag_error


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise flag_error("--device", "auto, cpu, cuda or cuda:N", device) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise flag_error("--device", "a device of this machine (CUDA is not available)", device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise flag_error("--device", f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}", device)
    return dev


def progress_bar(enabled: bool) -> Progress:
    """A transient bar on nerfstudio's console; tasks carry a ``loss`` field (``-`` when there is none)."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        disable=not enabled,
        transient=True,
    )
