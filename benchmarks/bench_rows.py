"""The benchmark's rows: one nerfstudio ``TrainerConfig`` each, on the same synthetic subject."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_config import BenchmarkConfig


def _cpu_preset(cfg: BenchmarkConfig, data: Path, steps: int, method: str) -> Any:
    """The CPU-sized trainer config of ``method`` from :mod:`sahs_nerfstudio.presets` (so the benchmark trains what
    the presets are tuned to): the demo's (``--preset demo``) or the plain CPU presets (``--preset cpu``)."""
    from sahs_nerfstudio import presets

    if cfg.preset == "demo":
        return presets.demo_trainer_config(
            data, method, train_seconds=cfg.time_budget_s, steps=steps, rays=cfg.rays, output_dir=cfg.output_dir
        )
    rays = 1024 if cfg.rays is None else cfg.rays  # None: the CPU presets' own default
    if method == "sahs-fast":
        return presets.fast_cpu_trainer_config(data, steps=steps, rays=rays)
    return presets.cpu_trainer_config(data, steps=steps, rays=rays)


def _method_config(
    cfg: BenchmarkConfig,
    data: Path,
    steps: int,
    method: str,
    sampler: str = "semantic",
    use_warp: bool = True,
    use_hyper: bool = True,
):
    """A ``sahs`` or ``sahs-fast`` row: the CPU preset, or the method's own (GPU) config with the benchmark's
    data, rays and schedule length; then the row's switches and sampler."""
    from sahs_nerfstudio.sahs_config import _adam, fast_optimizers, sahs_fast_trainer_config, sahs_trainer_config

    if cfg.resolved_scale() == "cpu":
        config = _cpu_preset(cfg, data, steps, method)
    else:
        config: Any = sahs_fast_trainer_config() if method == "sahs-fast" else sahs_trainer_config()
        config.pipeline.datamanager.data = data
        config.pipeline.datamanager.dataparser.data = data  # type: ignore[attr-defined]
        if cfg.rays is not None:
            config.pipeline.datamanager.train_num_rays_per_batch = cfg.rays
        config.pipeline.model.audio_attention_start_step = steps // 2  # type: ignore[attr-defined]
        if method == "sahs-fast":
            config.optimizers = fast_optimizers(steps=steps)
        else:
            config.optimizers = {
                "fields": _adam(5e-4, steps),
                "audio_net": _adam(5e-4, steps),
                "audio_attention": _adam(2.5e-3, steps),
            }
    config.pipeline.model = _switched(config.pipeline.model, use_warp, use_hyper)
    config.pipeline.datamanager.pixel_sampler.mode = sampler  # type: ignore[attr-defined]
    return config


def _sahs_config(cfg: BenchmarkConfig, data: Path, steps: int, **switches: Any):
    return _method_config(cfg, data, steps, "sahs", **switches)


def _fast_config(cfg: BenchmarkConfig, data: Path, steps: int, **switches: Any):
    return _method_config(cfg, data, steps, "sahs-fast", **switches)


def _reference_paths(config: Any, grid_kernel: str = "torch", occupancy: bool = False) -> Any:
    """``config`` (a sahs-fast row) with the torch reference of the hash grids and/or without the occupancy grid:
    the rows that show what the compiled kernel and empty-space skipping each change."""
    model = config.pipeline.model
    fields = {name: dataclasses.replace(getattr(model, name), grid_kernel=grid_kernel) for name in FIELD_NAMES}
    occupancy_config = dataclasses.replace(model.occupancy, enabled=occupancy)
    config.pipeline.model = dataclasses.replace(model, occupancy=occupancy_config, **fields)
    return config


FIELD_NAMES = ("audio_field", "expression_field")


def _switched(model: Any, use_warp: bool, use_hyper: bool) -> Any:
    """``model`` with the warp / hyper-space switches set on both drivers' fields, everything else (the preset's
    sizes) kept. ``canonical_code`` is re-resolved: with both off the driving code goes into the canonical field
    (the NeRFace-style model), otherwise each driver's published choice."""
    if use_warp and use_hyper:
        return model
    fields = {
        name: dataclasses.replace(
            getattr(model, name), use_warp=use_warp, use_hyper=use_hyper, canonical_code=None
        ).resolved()
        for name in ("audio_field", "expression_field")
    }
    return dataclasses.replace(model, **fields)


