"""The time budget's schedule: how many steps a budget holds, stretching a run's step-counted schedules to them, and
learning-rate decays that follow the budget's clock.

One home for it: :class:`~sahs_nerfstudio.trainer.SAHSTrainer` calls these at its steps (``max_train_seconds``,
``fit_schedule_after``) and the benchmarks' worker calls :func:`fit_schedule`. ``trainer`` is anything with nerfstudio's
``config.optimizers`` (a dict of ``{"optimizer", "scheduler"}`` configs) and ``pipeline.model``; nothing here imports
nerfstudio's trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


def fit_schedule(trainer: Any, steps: int) -> None:
    """Stretch every step-counted schedule of a run to ``steps``: the optimisers' decay (nerfstudio's schedulers
    read ``max_steps`` from their config at every step) and the model's own (``fit_schedule``)."""
    set_decay_steps(trainer, int(steps))
    model = trainer.pipeline.model
    fit = getattr(model, "fit_schedule", None)
    if fit is not None:
        fit(int(steps))


def follow_budget(
    trainer: Any, steps_done: int, fraction: float, start_step: int = 0, start_progress: float = 0.0
) -> None:
    """Learning-rate decays that end with the time budget: every scheduler's ``max_steps`` is set so that the decay's
    progress (step / max_steps) is ``start_progress`` plus the budget's elapsed ``fraction`` of the rest, at the
    global step ``start_step + steps_done``. A fresh run (``start_step`` 0, ``start_progress`` 0) decays with the
    clock; a run resumed with ``--load-dir`` goes on from where its checkpoint's decay stood instead of jumping back
    up. A step count fitted once overshoots or undershoots when steps get cheaper (the proposal networks' warm-up
    updates them every step, then one step in five: the demo's steps go from 0.25 to 0.13 s)."""
    progress = start_progress + (1.0 - start_progress) * min(max(fraction, 0.0), 1.0)
    if progress <= 0:
        return
    step = start_step + steps_done
    set_decay_steps(trainer, max(int(round(step / progress)), step + 1))


def decay_steps(trainer: Any) -> Optional[int]:
    """The longest ``max_steps`` of the run's schedulers (None when none has one)."""
    steps = [
        int(group["scheduler"].max_steps)
        for group in trainer.config.optimizers.values()
        if group.get("scheduler") is not None and hasattr(group["scheduler"], "max_steps")
    ]
    return max(steps) if steps else None


def set_decay_steps(trainer: Any, steps: int) -> None:
    """Every optimiser scheduler's ``max_steps`` (never inside its warm-up)."""
    for group in trainer.config.optimizers.values():
        scheduler = group.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = max(steps, getattr(scheduler, "warmup_steps", 0) + 1)


def budget_steps(budget_s: float, elapsed_s: float, steps_done: int, per_step_s: float) -> int:
    """How many steps a run of ``budget_s`` seconds holds: the ``steps_done`` steps that took ``elapsed_s``, then the
    rest of the budget at ``per_step_s`` a step."""
    return steps_done + max(int((budget_s - elapsed_s) / max(per_step_s, 1e-9)), 0)


def rank0_values(values: List[float], device: Any = "cpu") -> List[float]:
    """``values`` as rank 0 has them, on every rank of a distributed run (unchanged in a single process). Decisions
    taken from a clock (the fitted schedule, the budget's elapsed fraction, stopping) must agree between ranks: a rank
    that stops one step early leaves the others waiting in the gradient all-reduce, and ranks with different learning
    rates drift apart."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return list(values)
    on = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=on)
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def clock(device: Any) -> float:
    """``time.perf_counter()`` once the device's queued work is done: CUDA launches return before the work does."""
    if torch.cuda.is_available() and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class BudgetSchedule:
    """A run's policy under a time budget, called after every step: at ``fit_after`` steps of this process, fit
    the schedules to the steps the rest of the budget holds at the measured rate (step 1 left out: it carries
    one-off costs, a kernel build, lazy caches, that once made a 0.15 s step look like 2.4 s and fitted a
    3,500-step budget's schedules to 248 steps); after it, keep the learning-rate decays on the budget's clock.
    The trainer (``max_train_seconds``, ``fit_schedule_after``) and the benchmark's worker both use it, so the
    benchmark trains what ``make demo`` trains."""

    budget_s: float
    """Seconds of training the run may use."""
    fit_after: Optional[int] = None
    """Steps of this process timed before the fit (None: no fit, the budget only stops the run)."""
    start_step: int = 0
    """Global step this process started at (a run resumed with ``--load-dir``)."""
    start_progress: float = 0.0
    """How far the loaded checkpoint's decays had gone (0 for a fresh run)."""
    first_step_s: Optional[float] = None
    """Training seconds at the end of this process's first step."""
    fitted_steps: Optional[int] = None
    """This process's step count the schedules were fitted to (None before the fit)."""
    seconds_per_step: Optional[float] = None
    """The rate measured for the fit."""

    def after_step(self, trainer: Any, done: int, elapsed_s: float) -> bool:
        """After this process's ``done``-th step, ``elapsed_s`` seconds into the budget: fit or follow; True when the
        budget is spent."""
        if self.first_step_s is None:
            self.first_step_s = elapsed_s
        if self.fit_after is not None:
            fit_at = max(self.fit_after, 2)
            if done == fit_at:
                self.seconds_per_step = (elapsed_s - self.first_step_s) / (done - 1)
                self.fitted_steps = budget_steps(self.budget_s, elapsed_s, done, self.seconds_per_step)
                fit_schedule(trainer, self.start_step + self.fitted_steps)
            if done > fit_at or self.start_step > 0:
                # a resumed run follows the clock from its first step: its config's decay length is a first guess
                follow_budget(trainer, done, elapsed_s / self.budget_s, self.start_step, self.start_progress)
        return elapsed_s >= self.budget_s

    def fit_message(self) -> str:
        """The line said at the fit."""
        assert self.fitted_steps is not None and self.seconds_per_step is not None and self.fit_after is not None
        return (
            f"measured {self.seconds_per_step:.3f} s a step over steps 2-{max(self.fit_after, 2)}: schedules fitted to "
            f"{self.fitted_steps} steps in the {self.budget_s:g} s budget (learning rates then decay with the budget's "
            "clock)"
        )
