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


def cpu_model_config(**model_overrides) -> SAHSModelConfig:
    return SAHSModelConfig(
        audio_field=SAHSFieldConfig.for_driver("audio", **CPU_FIELD),  # type: ignore[arg-type]
        expression_field=SAHSFieldConfig.for_driver("expression", **CPU_FIELD),  # type: ignore[arg-type]
        **{**CPU_MODEL, **model_overrides},  # type: ignore[arg-type]
    )


def cpu_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    lr: float = 2e-3,
    **model_overrides,
) -> TrainerConfig:
    """``sahs`` sized for 2 CPU cores: about 0.3 s a step at 1024 rays on the 128x128 subject."""
    config = sahs_trainer_config()
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.pipeline.datamanager.train_num_rays_per_batch = rays
    config.pipeline.datamanager.eval_num_rays_per_batch = rays
    config.pipeline.model = cpu_model_config(
        audio_attention_start_step=steps // 2, eval_num_rays_per_chunk=8192, **model_overrides
    )
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
    config.optimizers = {
        "fields": _adam(lr, steps),
        "audio_net": _adam(lr, steps),
        "audio_attention": _adam(lr * 5, steps),
    }
    return config


def cpu_flags() -> List[str]:
    """The ``ns-train sahs`` flags equivalent to :func:`cpu_model_config` (for the README)."""
    flags = []
    for driver in ("audio-field", "expression-field"):
        for key, value in CPU_FIELD.items():
            rendered = " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            flags.append(f"--pipeline.model.{driver}.{key.replace('_', '-')} {rendered}")
    for key, value in CPU_MODEL.items():
        flags.append(f"--pipeline.model.{key.replace('_', '-')} {value}")
    return flags
