"""The SAHS pipeline: nerfstudio's VanillaPipeline plus the wiring between the model, the sampler and the viewer.

Data flows model -> pipeline -> data manager:

* every training batch the model exposes the per-class loss of that batch (``class_loss_sum`` /
  ``class_loss_count``, see :meth:`SAHSModel.get_loss_dict`); :meth:`SAHSPipeline.get_train_loss_dict`
  takes them;
* after the step (an AFTER_TRAIN_ITERATION callback, :class:`SamplerUpdater`) the pipeline sums them
  over processes (``--machine.num-devices N``), folds them into its :class:`ClassLossEMA`
  (``sampler_stats``, part of the pipeline's state dict, hence of every checkpoint) and writes the
  class probabilities into the data manager's train :class:`SemanticPixelSampler`, which shares them
  with its worker processes;
* after building the model the pipeline attaches the viewer's "SAHS avatar" panel to it
  (``model.avatar``), where nerfstudio's viewer looks for ``ViewerElement`` attributes.

``ns-eval`` (:meth:`SAHSPipeline.get_average_eval_image_metrics`) also reports the lip-sync metric LMD
(:mod:`sahs_nerfstudio.utils.face_landmarks`).

It also registers the numpy types of nerfstudio checkpoints with torch's safe loader (every
checkpoint of a SAHS run is loaded through a pipeline built here) and wraps the model in DDP for
multi-process CPU runs (:mod:`sahs_nerfstudio.compat`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Type

import torch
from jaxtyping import Float
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler

from sahs_nerfstudio.compat.checkpoints import allow_nerfstudio_checkpoints
from sahs_nerfstudio.compat.cpu_ddp import pipeline_world_size, wrap_cpu_ddp
from sahs_nerfstudio.data.formats import EXPRESSION_BASIS
from sahs_nerfstudio.data.semantics import NUM_CLASSES
from sahs_nerfstudio.models.sahs_model import SAHSModel
from sahs_nerfstudio.samplers.class_stats import ClassLossEMA, all_reduce_class_stats, class_log_name
from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSampler
from sahs_nerfstudio.utils.face_landmarks import LipSyncScorer
from sahs_nerfstudio.viewer.controls import attach_avatar_controls

SAMPLER_STATS = "sampler_stats"
"""Attribute (and state-dict prefix) of the pipeline's :class:`ClassLossEMA`."""
_LEGACY_SAMPLER_STATS = ("_model.module.sampler_stats.", "_model.sampler_stats.")
"""Where checkpoints written before the pipeline owned the statistics keep them (a model buffer)."""

ClassLosses = tuple[Float[Tensor, " K"], Float[Tensor, " K"]]
"""Per-class loss sum and ray count of one batch."""


def find_train_sampler(pipeline: Any) -> SemanticPixelSampler | None:
    """The pipeline's train sampler if it is a :class:`SemanticPixelSampler` (ParallelDataManager included)."""
    datamanager = getattr(pipeline, "datamanager", None)
    sampler = getattr(datamanager, "train_pixel_sampler", None)
    return sampler if isinstance(sampler, SemanticPixelSampler) else None


