"""The hash-grid encoding in plain torch: the reference the compiled kernel (``hash_grid.cpp``) is tested against, and
the path every non-CPU device (and ``grid_kernel="torch"``) runs.

Per level ``l``: ``scaled = x * scalings[l]``; the 8 corners ``floor(scaled) + {0,1}^3`` are hashed with Instant-NGP's
primes (XOR of the per-axis products, modulo the power-of-two table size, plus the level's offset into the table);
their features are blended trilinearly with weights from ``scaled - floor(scaled)``. The values equal nerfstudio
1.1.5's ``HashEncoding.pytorch_fwd`` to float rounding (``tests/test_fast.py``), in about half the time on a CPU: the
per-axis products are hashed once per axis instead of once per corner, in 32-bit integers when they fit (only the low
``log2(table_size)`` bits of each product matter), the corners are gathered with ``index_select`` and blended with
``lerp``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

INSTANT_NGP_PRIMES = (1, 2654435761, 805459861)
"""The per-axis primes of nerfstudio's ``HashEncoding.hash_fn`` (Instant-NGP's)."""


def hash_grid_torch(
    positions: Float[Tensor, "N 3"],
    table: Float[Tensor, "LT F"],
    scalings: Float[Tensor, " L"],
    offsets: Int[Tensor, " L"],
    table_size: int,
    max_scaling: float,
) -> Float[Tensor, "N LF"]:
    """The encoding of ``positions``: ``table`` holds every level's ``table_size`` rows one after another (level
    ``l`` starts at ``offsets[l]``); ``max_scaling`` is ``scalings.max()`` read once on the host (reading a GPU
    buffer in every call would sync the device)."""
    levels = scalings.shape[0]
    mask = table_size - 1
    scalings = scalings.to(positions.device, positions.dtype)
    scaled = positions.reshape(-1, 1, 3) * scalings.view(1, -1, 1)
    floor = torch.floor(scaled)
    frac = scaled - floor
    primes = tuple(p & mask for p in INSTANT_NGP_PRIMES)
    # (floor + 1) * prime must fit: int32 when it does, int64 otherwise.
    small = (max_scaling + 2) * table_size < 2**31
    cell = floor.int() if small else floor.long()
    x0, y0, z0 = cell[..., 0], cell[..., 1] * primes[1], cell[..., 2] * primes[2]
    x1, y1, z1 = x0 + 1, y0 + primes[1], z0 + primes[2]
    offset = offsets.to(positions.device).to(cell.dtype).view(1, levels)

    def corner(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        index = ((x ^ y ^ z) & mask) + offset
        # index_select (backward: index_add_) is several times faster on a CPU than advanced indexing.
        # int64 indices: index_add_ (the backward) is ~9x slower with int32 ones.
        return table.index_select(0, index.reshape(-1).long()).view(*index.shape, table.shape[-1])

    wx, wy, wz = frac[..., 0:1], frac[..., 1:2], frac[..., 2:3]
    c00 = torch.lerp(corner(x0, y0, z0), corner(x1, y0, z0), wx)
    c10 = torch.lerp(corner(x0, y1, z0), corner(x1, y1, z0), wx)
    c01 = torch.lerp(corner(x0, y0, z1), corner(x1, y0, z1), wx)
    c11 = torch.lerp(corner(x0, y1, z1), corner(x1, y1, z1), wx)
    out = torch.lerp(torch.lerp(c00, c10, wy), torch.lerp(c01, c11, wy), wz)
    return out.reshape(positions.shape[0], levels * table.shape[-1])
