"""One run (a row and a training seed) in its own process: its training loop, scored along the way and at the
budgets, and Stage II."""

from __future__ import annotations

import math
import resource
import shutil
import time
from typing import Any

from bench_config import ROW_NOTES, BenchmarkConfig, run_name
from bench_heldout import HeldOut, sync
from bench_rows import ROW_BUILDERS, STOCK_ROWS

from sahs_nerfstudio.compat.stock_lpips import disable_stock_lpips
from sahs_nerfstudio.presets import DEMO_FIT_AFTER
from sahs_nerfstudio.schedule import BudgetSchedule
from sahs_nerfstudio.utils.metrics import lpips_unavailable


def run_row(cfg: BenchmarkConfig, row: str, seed: int, started: float) -> dict[str, Any]:
    """Train ``row`` with training seed ``seed``; ``started`` is the process's ``time.perf_counter()`` before its
    imports (start-up = imports + data + model)."""
    import torch
    from nerfstudio.engine.callbacks import TrainingCallbackLocation
    from nerfstudio.scripts.train import _set_random_seed

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        try:
            torch.set_num_interop_threads(cfg.threads)
        except RuntimeError:  # only settable before the first inter-op parallel work; harmless to keep
            pass
    device = cfg.resolved_device()
    data = cfg.data_root() / cfg.layout
    lpips_disabled = disable_stock_lpips(lpips_unavailable) if row in STOCK_ROWS else False
    # A first guess at the schedule length; the first steps' speed sets the real one (_set_schedule_length).
    initial_steps = max(cfg.equal_steps, 100)
    config = ROW_BUILDERS[row](cfg, data, initial_steps)
    config.machine.device_type = device
    config.machine.num_devices = 1
    config.vis = "tensorboard"
    config.output_dir = cfg.output_dir / "runs"
    config.experiment_name = run_name(row, seed)
    config.machine.seed = seed
    config.timestamp = "bench"
    config.max_num_iterations = initial_steps
    config.save_only_latest_checkpoint = True
    if cfg.resolved_scale() == "cpu" or device == "cpu":
        config.mixed_precision = False
    chunk = cfg.eval_chunk if cfg.eval_chunk is not None else (1024 if device == "cpu" else None)
    if chunk is not None:
        config.pipeline.model.eval_num_rays_per_chunk = chunk
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    _set_random_seed(seed)  # as ns-train does before building the trainer
    trainer = config.setup(local_rank=0, world_size=1)
    rays = int(config.pipeline.datamanager.train_num_rays_per_batch)
    trainer.setup(test_mode="test")
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    held_out = HeldOut(data, pipeline.device if isinstance(pipeline.device, str) else str(pipeline.device))
    num_params = sum(p.numel() for p in model.parameters())

    # Log-spaced (T/2^(n-1), ..., T/2, T): early progress is what separates the methods on a short budget.
    curve_times = [cfg.time_budget_s / 2 ** (cfg.curve_points - 1 - k) for k in range(cfg.curve_points)]
    curve: list[dict[str, Any]] = []
    at_time: dict[str, Any] | None = None
    at_steps: dict[str, Any] | None = None
    train_time = 0.0
    train_cpu = 0.0
    eval_time = eval_cpu = 0.0
    step = 0
    # The demo's policy (the trainer's own BudgetSchedule): fit after DEMO_FIT_AFTER steps, then decay with the clock.
    # Its clock is the training time alone (held-out readings are left out).
    schedule = BudgetSchedule(cfg.time_budget_s, DEMO_FIT_AFTER)

    def record(kind: str, frames: int | None) -> dict[str, Any]:
        nonlocal eval_time, eval_cpu
        t_eval, c_eval = time.perf_counter(), time.process_time()
        metrics = held_out.evaluate(model, frames, subset=cfg.curve_frames)
        eval_time += time.perf_counter() - t_eval
        eval_cpu += time.process_time() - c_eval
        entry = {"kind": kind, "step": step, "train_time_s": train_time, **metrics}
        curve.append(entry)
        print(f"[{row}] {kind:>10} step {step:6d}  {train_time:8.1f}s  psnr {metrics['psnr']:.2f}", flush=True)
        return entry

    # No reading of the untrained model: it is mostly background and says nothing about a row.
    setup_s, setup_cpu = time.perf_counter() - started, time.process_time()
    give_up = cfg.time_budget_s * cfg.max_time_factor
    while (step < cfg.equal_steps and train_time < give_up) or train_time < cfg.time_budget_s:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        pipeline.train()
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        loss, _, _ = trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        sync(device)
        train_time += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        step += 1
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{row}: loss is {float(loss.detach())} at step {step}")
        schedule.after_step(trainer, step, train_time)
        if step == cfg.equal_steps:
            at_steps = record("steps", None)
        if at_time is None and train_time >= cfg.time_budget_s:
            at_time = record("time", None)
            curve_times = []
        if curve_times and train_time >= curve_times[0]:
            # One reading even when a slow step crossed several curve times.
            while curve_times and train_time >= curve_times[0]:
                curve_times.pop(0)
            record("curve", cfg.curve_frames)
    assert at_time is not None
    if at_steps is None and cfg.equal_steps:
        print(f"[{row}] stopped after {train_time:.0f} s at step {step} < {cfg.equal_steps}: no equal-steps reading")

    if device == "cuda":
        peak_mb, mem_kind = torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
    else:
        peak_mb, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of the run process"
    result: dict[str, Any] = {
        "row": row,
        "seed": seed,
        "notes": ROW_NOTES.get(row, ""),
        "method_name": config.method_name,
        "num_params": num_params,
        "steps_total": step,
        "train_time_total_s": train_time,
        "planned_schedule_steps": schedule.fitted_steps or initial_steps,
        "rays": rays,
        "rays_per_s": step * rays / train_time,
        "seconds_per_step": train_time / step,
        "train_cpu_s": train_cpu,
        "cpu_per_wall": train_cpu / train_time,
        "setup_s": setup_s,
        "setup_cpu_s": setup_cpu,
        "eval_s": eval_time,
        "eval_cpu_s": eval_cpu,
        "threads": torch.get_num_threads(),
        **build_facts(config),
        "equal_steps": at_steps,
        "equal_time": at_time,
        "render_fps": at_time["render_fps"],
        "peak_memory_mb": peak_mb,
        "memory_kind": mem_kind,
        "lpips_disabled_at_startup": lpips_disabled,
        "curve": curve,
    }
    if cfg.refine and row in cfg.refine_rows and seed == cfg.seeds[0]:
        result["refine"] = run_refinement(cfg, trainer, step)
    return result


