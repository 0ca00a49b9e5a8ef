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
  budget allows (:func:`~sahs_nerfstudio.schedule.fit_schedule`), then keeps the learning-rate decays on the budget's clock
  (:func:`~sahs_nerfstudio.schedule.follow_budget`), so a slow machine does not stop half-way down its decay and a fast one does not
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
from sahs_nerfstudio.schedule import BudgetSchedule, clock, decay_steps, rank0_values, set_decay_steps


class _Interrupted(Exception):
    """Raised after the step during which Ctrl-C was pressed has finished."""


class SAHSTrainer(Trainer):
    """nerfstudio's Trainer with atomic, verified checkpoints and a Ctrl-C that saves."""

    _interrupt_requested: bool = False
    _completed_step: Optional[int] = None
    _final_save: bool = False
    _train_start: Optional[float] = None
    _out_of_time: bool = False
    _start_progress: float = 0.0
    """How far the learning-rate decays had gone at the loaded checkpoint (0 for a fresh run)."""
    _budget: Optional[BudgetSchedule] = None

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
            # not read by nerfstudio: where the learning-rate decays stood, for a run resumed with a time budget
            "decay_steps": decay_steps(self),
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
        total = state.get("decay_steps") or decay_steps(self)
        self._start_progress = min(self._start_step / total, 1.0) if total else 0.0
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        budgeted = getattr(self.config, "max_train_seconds", None) is not None
        if budgeted and getattr(self.config, "fit_schedule_after", None) is not None and total:
            # the first resumed steps decay as the saved run did (this config's length is a first guess)
            set_decay_steps(self, max(int(total), self._start_step))
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
        budget = getattr(self.config, "max_train_seconds", None)
        if budget is not None:
            self._follow_time_budget(step, budget)
        if self._interrupt_requested:
            raise _Interrupted
        return out

    def _follow_time_budget(self, step: int, budget: float) -> None:
        """Stop at the budget and, with ``fit_schedule_after``, fit and follow the schedules
        (:class:`~sahs_nerfstudio.schedule.BudgetSchedule`). The clock is rank 0's
        (:func:`~sahs_nerfstudio.schedule.rank0_values`) and waits for the device
        (:func:`~sahs_nerfstudio.schedule.clock`)."""
        assert self._train_start is not None
        if self._budget is None:
            fit_after = getattr(self.config, "fit_schedule_after", None)
            self._budget = BudgetSchedule(budget, fit_after, self._start_step, self._start_progress)
        (elapsed,) = rank0_values([clock(self.device) - self._train_start], self.device)
        fitted_before = self._budget.fitted_steps
        if self._budget.after_step(self, step - self._start_step + 1, elapsed):
            # nerfstudio's loop checks stop_training before the next step and then saves, as after the last one.
            self.stop_training = True
            self._out_of_time = True
        if fitted_before is None and self._budget.fitted_steps is not None:
            CONSOLE.print(self._budget.fit_message(), markup=False)

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
