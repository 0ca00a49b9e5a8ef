"""Smaller settings of the ``sahs`` and ``sahs-fast`` methods for CPU work (the demo, the tests, quick looks).

The published defaults are for a GPU (500k steps of 2048 rays through 8x256 MLPs). These presets
keep the architecture (warp + hyper-space + semantic heads, coarse/fine or proposals) and shrink widths,
samples and steps. Each preset is a function returning a config object; every value it sets is also
reachable from the command line as the ``--pipeline.model.*`` flags printed by :func:`model_flags`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, List

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.trainer import TrainerConfig

from sahs_nerfstudio.fields.base import Driver
from sahs_nerfstudio.fields.fast_field import SAHSFastFieldConfig
from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModelConfig
from sahs_nerfstudio.models.sahs_model import SAHSBaseModelConfig, SAHSModelConfig
from sahs_nerfstudio.sahs_config import (
    SAHSTrainerConfig,
    _adam,
    fast_optimizers,
    sahs_fast_trainer_config,
    sahs_trainer_config,
)
from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSamplerConfig

FieldPreset = Callable[[Driver, bool, bool], SAHSFieldConfig]
"""A field preset: ``(driver, use_warp, use_hyper) -> resolved field config``."""


def cpu_field(driver: Driver, use_warp: bool = True, use_hyper: bool = True) -> SAHSFieldConfig:
    """Field sizes shared by both drivers on a CPU (2.4 s a step at 1024 rays on one core)."""
    return SAHSFieldConfig(
        driver=driver,
        use_warp=use_warp,
        use_hyper=use_hyper,
        warp_depth=4,
        warp_width=64,
        warp_skips=(2,),
        hyper_depth=4,
        hyper_width=32,
        hyper_skips=(2,),
        canonical_depth=4,
        canonical_width=128,
        canonical_skips=(2,),
        colour_depth=2,
        colour_width=64,
        semantic_depth=2,
        semantic_width=64,
        position_frequencies=8,
    ).resolved()


def tiny_field(driver: Driver, use_warp: bool = True, use_hyper: bool = True) -> SAHSFieldConfig:
    """:func:`cpu_field` shrunk to the smallest sizes that still learn the synthetic subject: tests, smoke runs and
    the CPU demo (an MLP NeRF on a CPU is limited by steps, not capacity, so small layers that run more steps win)."""
    cfg = cpu_field(driver, use_warp, use_hyper)
    cfg.warp_width = 32
    cfg.hyper_width = 16
    cfg.canonical_depth = 3
    cfg.canonical_width = 64
    cfg.canonical_skips = (2,)
    cfg.colour_width = 32
    cfg.semantic_width = 32
    cfg.grid_resolution = 16
    cfg.grid_channels = 8
    cfg.position_frequencies = 6
    return cfg.resolved()


def cpu_model_config(
    field: FieldPreset = cpu_field,
    use_warp: bool = True,
    use_hyper: bool = True,
    num_coarse_samples: int = 32,
    num_importance_samples: int = 32,
) -> SAHSModelConfig:
    """The SAHS model with CPU-sized fields (``field`` for both drivers, with the warp/hyper switches)."""
    return SAHSModelConfig(
        audio_field=field("audio", use_warp, use_hyper),
        expression_field=field("expression", use_warp, use_hyper),
        num_coarse_samples=num_coarse_samples,
        num_importance_samples=num_importance_samples,
    )


def tiny_model_config() -> SAHSModelConfig:
    """Test-sized SAHS model: :func:`tiny_field` and 16 + 16 samples per ray."""
    return cpu_model_config(tiny_field, num_coarse_samples=16, num_importance_samples=16)


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


def cpu_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    lr: float = 2e-3,
    model: SAHSModelConfig | None = None,
) -> TrainerConfig:
    """``sahs`` sized for a CPU: ``model`` (default :func:`cpu_model_config`) with AudioAttNet from half-way."""
    config = _cpu_run(sahs_trainer_config(), data, steps, rays, output_dir)
    config.pipeline.model = replace(
        cpu_model_config() if model is None else model,
        audio_attention_start_step=steps // 2,
        eval_num_rays_per_chunk=8192,
    )
    config.optimizers = {
        "fields": _adam(lr, steps),
        "audio_net": _adam(lr, steps),
        "audio_attention": _adam(lr * 5, steps),
    }
    return config


def tiny_trainer_config(
    data: Path, steps: int = 300, rays: int = 256, output_dir: Path = Path("outputs")
) -> TrainerConfig:
    """Test-sized ``sahs``: seconds per hundred steps on a 40x40 subject."""
    return cpu_trainer_config(data, steps=steps, rays=rays, output_dir=output_dir, model=tiny_model_config())


# ----------------------------------------------------------------------------------------------
# sahs-fast on a CPU: torch hash grids, one proposal level, fewer samples.


def fast_cpu_field(driver: Driver) -> SAHSFastFieldConfig:
    """Grid field sizes for 2 CPU cores (torch grids, coarser and smaller tables)."""
    return SAHSFastFieldConfig(
        driver=driver,
        implementation="torch",
        num_levels=8,
        max_res=512,
        log2_hashmap_size=15,
        plane_resolutions=(16, 32, 64),
        plane_channels=2,
        deform_num_levels=4,
        deform_max_res=64,
        deform_log2_hashmap_size=12,
        semantic_width=32,
    ).resolved()


def fast_cpu_model_config() -> SAHSFastModelConfig:
    """The ``sahs-fast`` model with :func:`fast_cpu_field` grids, one proposal level of 48 samples, 24 field
    samples."""
    return SAHSFastModelConfig(
        audio_field=fast_cpu_field("audio"),
        expression_field=fast_cpu_field("expression"),
        implementation="torch",
        num_proposal_iterations=1,
        num_proposal_samples_per_ray=(48,),
        num_nerf_samples_per_ray=24,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 128, "use_linear": False}
        ],
        proposal_warmup=500,
        proposal_weights_anneal_max_num_iters=200,
    )


def fast_cpu_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    lr: float = 1e-2,
    model: SAHSFastModelConfig | None = None,
) -> TrainerConfig:
    """``sahs-fast`` sized for 2 CPU cores: ``model`` (default :func:`fast_cpu_model_config`)."""
    config = _cpu_run(sahs_fast_trainer_config(), data, steps, rays, output_dir)
    # Small render chunks stay in the CPU cache: ~2x faster than 8192-ray chunks.
    config.pipeline.model = replace(
        fast_cpu_model_config() if model is None else model,
        audio_attention_start_step=steps // 2,
        eval_num_rays_per_chunk=1024,
    )
    config.viewer = replace(config.viewer, num_rays_per_chunk=4096)
    config.optimizers = fast_optimizers(lr, steps)
    return config


# ----------------------------------------------------------------------------------------------
# The demo: sahs-fast for a wall-clock budget on 2 CPU cores at 128x128, tuned for the mouth.

DEMO_FAST_S_PER_STEP = 0.40
"""First guess at the seconds per :func:`fast_demo_trainer_config` step (128x128, 1024 rays): the schedules'
length until the first :data:`DEMO_FIT_AFTER` steps are timed (measured here: 0.16-0.25 s on 2 quiet cores)."""
DEMO_SAHS_S_PER_STEP = 0.60
"""The same for ``--method sahs`` (:func:`tiny_trainer_config` sizes, 1024 rays; README's measured 0.6 s)."""
DEMO_CLASS_AREA_EXPONENT = 0.0
"""The demo sampler's :attr:`~sahs_nerfstudio.samplers.semantic_sampler.SemanticPixelSamplerConfig.class_area_exponent`
(0: the published rule). 0.5 triples the mouth's rays (mouth interior 0.3 -> 2 %) but starves the background
(31 -> 9 %): 14.1 dB against 18.2 dB held-out, and no mouth gain, after 150 CPU steps."""


def fast_demo_model_config() -> SAHSFastModelConfig:
    """The demo's ``sahs-fast`` model: :func:`fast_cpu_model_config` with the grid sizes and the mouth weight
    spelled out, the knobs the mouth depends on. Finer (x', w) planes (32, 64, 128) and deformation grid (128),
    with a 4x mouth weight and class-share sampling, scored lower after 150 CPU steps (15.9 against 18.2 dB):
    more parameters converge slower in a short budget."""
    model = fast_cpu_model_config()
    for name in ("audio_field", "expression_field"):
        cfg = getattr(model, name)
        setattr(model, name, replace(cfg, plane_resolutions=(16, 32, 64), deform_max_res=64))
    return replace(model, mouth_loss_weight=0.005)


def fast_demo_trainer_config(
    data: Path,
    steps: int = 2000,
    rays: int = 1024,
    output_dir: Path = Path("outputs"),
    train_seconds: float | None = None,
    fit: bool = False,
) -> TrainerConfig:
    """``sahs-demo``'s ``sahs-fast``: :func:`fast_demo_model_config` with a class-share semantic sampler,
    stopping after ``train_seconds`` of training at the latest (``fit``: schedules from the measured rate)."""
    config = fast_cpu_trainer_config(
        data, steps=steps, rays=rays, output_dir=output_dir, model=fast_demo_model_config()
    )
    datamanager = config.pipeline.datamanager
    assert isinstance(datamanager, VanillaDataManagerConfig)
    sampler = datamanager.pixel_sampler
    assert isinstance(sampler, SemanticPixelSamplerConfig)
    datamanager.pixel_sampler = replace(sampler, class_area_exponent=DEMO_CLASS_AREA_EXPONENT)
    return _with_budget(config, train_seconds, fit)


DEMO_FIT_AFTER = 20
"""Steps the demo times before fitting its schedules to the budget (``SAHSTrainerConfig.fit_schedule_after``)."""
DEMO_STEP_CAP = 10
"""Without ``--steps`` the demo's step limit is this many times the estimate: the time budget is what stops it."""


def _with_budget(config: TrainerConfig, train_seconds: float | None, fit: bool = False) -> TrainerConfig:
    """``config`` stopping at ``train_seconds``; with ``fit`` its schedules follow the measured step rate and its
    step limit leaves the budget to stop it."""
    assert isinstance(config, SAHSTrainerConfig)
    config.max_train_seconds = train_seconds
    if fit and train_seconds is not None:
        config.fit_schedule_after = DEMO_FIT_AFTER
        config.max_num_iterations = max(config.max_num_iterations * DEMO_STEP_CAP, DEMO_FIT_AFTER + 1)
    return config


def demo_trainer_config(
    data: Path,
    method: str = "sahs-fast",
    train_seconds: float = 600.0,
    steps: int | None = None,
    rays: int | None = None,
    output_dir: Path = Path("outputs"),
) -> TrainerConfig:
    """What ``sahs-demo`` trains: ``sahs-fast`` (:func:`fast_demo_trainer_config`) or ``sahs``
    (:func:`tiny_trainer_config` at 1024 rays), stopping at ``train_seconds`` in any case. Without ``steps`` the
    schedules start at what ``train_seconds`` allows at the expected seconds per step and are fitted to the
    measured rate after :data:`DEMO_FIT_AFTER` steps, and training runs until the budget is spent; with
    ``steps`` that many steps are the schedule (and the limit)."""
    rays = 1024 if rays is None else rays
    fit = steps is None
    if method == "sahs-fast":
        steps = steps if steps is not None else max(int(train_seconds / DEMO_FAST_S_PER_STEP), 1)
        return fast_demo_trainer_config(
            data, steps=steps, rays=rays, output_dir=output_dir, train_seconds=train_seconds, fit=fit
        )
    if method == "sahs":
        steps = steps if steps is not None else max(int(train_seconds / DEMO_SAHS_S_PER_STEP), 1)
        config = tiny_trainer_config(data, steps=steps, rays=rays, output_dir=output_dir)
        return _with_budget(config, train_seconds, fit)
    raise ValueError(f"method must be 'sahs-fast' or 'sahs', got {method!r}")


# ----------------------------------------------------------------------------------------------
# The command line equivalent of a preset.


def _rendered(flag: str, value: object) -> List[str]:
    if isinstance(value, tuple):
        return [flag, *(str(v) for v in value)]
    if isinstance(value, bool | int | float | str):
        return [flag, str(value)]
    raise ValueError(f"{flag}: {value!r} has no command-line form here; set it in Python instead.")


def _differences(config: Any, default: Any, prefix: str) -> List[str]:
    """Flags for the plain values of ``config`` that differ from ``default`` (nested configs are not entered)."""
    flags: List[str] = []
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value) or value == base:
            continue
        flags += _rendered(f"{prefix}.{f.name.replace('_', '-')}", value)
    return flags


def model_flags(model: SAHSBaseModelConfig, fields: tuple[str, ...] = ("audio-field", "expression-field")) -> List[str]:
    """``ns-train sahs`` / ``sahs-fast`` arguments (one token each) that turn the method's default model into
    ``model``: every top-level value and every value of the named field configs that differs from it."""
    default = (sahs_fast_trainer_config() if isinstance(model, SAHSFastModelConfig) else sahs_trainer_config()).pipeline
    flags: List[str] = []
    for name in fields:
        attr = name.replace("-", "_")
        flags += _differences(getattr(model, attr), getattr(default.model, attr), f"--pipeline.model.{name}")
    return flags + _differences(model, default.model, "--pipeline.model")


def cpu_flags() -> List[str]:
    """The ``ns-train sahs`` arguments equivalent to :func:`cpu_model_config`."""
    return model_flags(cpu_model_config())