def upgrade_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Move the sampler statistics of older checkpoints from the model's buffers to the pipeline's."""
    upgraded: dict[str, Any] = {}
    for key, value in state.items():
        for prefix in _LEGACY_SAMPLER_STATS:
            if key.startswith(prefix):
                key = f"{SAMPLER_STATS}.{key[len(prefix) :]}"
                break
        upgraded[key] = value
    return upgraded


class SamplerUpdater:
    """Feeds a :class:`SemanticPixelSampler` from per-class loss statistics, once per training step.

    Args:
        tracker: the moving average (persistent: a resumed run starts from it).
        take_stats: returns the latest batch's ``(loss_sum, loss_count)`` and forgets them, or None
            when no batch was seen since the last call (a batch is never counted twice).
        sampler: the train sampler (in this process; its probabilities are shared with workers).
    """

    def __init__(
        self,
        tracker: ClassLossEMA,
        take_stats: Callable[[], ClassLosses | None],
        sampler: SemanticPixelSampler,
    ) -> None:
        self.tracker = tracker
        self.take_stats = take_stats
        self.sampler = sampler
        self.config = sampler.config
        self._pushed = False

    def probabilities(self) -> Float[Tensor, " K"]:
        return self.tracker.probabilities(self.config.class_weights, self.config.min_class_probability)

    def push(self) -> None:
        self.sampler.set_class_probabilities(self.probabilities())
        self._pushed = True

    def before_iteration(self, step: int) -> None:
        """Activate the sampler with the (possibly checkpoint-loaded) probabilities before the first batch."""
        if not self._pushed:
            self.push()

    def after_iteration(self, step: int) -> None:
        """All-reduce the batch statistics, update the moving average, push, and log every ``log_every`` steps."""
        stats = self.take_stats()
        if stats is None:  # still take part in the all-reduce: every rank must
            zeros = torch.zeros(self.tracker.mean_loss.shape[0], device=self.tracker.mean_loss.device)
            stats = (zeros, zeros)
        total_sum, total_count = all_reduce_class_stats(*stats)
        self.tracker.update(total_sum, total_count, self.config.ema_decay)
        self.push()
        if self.config.mode == "semantic" and step % self.config.log_every == 0:
            probs = self.sampler.class_probabilities
            for cls in range(probs.shape[0]):
                writer.put_scalar(name=class_log_name(cls), scalar=float(probs[cls]), step=step)

    def callbacks(self) -> list[TrainingCallback]:
        before = TrainingCallbackLocation.BEFORE_TRAIN_ITERATION
        after = TrainingCallbackLocation.AFTER_TRAIN_ITERATION
        return [
            TrainingCallback(where_to_run=[before], update_every_num_iters=1, func=self.before_iteration),
            TrainingCallback(where_to_run=[after], update_every_num_iters=1, func=self.after_iteration),
        ]


@dataclass
class SAHSPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline that feeds the semantic sampler, carries the viewer panel and trains on CPU processes."""

    _target: Type = field(default_factory=lambda: SAHSPipeline)
    """Target class to instantiate."""


class SAHSPipeline(VanillaPipeline):
    """VanillaPipeline plus the sampler and viewer wiring described in the module docstring."""

    sampler_stats: ClassLossEMA

    def __init__(
        self,
        config: VanillaPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        # Built before any checkpoint of this run is read (ns-train resume, eval_setup).
        allow_nerfstudio_checkpoints()
        super().__init__(config, device, test_mode, pipeline_world_size(device, world_size), local_rank, grad_scaler)
        self.world_size = world_size
        self.sampler_stats = ClassLossEMA(NUM_CLASSES).to(device)
        self._class_losses: ClassLosses | None = None
        if isinstance(self.model, SAHSModel):
            # Before any DDP wrap, so that the panel's buffers are the wrapped module's like the model's own.
            data = getattr(getattr(config.datamanager, "dataparser", None), "data", None)
            basis = Path(data) / EXPRESSION_BASIS if data is not None else None
            attach_avatar_controls(self.model, basis).to(device)
        self._model = wrap_cpu_ddp(self._model, device, world_size)

    def get_train_loss_dict(self, step: int):
        model_outputs, loss_dict, metrics_dict = super().get_train_loss_dict(step)
        self._class_losses = self.latest_class_losses()
        return model_outputs, loss_dict, metrics_dict

    def latest_class_losses(self) -> ClassLosses | None:
        """The model's per-class loss statistics of its latest training batch (None for a model without them)."""
        loss_sum = getattr(self.model, "class_loss_sum", None)
        loss_count = getattr(self.model, "class_loss_count", None)
        if not isinstance(loss_sum, Tensor) or not isinstance(loss_count, Tensor):
            return None
        return loss_sum.detach(), loss_count.detach()

    def take_class_losses(self) -> ClassLosses | None:
        """The statistics :meth:`get_train_loss_dict` took since the last call, then forgets them."""
        stats, self._class_losses = self._class_losses, None
        return stats

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        sampler = find_train_sampler(self)
        if sampler is None:
            return callbacks
        return callbacks + SamplerUpdater(self.sampler_stats, self.take_class_losses, sampler).callbacks()

    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ):
        """nerfstudio's means (``ns-eval``'s JSON) plus LMD: ``lmd``, ``lmd_iod``, ``lmd_frames``, ``lmd_skipped``.

        nerfstudio 1.1.5 averages over the keys of the first image's metrics, so a key that only the images with
        a face had would fail or be averaged over the wrong frames: the model feeds the renders to a
        :class:`LipSyncScorer` on the side, which averages over the frames where dlib finds a face in both the
        render and the ground truth and says once how many it skipped.
        """
        model = self.model
        if not isinstance(model, SAHSModel):
            return super().get_average_eval_image_metrics(step, output_path, get_std)
        model.lip_sync = scorer = LipSyncScorer()
        try:
            metrics = super().get_average_eval_image_metrics(step, output_path, get_std)
        finally:
            model.lip_sync = None
        metrics.update(scorer.summary(get_std))
        return metrics

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None):
        return super().load_state_dict(upgrade_state_dict(state_dict), strict)