def _stock_datamanager(cfg: BenchmarkConfig, data: Path):
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig

    return VanillaDataManagerConfig(
        data=data,
        dataparser=SAHSDataParserConfig(data=data),
        train_num_rays_per_batch=cfg.rays or STOCK_RAYS,
        eval_num_rays_per_batch=cfg.rays or STOCK_RAYS,
    )


def _nerfacto_config(cfg: BenchmarkConfig, data: Path, steps: int):
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    config: Any = dataclasses.replace(method_configs["nerfacto"])
    config.pipeline = dataclasses.replace(config.pipeline, datamanager=_stock_datamanager(cfg, data))
    model: Any = dataclasses.replace(config.pipeline.model)
    model.camera_optimizer = dataclasses.replace(model.camera_optimizer, mode="off")  # exact cameras, like ours
    model.near_plane = near_far(data)[0]
    if cfg.resolved_scale() == "cpu":
        # The sahs-fast CPU sizes (torch grids, fewer samples): same cost class as sahs-fast on a CPU.
        model.implementation = "torch"
        model.num_levels, model.max_res, model.log2_hashmap_size = 12, 512, 15
        model.num_proposal_samples_per_ray = (64, 32)
        model.num_nerf_samples_per_ray = 24
        for args in model.proposal_net_args_list:
            args["log2_hashmap_size"] = 14
    config.pipeline.model = model
    config.mixed_precision = cfg.resolved_device() == "cuda"
    config.optimizers = {
        name: {
            "optimizer": group["optimizer"],
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=group["optimizer"].lr / 30, max_steps=steps),
        }
        for name, group in config.optimizers.items()
        if name != "camera_opt"
    }
    return config


def _dnerf_config(cfg: BenchmarkConfig, data: Path, steps: int):
    from nerfstudio.configs.method_configs import method_configs

    config: Any = dataclasses.replace(method_configs["dnerf"])
    config.pipeline = dataclasses.replace(config.pipeline, datamanager=_stock_datamanager(cfg, data))
    model: Any = dataclasses.replace(config.pipeline.model)
    near, far = near_far(data)
    model.collider_params = {"near_plane": near, "far_plane": far}
    model.background_color = "last_sample"  # the fixed background image lands on the last sample
    if cfg.resolved_scale() == "cpu":
        model.num_coarse_samples, model.num_importance_samples = 32, 32  # the sahs CPU preset's samples
    config.pipeline.model = model
    return config


ROW_BUILDERS: dict[str, Callable[[BenchmarkConfig, Path, int], Any]] = {
    "sahs": lambda c, d, s: _sahs_config(c, d, s),
    "sahs-fast": lambda c, d, s: _fast_config(c, d, s),
    "sahs-no-hyper": lambda c, d, s: _sahs_config(c, d, s, use_hyper=False),
    "sahs-no-warp": lambda c, d, s: _sahs_config(c, d, s, use_warp=False),
    "sahs-nerface": lambda c, d, s: _sahs_config(c, d, s, use_hyper=False, use_warp=False),
    "sahs-uniform": lambda c, d, s: _sahs_config(c, d, s, sampler="uniform"),
    "sahs-fast-uniform": lambda c, d, s: _fast_config(c, d, s, sampler="uniform"),
    "sahs-fast-no-warp": lambda c, d, s: _fast_config(c, d, s, use_warp=False),
    "sahs-fast-no-hyper": lambda c, d, s: _fast_config(c, d, s, use_hyper=False),
    "sahs-fast-nerface": lambda c, d, s: _fast_config(c, d, s, use_warp=False, use_hyper=False),
    "sahs-fast-reference": lambda c, d, s: _reference_paths(_fast_config(c, d, s)),
    "sahs-fast-no-occupancy": lambda c, d, s: _reference_paths(_fast_config(c, d, s), grid_kernel="compiled"),
    "nerfacto": _nerfacto_config,
    "dnerf": _dnerf_config,
}
STOCK_ROWS = ("nerfacto", "dnerf")
STOCK_RAYS = 1024
"""Rays a step of the stock rows when ``--rays`` leaves it to the presets (theirs: 1024)."""


def near_far(data: Path) -> tuple[float, float]:
    from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig

    meta = SAHSDataParserConfig(data=data).setup().get_dataparser_outputs("train").metadata
    return float(meta["near"]), float(meta["far"])
