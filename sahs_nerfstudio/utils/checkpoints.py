"""Let torch >= 2.6 load nerfstudio 1.1.5 checkpoints.

torch now unpickles checkpoints "weights only" by default and refuses the numpy scalars and
dtypes that nerfstudio's trainer saves next to the weights, so ``ns-eval``, ``ns-render`` and
``ns-viewer --load-config`` would fail on every checkpoint. Allowing exactly those numpy types
keeps the safe loader (no arbitrary code) and makes the checkpoints load.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_safe_globals() -> list:
    scalar = np.core.multiarray.scalar  # type: ignore[attr-defined]
    return [scalar, np.dtype, *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]


def allow_nerfstudio_checkpoints() -> None:
    """Register the numpy types nerfstudio checkpoints hold with torch's weights-only unpickler."""
    torch.serialization.add_safe_globals(numpy_safe_globals())
