"""Let torch >= 2.6 load nerfstudio 1.1.5 checkpoints (written against nerfstudio 1.1.5, numpy 1.26, torch 2.14).

torch unpickles checkpoints "weights only" by default since 2.6 and refuses the numpy scalars and
dtypes that nerfstudio 1.1.5's trainer saves next to the weights (its ``torch.load`` calls in
``Trainer._load_checkpoint`` and ``eval_utils.eval_load_checkpoint`` pass no ``weights_only``), so
resuming, ``ns-eval``, ``ns-render`` and ``ns-viewer --load-config`` would fail on every checkpoint.
Allowing exactly those numpy types keeps the safe loader (no arbitrary code) and makes them load.

Nothing is registered on import: whatever loads a checkpoint calls :func:`allow_nerfstudio_checkpoints`
first (the SAHS pipeline does when it is built, which covers ``ns-train`` and ``eval_setup``).
"""

from __future__ import annotations

import numpy as np
import torch

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose checkpoints this was written for."""


def numpy_safe_globals() -> list:
    """The numpy types a nerfstudio checkpoint holds: the scalar reconstructor, ``np.dtype`` and its classes."""
    scalar = np.core.multiarray.scalar  # type: ignore[attr-defined]
    return [scalar, np.dtype, *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]


def allow_nerfstudio_checkpoints() -> None:
    """Register :func:`numpy_safe_globals` with torch's weights-only unpickler (process-wide, idempotent)."""
    torch.serialization.add_safe_globals(numpy_safe_globals())
