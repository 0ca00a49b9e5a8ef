"""nerfstudio's Trainer with checkpoints that survive a crash, a full disk and Ctrl-C.

Differences from nerfstudio 1.1.5's Trainer, all about checkpoints (training is unchanged):

- saves go through :func:`~sahs_nerfstudio.checkpoint_io.write_checkpoint` (temporary file, fsync,
  rename, checksum), and "only the latest" keeps the newest two, so there is always an intact
  fallback;
- ``--load-dir`` loads the newest checkpoint that verifies, skipping a broken newer one with a
  warning; a broken ``--load-checkpoint`` file is one FormatError line;
- a full disk during a periodic save is one warning line and training goes on with the previous
  checkpoint kept; the final save (end of training, Ctrl-C) failing is a FormatError (exit 2);
- the first Ctrl-C finishes the current step, saves a checkpoint at it and exits with status 130;
  a second Ctrl-C quits at once without saving;
- ``max_train_seconds`` (on :class:`~sahs_nerfstudio.sahs_config.SAHSTrainerConfig`) ends training like the
  last step would once that much wall-clock time has gone into training steps (nerfstudio has only a step
  count): the demo's "10 minutes on 2 cores" whatever the machine's speed;
- ``fit_schedule_after`` (same config) measures the first steps and fits the schedules to the steps the
  budget allows (:func:`fit_schedule`), then keeps the learning-rate decays on the budget's clock
  (:func:`follow_budget`), so a slow machine does not stop half-way down its decay and a fast one does not
  idle at the final rate.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.checkpoint_io import (
    CheckpointNotSaved,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_newest_checkpoint,
    prune_checkpoints,
    warn,
    write_checkpoint,
)
from sahs_nerfstudio.errors import EXIT_INTERRUPTED


def fit_schedule(trainer: Trainer, steps: int) -> None:
    """Stretch every step-counted schedule of a run to ``steps``: the optimisers' decay (nerfstudio's schedulers
    read ``max_steps`` from their config at every step) and the model's own (``fit_schedule``)."""
    _set_decay_steps(trainer, int(steps))
    model = trainer.pipeline.model
    fit = getattr(model, "fit_schedule", None)
    if fit is not None:
        fit(int(steps))


def follow_budget(trainer: Trainer, steps_done: int, fraction: float) -> None:
    """Learning-rate decays that end with the time budget: every scheduler's ``max_steps`` becomes the step count
    of which ``steps_done`` is the budget's elapsed ``fraction``, so the rate decays with the clock. A step count
    fitted once overshoots or undershoots when steps get cheaper (the proposal networks' warm-up updates them every
    step, then one step in five: the demo's steps go from 0.25 to 0.13 s)."""
    if fraction <= 0:
        return
    _set_decay_steps(trainer, max(int(round(steps_done / min(fraction, 1.0))), steps_done + 1))


def _set_decay_steps(trainer: Trainer, steps: int) -> None:
    """Every optimiser scheduler's ``max_steps`` (never inside its warm-up)."""
    for group in trainer.config.optimizers.values():
        scheduler = group.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = max(steps, getattr(scheduler, "warmup_steps", 0) + 1)


def budget_steps(budget_s: float, elapsed_s: float, steps_done: int, per_step_s: float) -> int:
    """How many steps a run of ``budget_s`` seconds holds: the ``steps_done`` steps that took ``elapsed_s``, then the
    rest of the budget at ``per_step_s`` a step."""
    return steps_done + max(int((budget_s - elapsed_s) / max(per_step_s, 1e-9)), 0)


class _Interrupted(Exception):
    """Raised after the step during which Ctrl-C was pressed has finished."""


