"""Smaller settings of the ``sahs`` method for CPU work (the demo, the tests, quick looks).

The published defaults are for a GPU (500k steps of 2048 rays through 8x256 MLPs). These presets
keep the architecture (warp + hyper-space + semantic heads, coarse/fine) and shrink widths,
samples and steps. Every value here is also reachable from the command line as the
``--pipeline.model.*`` flags printed by :func:`cpu_flags`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.trainer import TrainerConfig

from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.sahs_config import _adam, sahs_trainer_config

# Field sizes shared by both drivers on a CPU.
CPU_FIELD: Dict[str, object] = {
    "warp_depth": 4,
    "warp_width": 64,
    "warp_skips": (2,),
    "hyper_depth": 4,
    "hyper_width": 32,
    "hyper_skips": (2,),
    "canonical_depth": 4,
    "canonical_width": 128,
    "canonical_skips": (2,),
    "colour_depth": 2,
    "colour_width": 64,
    "semantic_depth": 2,
    "semantic_width": 64,
    "position_frequencies": 8,
}
CPU_MODEL: Dict[str, object] = {"num_coarse_samples": 32, "num_importance_samples": 32}

# Smallest sizes that still learn the synthetic subject: tests, smoke runs and the CPU demo (an MLP
# NeRF on a CPU is limited by steps, not capacity, so small layers that run more steps win).
TINY_FIELD: Dict[str, object] = {
    **CPU_FIELD,
    "warp_width": 32,
    "hyper_width": 16,
    "canonical_depth": 3,
    "canonical_width": 64,
    "canonical_skips": (2,),
    "colour_width": 32,
    "semantic_width": 32,
    "grid_resolution": 16,
    "grid_channels": 8,
    "position_frequencies": 6,
}
TINY_MODEL: Dict[str, object] = {"num_coarse_samples": 16, "num_importance_samples": 16}


def _cpu_run(config: TrainerConfig, data: Path, steps: int, rays: int, output_dir: Path) -> TrainerConfig:
    """The trainer and data settings every CPU preset shares: data, rays, steps, no periodic eval."""
    datamanager = config.pipeline.datamanager
    assert isinstance(datamanager, VanillaDataManagerConfig)
    datamanager.data = data
    datamanager.dataparser.data = data
    datamanager.train_num_rays_per_batch = rays
    datamanager.eval_num_rays_per_batch = rays
    config.machine.device_type = "cpu"
    config.max_num_iterations = steps
    config.steps_per_save = max(steps // 4, 1)
    config.steps_per_eval_batch = steps + 1
    config.steps_per_eval_image = steps + 1
    config.steps_per_eval_all_images = steps + 1
    config.vis = "tensorboard"
    config.viewer = replace(config.viewer, quit_on_train_completion=True)
    config.output_dir = output_dir
    config.save_only_latest_checkpoint = True
    return config


def cpu_model_config(field: Dict[str, object] | None = None, **model_overrides) -> SAHSModelConfig:
    """The SAHS model with CPU-sized fields (``field`` replaces :data:`CPU_FIELD`)."""
    sizes = CPU_FIELD if field is None else field
    return SAHSModelConfig(
        audio_field=SAHSFieldConfig.for_driver("audio", **sizes),  # type: ignore[arg-type]
        expression_field=SAHSFieldConfig.for_driver("expression", **sizes),  # type: ignore[arg-type]
        **{**CPU_MODEL, **model_overrides},  # type: ignore[arg-type]
    )


def cpu_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    lr: float = 2e-3,
    field: Dict[str, object] | None = None,
    **model_overrides,
) -> TrainerConfig:
    """``sahs`` sized for a CPU (2.4 s a step at 1024 rays on one core with :data:`CPU_FIELD`)."""
    config = _cpu_run(sahs_trainer_config(), data, steps, rays, output_dir)
    config.pipeline.model = cpu_model_config(
        field, **{"audio_attention_start_step": steps // 2, "eval_num_rays_per_chunk": 8192, **model_overrides}
    )
    config.optimizers = {
        "fields": _adam(lr, steps),
        "audio_net": _adam(lr, steps),
        "audio_attention": _adam(lr * 5, steps),
    }
    return config


def model_flags(
    field: Dict[str, object], model: Dict[str, object], fields: tuple = ("audio-field", "expression-field")
) -> List[str]:
    """``ns-train sahs`` arguments (one token each) equivalent to a preset's field and model sizes."""
    flags: List[str] = []
    for name in fields:
        for key, value in field.items():
            rendered = [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            flags += [f"--pipeline.model.{name}.{key.replace('_', '-')}", *rendered]
    for key, value in model.items():
        flags += [f"--pipeline.model.{key.replace('_', '-')}", str(value)]
    return flags


def cpu_flags() -> List[str]:
    """The ``ns-train sahs`` arguments equivalent to :func:`cpu_model_config`."""
    return model_flags(CPU_FIELD, CPU_MODEL)


def tiny_trainer_config(data: Path, steps: int = 300, rays: int = 256, output_dir: Path = Path("outputs"), **kw):
    """Test-sized ``sahs``: seconds per hundred steps on a 40x40 subject."""
    overrides = {**TINY_MODEL, **kw}
    return cpu_trainer_config(data, steps=steps, rays=rays, output_dir=output_dir, field=TINY_FIELD, **overrides)


# ----------------------------------------------------------------------------------------------
# sahs-fast on a CPU: torch hash grids, one proposal level, fewer samples.

FAST_CPU_FIELD: Dict[str, object] = {
    "implementation": "torch",
    "num_levels": 8,
    "max_res": 512,
    "log2_hashmap_size": 15,
    "plane_resolutions": (16, 32, 64),
    "plane_channels": 2,
    "deform_num_levels": 4,
    "deform_max_res": 64,
    "deform_log2_hashmap_size": 12,
    "semantic_width": 32,
}
FAST_CPU_MODEL: Dict[str, object] = {
    "implementation": "torch",
    "num_proposal_iterations": 1,
    "num_proposal_samples_per_ray": (48,),
    "num_nerf_samples_per_ray": 24,
    "proposal_net_args_list": [
        {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 128, "use_linear": False}
    ],
    "proposal_warmup": 500,
    "proposal_weights_anneal_max_num_iters": 200,
}


def fast_cpu_model_config(field: Dict[str, object] | None = None, **model_overrides):
    """The ``sahs-fast`` model with CPU-sized grids (``field`` entries override :data:`FAST_CPU_FIELD`)."""
    from sahs_nerfstudio.fields.fast_field import SAHSFastFieldConfig
    from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModelConfig

    sizes = {**FAST_CPU_FIELD, **(field or {})}
    return SAHSFastModelConfig(
        audio_field=SAHSFastFieldConfig.for_driver("audio", **sizes),  # type: ignore[arg-type]
        expression_field=SAHSFastFieldConfig.for_driver("expression", **sizes),  # type: ignore[arg-type]
        **{**FAST_CPU_MODEL, **model_overrides},  # type: ignore[arg-type]
    )


def fast_cpu_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    lr: float = 1e-2,
    field: Dict[str, object] | None = None,
    **model_overrides,
) -> TrainerConfig:
    """``sahs-fast`` sized for 2 CPU cores (torch grids, one proposal level of 48 samples, 24 field samples)."""
    from sahs_nerfstudio.sahs_config import fast_optimizers, sahs_fast_trainer_config

    config = _cpu_run(sahs_fast_trainer_config(), data, steps, rays, output_dir)
    # Small render chunks stay in the CPU cache: ~2x faster than 8192-ray chunks.
    config.pipeline.model = fast_cpu_model_config(
        field, **{"audio_attention_start_step": steps // 2, "eval_num_rays_per_chunk": 1024, **model_overrides}
    )
    config.viewer = replace(config.viewer, num_rays_per_chunk=4096)
    config.optimizers = fast_optimizers(lr, steps)
    return config
