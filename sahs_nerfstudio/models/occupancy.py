"""Empty-space skipping for ``sahs-fast``: an occupancy grid over the scene box, nerfacc-style, in plain torch.

A ``resolution^3`` grid over the scene box (observation space: where the samples are) keeps, per cell, a decaying
maximum of the field's opacity over a cell's width, ``density * cell_size``, measured at a jittered point of the
cell with the conditioning (driving code, pose) of a training ray, a different one per cell and per update. So the
grid is an envelope over the expressions seen in training, as the proposal networks are. A cell is occupied when its
value exceeds ``min(threshold, mean)`` (nerfacc's rule: a field that is still faint everywhere skips nothing), then
the occupied set is dilated by ``dilation`` cells, a margin for expressions and warps between updates.

Samples in unoccupied cells (and outside the box, where the field's density is zero by construction) are not
evaluated: they read zero density and contribute nothing, in training (no gradient would reach them anyway beyond
that of a near-zero density) and in rendering. Before ``start_step`` every cell inside the box is occupied.

Updates follow nerfacc: every cell until the first update after ``start_step``, then a random quarter of the cells
and up to as many occupied ones (occupied cells are where change matters; empty ones are revisited at random, so a
region the field fills later is found again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

DensityFn = Callable[[Float[Tensor, "M 3"], Tensor], Float[Tensor, "M 1"]]
"""Density at points given the indices of the conditioning rows to use for each (``[M]`` into the stash)."""


@dataclass
class OccupancyGridConfig:
    """The occupancy grid of :class:`OccupancyGrid` (``sahs-fast``'s empty-space skipping)."""

    enabled: bool = False
    """Skip samples in cells the grid marks empty (training and rendering); False evaluates every sample. Off by
    default: on the benchmark's synthetic subject (BENCHMARKS.md, 2026-12-07) it trained 1.29x the rays/s of the
    kernel alone but scored lower on every seed (-0.45 to -1.19 dB held-out PSNR at equal steps)."""
    resolution: int = 48
    """Cells along each axis of the scene box."""
    update_every: int = 16
    """Training steps between two updates."""
    start_step: int = 256
    """Skipping starts with the first update at or after this step (the field has taken shape by then)."""
    threshold: float = 0.01
    """Opacity over one cell width (``density * cell size``) above which a cell is occupied (capped by the mean)."""
    decay: float = 0.95
    """Per-update decay of a cell's remembered opacity before the maximum with its new value."""
    dilation: int = 1
    """Occupied cells grow by this many cells in every direction (a margin for unseen expressions)."""


class OccupancyGrid(nn.Module):
    """Cell opacities and the occupied mask of a box, with point queries and nerfacc-style updates.

    Args:
        config: the grid's configuration.
        aabb: the box ``[[min xyz], [max xyz]]``.
    """

    def __init__(self, config: OccupancyGridConfig, aabb: Float[Tensor, "2 3"]) -> None:
        super().__init__()
        self.config = config
        r = int(config.resolution)
        if r < 2:
            raise ValueError(f"occupancy resolution must be >= 2, got {r}")
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("opacity", torch.zeros(r, r, r))
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._active_on_host: bool | None = False  # the buffer's value, kept on the host (None: read it once)

    @property
    def is_active(self) -> bool:
        """Whether the grid has been measured (the ``active`` buffer), without a device sync on every query: the
        host copy is refreshed by :meth:`update` and after a state dict is loaded."""
        if self._active_on_host is None:
            self._active_on_host = bool(self.active)
        return self._active_on_host

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._active_on_host = None

    @property
    def resolution(self) -> int:
        return int(self.config.resolution)

    def cell_size(self) -> float:
        """The largest side of one cell (scene units)."""
        aabb: Tensor = self.aabb  # type: ignore[assignment]
        return float(((aabb[1] - aabb[0]) / self.resolution).max())

    def _cells(self, positions: Float[Tensor, "*bs 3"]) -> tuple[Tensor, Bool[Tensor, "*bs"]]:
        aabb: Tensor = self.aabb  # type: ignore[assignment]
        unit = (positions - aabb[0]) / (aabb[1] - aabb[0])
        inside = ((unit >= 0.0) & (unit < 1.0)).all(dim=-1)
        cell = (unit * self.resolution).long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (cell[..., 0] * r + cell[..., 1]) * r + cell[..., 2], inside

    def query(self, positions: Float[Tensor, "*bs 3"]) -> Bool[Tensor, "*bs"]:
        """Whether each point needs the field: inside the box and, once the grid is active, in an occupied cell."""
        index, inside = self._cells(positions)
        if not self.is_active:
            return inside
        occupied: Tensor = self.occupied  # type: ignore[assignment]
        return inside & occupied.flatten()[index]

    def occupied_fraction(self) -> float:
        """Share of occupied cells (1 before the grid is active)."""
        return float(self.occupied_share())

    def occupied_share(self) -> Tensor:
        """:meth:`occupied_fraction` as a 0-d tensor on the grid's device (no host sync: for per-step metrics)."""
        occupied: Tensor = self.occupied  # type: ignore[assignment]
        return occupied.float().mean() if self.is_active else torch.ones((), device=occupied.device)

    @torch.no_grad()
    def update(self, density_fn: DensityFn, num_conditions: int, step: int, chunk: int = 65536) -> bool:
        """Re-measure cells with ``density_fn`` (conditioning row per cell drawn from ``num_conditions``) if ``step``
        is an update step; True when it updated."""
        cfg = self.config
        if step < cfg.start_step or step % max(cfg.update_every, 1) != 0 or num_conditions < 1:
            return False
        r = self.resolution
        opacity: Tensor = self.opacity  # type: ignore[assignment]
        aabb: Tensor = self.aabb  # type: ignore[assignment]
        device = opacity.device
        total = r**3
        if int(self.updates) == 0:
            cells = torch.arange(total, device=device)
        else:
            random_cells = torch.randint(0, total, (total // 4,), device=device)
            occupied_cells = (opacity.flatten() > 0).nonzero()[:, 0]
            if occupied_cells.numel() > total // 4:
                occupied_cells = occupied_cells[torch.randperm(occupied_cells.numel(), device=device)[: total // 4]]
            cells = torch.cat([random_cells, occupied_cells])
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        unit = (ijk + torch.rand_like(ijk)) / r
        points = aabb[0] + unit * (aabb[1] - aabb[0])
        rows = torch.randint(0, num_conditions, (cells.numel(),), device=device)
        new = torch.cat([density_fn(points[s : s + chunk], rows[s : s + chunk]) for s in range(0, len(cells), chunk)])
        flat = opacity.flatten() * cfg.decay
        flat = flat.scatter_reduce(0, cells, new[:, 0].float() * self.cell_size(), reduce="amax")
        opacity.copy_(flat.view(r, r, r))
        limit = min(cfg.threshold, float(opacity.mean()))
        occupied = (opacity > limit).float()[None, None]
        if cfg.dilation > 0:
            k = 2 * cfg.dilation + 1
            occupied = F.max_pool3d(occupied, kernel_size=k, stride=1, padding=cfg.dilation)
        self.occupied.copy_(occupied[0, 0] > 0)  # type: ignore[operator]
        self.active.fill_(True)  # type: ignore[operator]
        self._active_on_host = True
        self.updates += 1  # type: ignore[operator]
        return True


def masked_density_fn(
    density_fn: Callable[[Tensor], Tensor], grid: OccupancyGrid
) -> Callable[[Float[Tensor, "*bs 3"]], Float[Tensor, "*bs 1"]]:
    """``density_fn`` (points -> density, e.g. a proposal network's) evaluated only at points the grid keeps;
    zero elsewhere."""

    def fn(positions: Tensor, times: Tensor | None = None) -> Tensor:
        del times
        keep = grid.query(positions)
        out = positions.new_zeros(*positions.shape[:-1], 1)
        if bool(keep.any()):
            out[keep] = density_fn(positions[keep]).to(out.dtype)
        return out

    return fn