class SAHSTrainer(Trainer):
    """nerfstudio's Trainer with atomic, verified checkpoints and a Ctrl-C that saves."""

    _interrupt_requested: bool = False
    _completed_step: Optional[int] = None
    _final_save: bool = False
    _train_start: Optional[float] = None
    _first_step_end: Optional[float] = None
    _out_of_time: bool = False

    # ------------------------------------------------------------------------------------------
    # saving

    def checkpoint_state(self, step: int) -> Dict[str, Any]:
        """What nerfstudio 1.1.5 saves in a checkpoint (same keys, so every nerfstudio loader reads it)."""
        pipeline: Any = self.pipeline
        return {
            "step": step,
            "pipeline": pipeline.module.state_dict() if hasattr(pipeline, "module") else pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        path = self.checkpoint_dir / checkpoint_name(step)
        try:
            write_checkpoint(self.checkpoint_state(step), path)
        except CheckpointNotSaved as err:
            if self._final_save:
                raise
            warn(f"checkpoint not saved: {err}; training goes on")
            return
        if self.config.save_only_latest_checkpoint:
            prune_checkpoints(self.checkpoint_dir)

    # ------------------------------------------------------------------------------------------
    # loading

    def _load_checkpoint(self) -> None:
        load_dir, load_file = self.config.load_dir, self.config.load_checkpoint
        if load_dir is None and load_file is None:
            super()._load_checkpoint()
            return
        if load_dir is not None:
            path, state = load_newest_checkpoint(Path(load_dir), self.config.load_step)
        else:
            path = Path(load_file)  # type: ignore[arg-type]
            state = load_checkpoint(path)
        self._start_step = int(state["step"]) + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}", markup=False, soft_wrap=True)

    # ------------------------------------------------------------------------------------------
    # Ctrl-C

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupt_requested:
            raise KeyboardInterrupt
        self._interrupt_requested = True
        CONSOLE.print(
            "Ctrl-C: saving a checkpoint after the step in progress (press Ctrl-C again to quit without saving)",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            super().setup(test_mode)
        except KeyboardInterrupt:
            CONSOLE.print("interrupted before training started: nothing to save", markup=False)
            raise SystemExit(EXIT_INTERRUPTED) from None

    def train_iteration(self, step: int):
        if self._interrupt_requested and self._completed_step is not None:
            raise _Interrupted  # pressed between two steps: the last one is complete
        if self._train_start is None:
            self._train_start = time.perf_counter()
        out = super().train_iteration(step)
        self._completed_step = step
        if self._first_step_end is None:
            self._first_step_end = time.perf_counter()
        budget = getattr(self.config, "max_train_seconds", None)
        fit_after = getattr(self.config, "fit_schedule_after", None)
        if budget is not None and fit_after is not None:
            self._fit_to_budget(step, budget, max(fit_after, 2))
        if budget is not None and time.perf_counter() - self._train_start >= budget:
            # nerfstudio's loop checks stop_training before the next step and then saves, as after the last one.
            self.stop_training = True
            self._out_of_time = True
        if self._interrupt_requested:
            raise _Interrupted
        return out

    def _fit_to_budget(self, step: int, budget: float, fit_at: int) -> None:
        """At the ``fit_at``-th step of this process, fit the schedules to the steps the budget allows; after it,
        keep the learning-rate decays on the budget's clock."""
        assert self._train_start is not None and self._first_step_end is not None
        done = step - self._start_step + 1
        now = time.perf_counter()
        if done > fit_at:
            follow_budget(self, step + 1, (now - self._train_start) / budget)
        elif done == fit_at:
            # The rate leaves the first step out: it carries one-off costs (a kernel build, lazy caches) that once
            # made a 0.15 s step look like 2.4 s and fitted a 3,500-step budget's schedules to 248 steps.
            per_step = (now - self._first_step_end) / (fit_at - 1)
            steps = budget_steps(budget, now - self._train_start, fit_at, per_step)
            fit_schedule(self, steps)
            CONSOLE.print(
                f"measured {per_step:.3f} s a step over steps 2-{fit_at}: schedules fitted to {steps} "
                f"steps in the {budget:g} s budget (learning rates then decay with the budget's clock)",
                markup=False,
            )

    def _after_train(self) -> None:
        # Training is over: Ctrl-C in nerfstudio's "viewer stays open" loop must quit, not save.
        self._restore_sigint()
        self._final_save = True
        if self._out_of_time and self._completed_step is not None:
            CONSOLE.print(
                f"time budget of {getattr(self.config, 'max_train_seconds', None)} s reached after step "
                f"{self._completed_step}",
                markup=False,
            )
            self.step = self._completed_step  # the loop already advanced to the step it did not run
        super()._after_train()

    _previous_sigint: Any = None

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def train(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            super().train()
        except _Interrupted:
            self._restore_sigint()
            step = self._completed_step
            assert step is not None
            self._final_save = True
            self.save_checkpoint(step)
            CONSOLE.print(
                f"interrupted at step {step}: saved {self.checkpoint_dir / checkpoint_name(step)}; "
                f"resume with --load-dir {self.checkpoint_dir}",
                markup=False,
                soft_wrap=True,
            )
            raise SystemExit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            if self.training_state == "completed":
                return  # quitting the viewer after training: the final checkpoint is saved
            newest = list_checkpoints(self.checkpoint_dir)
            kept = str(newest[0][1]) if newest else "none"
            CONSOLE.print(f"interrupted twice: not saved; newest checkpoint: {kept}", markup=False, soft_wrap=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        finally:
            self._restore_sigint()
