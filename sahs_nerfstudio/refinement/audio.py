"""Audio features of the refiner's audio variant: one window ``[window, C]`` per frame.

A ``.npy`` holds either windows ``[N, window, C]`` (AD-NeRF ``aud.npy``) or per-frame features
``[N, C]`` / ``[N, k, C]`` (flattened to ``k*C``), windowed here (centred, edge-padded). Frame ->
row: the integer value of the frame's file stem when every stem is an integer (AD-NeRF names
frames by their index), else the frame's position in sorted order; video input: the frame index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.errors import FormatError


def load_audio_windows(path: Path, window: int, audio_dim: int) -> Float[np.ndarray, "N window C"]:
    """Loads audio features as windows ``[N, window, audio_dim]`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "--audio", "a .npy file of audio features", "no such file")
    try:
        arr = np.asarray(np.load(path), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad file
        raise FormatError(path, "--audio", "a .npy array of numbers", f"{type(exc).__name__}: {exc}") from None
    if arr.ndim == 3 and arr.shape[1] == window:
        windows = arr
    else:
        if arr.ndim == 3:
            arr = arr.reshape(arr.shape[0], -1)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise FormatError(path, "--audio", f"shape [N, {window}, C], [N, C] or [N, k, C]", f"{arr.shape}")
        half = window // 2
        padded = np.concatenate([np.repeat(arr[:1], half, 0), arr, np.repeat(arr[-1:], window - half, 0)], 0)
        idx = np.arange(arr.shape[0])[:, None] + np.arange(window)[None, :]
        windows = padded[idx]
    if windows.shape[2] != audio_dim:
        raise FormatError(
            path, "--audio", f"{audio_dim} feature channels (the refiner's audio_dim)", f"{windows.shape[2]}"
        )
    if not np.all(np.isfinite(windows)):
        raise FormatError(path, "--audio", "finite numbers", "NaN or infinity")
    return windows


def assign_audio_rows(names: Sequence[str], num_rows: int, source: Path | str) -> list[int]:
    """Audio row per frame: integer stems when all stems are integers, else sorted position."""
    rows = [int(n) for n in names] if names and all(n.isdigit() for n in names) else list(range(len(names)))
    bad = [(n, r) for n, r in zip(names, rows, strict=True) if r >= num_rows]
    if bad:
        check_audio_row(source, num_rows, bad[0][0], bad[0][1], len(bad))
    return rows


def check_audio_row(source: Path | str, num_rows: int, name: str, row: int, count: int = 1) -> None:
    """A FormatError when frame ``name`` needs a row past the end of the features."""
    if row >= num_rows:
        raise FormatError(
            source,
            "--audio",
            f"a row for every frame (frame '{name}' needs row {row})",
            f"{num_rows} rows" + (f" ({count} frames out of range)" if count > 1 else ""),
        )