def build_facts(config: Any) -> dict[str, Any]:
    """What the run ran on: the commit (``+dirty`` with uncommitted changes), the hash-grid kernel (built, the
    torch fallback and why, or not used by this row), and the compute dtype."""
    import subprocess
    from pathlib import Path

    import torch

    from sahs_nerfstudio.kernels.hash_grid import kernel_failure, load_kernel

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=root
    )
    model = config.pipeline.model
    kernels = [getattr(model, name, None) for name in ("expression_field", "audio_field")]
    uses_kernel = any(getattr(f, "grid_kernel", None) == "compiled" for f in kernels)
    if not uses_kernel:
        kernel = "not used"
    elif load_kernel() is not None:
        kernel = "built"
    else:
        kernel = f"torch fallback: {kernel_failure()}"
    return {
        "commit": head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "kernel": kernel,
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),  # no mixed precision on the CPU yet
    }


def run_refinement(cfg: BenchmarkConfig, trainer, step: int) -> dict[str, Any]:
    """Stage II on the final model: render train/test, train the refiner on train, score test before/after."""
    from sahs_nerfstudio.refinement import (
        RefinerTrainConfig,
        evaluate_refiner,
        release_stage_one_pipeline,
        render_stage_one,
        train_refiner,
    )

    trainer.config.save_config()
    trainer.save_checkpoint(step)
    config_path = trainer.config.get_base_dir() / "config.yml"
    out = trainer.config.get_base_dir() / "stage2"
    # Stage-I renders and refiner checkpoints are reused when present: a rerun must not score stale ones.
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    train_renders, train_gt = render_stage_one(config_path, "train", out / "train")
    test_renders, test_gt = render_stage_one(config_path, "eval", out / "test")
    release_stage_one_pipeline()
    device = cfg.resolved_device()
    res = train_refiner(
        train_renders,
        train_gt,
        out / "refiner",
        RefinerTrainConfig(epochs=cfg.refine_epochs, device=device, num_workers=0),
        show_progress=False,
    )
    assert res.checkpoint is not None
    report = evaluate_refiner(res.checkpoint, test_renders, test_gt, device=device, show_progress=False)
    return {**report["results"], "epochs": cfg.refine_epochs, "seconds": time.perf_counter() - t0}
