"""The ``sahs`` method: published SAHS settings inside nerfstudio's trainer and pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from sahs_nerfstudio.compat import eval_checkpoint
from sahs_nerfstudio.compat.cpu_ddp import enable_cpu_distributed_training
from sahs_nerfstudio.data.datamanager import SAHSDataManagerConfig
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.errors import install_excepthook
from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModelConfig
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.pipeline import SAHSPipelineConfig
from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSamplerConfig
from sahs_nerfstudio.trainer import SAHSTrainer

# nerfstudio imports this module (its method entry point) for every ns-* command: a FormatError
# anywhere in ns-train / ns-eval / ns-render / ns-viewer becomes one line and exit status 2.
install_excepthook()


@dataclass
class SAHSTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig building :class:`~sahs_nerfstudio.trainer.SAHSTrainer` (atomic, verified
    checkpoints; Ctrl-C saves); ``ns-train`` also gets CPU multi-process training (gloo)."""

    _target: Type = field(default_factory=lambda: SAHSTrainer)
    """The trainer class nerfstudio instantiates."""
    max_train_seconds: Optional[float] = None
    """Stop training once this many wall-clock seconds went into training steps (None: only max-num-iterations)."""
    fit_schedule_after: Optional[int] = None
    """With ``max_train_seconds``: after this many steps (at least 2), measure the seconds a step takes (leaving
    out the first step's one-off costs) and stretch every step-counted schedule (learning-rate decay, proposal
    warm-up and annealing, AudioAttNet start) to the steps the rest of the budget allows; from then on the
    learning-rate decays follow the budget's elapsed fraction, step by step (None: the schedules keep their
    lengths)."""

    def set_timestamp(self) -> None:
        # ns-train calls this just before launching, when its launcher module is fully imported (this
        # module is imported while it is still loading, so it cannot be patched at import time).
        enable_cpu_distributed_training()
        super().set_timestamp()

    def get_checkpoint_dir(self) -> Path:
        # eval_setup (ns-eval, ns-render, ns-viewer) asks for the folder just before it loads, when
        # eval_utils and run_viewer are fully imported: the moment their hooks can be installed.
        from sahs_nerfstudio.checkpoint_io import load_newest_checkpoint
        from sahs_nerfstudio.utils.run_loader import is_sahs_config

        eval_checkpoint.install(load_newest_checkpoint, is_sahs_config)
        return super().get_checkpoint_dir()


PUBLISHED_STEPS = 500_000


def _adam(lr: float, max_steps: int = PUBLISHED_STEPS) -> dict:
    # lr * 0.1^(step / 250k) is an exponential decay to lr * 0.01 at 500k steps.
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-8),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr * 0.1 ** (max_steps / 250_000), max_steps=max_steps),
    }


def sahs_datamanager(rays: int) -> VanillaDataManagerConfig:
    """``sahs-data`` with semantic labels, the semantic ray sampler and a compact frame cache on the CPU."""
    return SAHSDataManagerConfig(
        dataparser=SAHSDataParserConfig(),
        pixel_sampler=SemanticPixelSamplerConfig(),
        train_num_rays_per_batch=rays,
        eval_num_rays_per_batch=rays,
    )


def sahs_trainer_config() -> TrainerConfig:
    """The faithful method: 500k steps of 2048 rays, Adam 5e-4 decaying by 10x every 250k steps."""
    return SAHSTrainerConfig(
        method_name="sahs",
        steps_per_eval_batch=500,
        steps_per_eval_image=2500,
        steps_per_save=5000,
        max_num_iterations=PUBLISHED_STEPS,
        mixed_precision=False,
        pipeline=SAHSPipelineConfig(
            datamanager=sahs_datamanager(2048),
            model=SAHSModelConfig(eval_num_rays_per_chunk=4096),
        ),
        optimizers={
            "fields": _adam(5e-4),
            "audio_net": _adam(5e-4),
            # AD-NeRF trains the attention net with 5x the learning rate.
            "audio_attention": _adam(2.5e-3),
        },
        viewer=ViewerConfig(num_rays_per_chunk=4096, websocket_host="127.0.0.1"),
        vis="viewer",
    )


sahs_method = MethodSpecification(
    config=sahs_trainer_config(),
    description="SAHS: semantic-aware hyper-space deformable NeRF talking heads (expression or audio driven)",
)


# ----------------------------------------------------------------------------------------------
# sahs-fast: the same model code on hash grids with proposal sampling.

FAST_STEPS = 40_000


def fast_optimizers(lr: float = 1e-2, steps: int = FAST_STEPS, audio_lr: float = 1e-3) -> dict:
    """Adam for grids (eps 1e-15, as nerfacto), decaying to lr / 30 over ``steps``; the audio nets slower."""

    def adam(rate: float) -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=rate, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=rate / 30.0, max_steps=steps),
        }

    return {
        "fields": adam(lr),
        "proposal_networks": adam(lr),
        "audio_net": adam(audio_lr),
        "audio_attention": adam(audio_lr * 5),
    }


def sahs_fast_trainer_config() -> TrainerConfig:
    """``sahs-fast`` for 512x512 talking-head video on one GPU: 40k steps of 4096 rays (tcnn when installed)."""
    return SAHSTrainerConfig(
        method_name="sahs-fast",
        steps_per_eval_batch=500,
        steps_per_eval_image=2000,
        steps_per_save=2000,
        max_num_iterations=FAST_STEPS,
        mixed_precision=False,
        pipeline=SAHSPipelineConfig(
            datamanager=sahs_datamanager(4096),
            model=SAHSFastModelConfig(eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers=fast_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, websocket_host="127.0.0.1"),
        vis="viewer",
    )


sahs_fast_method = MethodSpecification(
    config=sahs_fast_trainer_config(),
    description="SAHS on hash grids with proposal sampling (fast training and rendering)",
)
