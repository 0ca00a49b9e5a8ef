"""``sahs-fast``: the SAHS model on hash grids with proposal-network sampling.

Everything but the renderer is :class:`~sahs_nerfstudio.models.sahs_model.SAHSModel`'s: the driving code
(expression, or AudioNet/AudioAttNet of the audio window), the pose code, the viewer/eval metadata handling, the
background composited as a last sample at infinity with the background label, the losses (RGB + CE on rendered
class probabilities + the mouth term, and the per-class statistics the semantic ray sampler reads) and the
metrics. What changes:

* the field is :class:`~sahs_nerfstudio.fields.fast_field.SAHSFastField` (hash grid on ``x'``, (x'_i, w_k)
  planes for the hyper-space, small MLPs) instead of two 8x256 MLP NeRFs;
* one field level rendered at samples placed by nerfstudio's proposal networks (``HashMLPDensityField``,
  unconditioned: they learn an envelope of the density over all expressions) instead of coarse + fine, with
  nerfacto's interlevel and distortion losses;
* images outside training (evaluation, the viewer, ``sahs-render``) go through the pruned renderer of
  :mod:`~sahs_nerfstudio.models.fast_render` (``render.enabled``; off: the training renderer, the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, UniformSampler
from torch import Tensor
from torch.nn import Parameter

from sahs_nerfstudio.compat.encodings import TorchHashEncoding, use_fast_torch_hashing
from sahs_nerfstudio.data.semantics import colorize
from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY
from sahs_nerfstudio.fields.fast_field import SAHSFastField, SAHSFastFieldConfig
from sahs_nerfstudio.kernels.hash_grid import CompiledHashEncoding
from sahs_nerfstudio.models.fast_render import FastRenderConfig, culled_image_outputs, kept_outputs, march
from sahs_nerfstudio.models.occupancy import OccupancyGrid, OccupancyGridConfig, masked_density_fn
from sahs_nerfstudio.models.sahs_model import SAHSBaseModelConfig, SAHSModel

OCCUPANCY_CONDITIONS = 256
"""Rays of each training batch whose conditioning the occupancy grid's next update draws from."""


def _default_proposal_args() -> list[dict[str, Any]]:
    return [
        {"hidden_dim": 16, "log2_hashmap_size": 17, "num_levels": 5, "max_res": 128, "use_linear": False},
        {"hidden_dim": 16, "log2_hashmap_size": 17, "num_levels": 5, "max_res": 256, "use_linear": False},
    ]


@dataclass
class SAHSFastModelConfig(SAHSBaseModelConfig):
    """``sahs-fast`` defaults: 512x512 talking-head video on one GPU (40k steps of 4096 rays)."""

    _target: type = field(default_factory=lambda: SAHSFastModel)
    audio_field: SAHSFastFieldConfig = field(default_factory=lambda: SAHSFastFieldConfig.for_driver("audio"))
    """Grid field used with the audio driver."""
    expression_field: SAHSFastFieldConfig = field(default_factory=lambda: SAHSFastFieldConfig.for_driver("expression"))
    """Grid field used with the expression driver."""
    audio_attention_start_step: int = 30_000
    """Step from which AudioAttNet smooths the audio code (3/4 of the default schedule)."""
    num_proposal_samples_per_ray: tuple[int, ...] = (128, 64)
    """Samples per ray of each proposal level (the head spans the whole near/far interval: no contraction)."""
    num_nerf_samples_per_ray: int = 32
    """Samples per ray of the SAHS field."""
    num_proposal_iterations: int = 2
    """Proposal levels."""
    proposal_net_args_list: list[dict[str, Any]] = field(default_factory=_default_proposal_args)
    """Arguments of each proposal ``HashMLPDensityField``."""
    proposal_update_every: int = 5
    """Proposal-network update interval after the warmup (as nerfacto)."""
    proposal_warmup: int = 5000
    """Steps over which the update interval ramps from 1 to ``proposal_update_every``."""
    use_proposal_weight_anneal: bool = True
    """Anneal the proposal weights (mip-NeRF 360 eq. 18) early in training."""
    proposal_weights_anneal_slope: float = 10.0
    """Slope of that annealing."""
    proposal_weights_anneal_max_num_iters: int = 1000
    """Steps of that annealing."""
    use_single_jitter: bool = True
    """One jitter per ray for the stratified initial samples."""
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.002
    """Weight of mip-NeRF 360's distortion loss on the field's weights."""
    implementation: Literal["tcnn", "torch"] = "tcnn"
    """Implementation of the proposal networks' grids/MLPs (the field has its own ``implementation``)."""
    render: FastRenderConfig = field(default_factory=FastRenderConfig)
    """How images are rendered outside training (the pruned renderer and its error bounds)."""
    occupancy: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    """Empty-space skipping: the occupancy grid (training and rendering evaluate the field only in occupied cells)."""

    def __setstate__(self, state: dict) -> None:
        # PyYAML restores a saved config through here: one written before ``render`` existed renders as now, and one
        # written before ``occupancy`` existed has no grid in its checkpoint, so it runs without one.
        self.__dict__.update({"render": FastRenderConfig(), "occupancy": OccupancyGridConfig(enabled=False), **state})


class SAHSFastModel(SAHSModel):
    """SAHS on hash grids with proposal sampling; one rendered level."""

    config: SAHSFastModelConfig

    def build_renderer(self) -> None:
        """Called by :meth:`SAHSModel.populate_modules`, which sets up conditioning, buffers and metrics."""
        cfg = self.config
        aabb = self.scene_box.aabb
        if not isinstance(self.field_config, SAHSFastFieldConfig):
            raise TypeError("sahs-fast needs SAHSFastFieldConfig fields (audio_field / expression_field).")
        self.field = SAHSFastField(self.field_config, aabb=aabb)
        self.proposal_networks = torch.nn.ModuleList()
        for i in range(cfg.num_proposal_iterations):
            args = cfg.proposal_net_args_list[min(i, len(cfg.proposal_net_args_list) - 1)]
            self.proposal_networks.append(HashMLPDensityField(aabb, implementation=cfg.implementation, **args))
        # Same values, faster when the grids run in torch; the field's grid_kernel picks the compiled kernel or not.
        kernel = self.field_config.grid_kernel
        use_fast_torch_hashing(
            self.proposal_networks, CompiledHashEncoding if kernel == "compiled" else TorchHashEncoding
        )
        self.occupancy_grid = OccupancyGrid(cfg.occupancy, aabb) if cfg.occupancy.enabled else None
        self.density_fns = [net.density_fn for net in self.proposal_networks]  # type: ignore[attr-defined]
        if self.occupancy_grid is not None:
            self.density_fns = [
                masked_density_fn(fn, self.occupancy_grid)  # type: ignore[arg-type]
                for fn in self.density_fns
            ]
        # Per-ray conditioning of the last training batch (a sample of rows): what the grid's updates measure with.
        self._conditions: tuple[Tensor, Tensor | None] | None = None
        self._kept_share = torch.ones(())

        def update_schedule(step: int) -> float:
            return float(
                np.clip(
                    np.interp(step, [0, cfg.proposal_warmup], [0, cfg.proposal_update_every]),
                    1,
                    cfg.proposal_update_every,
                )
            )

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=cfg.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=tuple(cfg.num_proposal_samples_per_ray),
            num_proposal_network_iterations=cfg.num_proposal_iterations,
            single_jitter=cfg.use_single_jitter,
            update_sched=update_schedule,
            # The talking head fills a bounded near/far interval: uniform, not nerfacto's lin-disp.
            initial_sampler=UniformSampler(single_jitter=cfg.use_single_jitter),
        )

    def fit_schedule(self, steps: int) -> None:
        """As :meth:`SAHSModel.fit_schedule`, and the proposal networks' update-interval warm-up over a quarter of
        the run and their weight annealing over a tenth (the CPU preset's proportions at its 2,000 steps), so a
        short run is not spent entirely in the warm-up."""
        super().fit_schedule(steps)
        self.config.proposal_warmup = max(int(steps) // 4, 1)
        self.config.proposal_weights_anneal_max_num_iters = max(int(steps) // 10, 1)

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {
            "fields": list(self.field.parameters()),
            "proposal_networks": list(self.proposal_networks.parameters()),
            **self.audio_param_groups(),
        }

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        cfg = self.config
        if cfg.use_proposal_weight_anneal:

            def set_anneal(step: int) -> None:
                frac = float(np.clip(step / max(cfg.proposal_weights_anneal_max_num_iters, 1), 0, 1))
                b = cfg.proposal_weights_anneal_slope
                self.proposal_sampler.set_anneal(b * frac / ((b - 1) * frac + 1))

            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                    update_every_num_iters=1,
                    func=set_anneal,
                )
            )
        callbacks.append(
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.proposal_sampler.step_cb,
            )
        )
        if self.occupancy_grid is not None:
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                    update_every_num_iters=1,
                    func=self.update_occupancy,
                )
            )
        return callbacks

    def update_occupancy(self, step: int) -> bool:
        """Re-measure the occupancy grid on its schedule, with the conditioning of the last training batch."""
        if self.occupancy_grid is None or self._conditions is None:
            return False
        code, pose = self._conditions

        def density(points: Tensor, rows: Tensor) -> Tensor:
            return self.field.density_points(points, code, pose, rows)["density"]

        return self.occupancy_grid.update(density, code.shape[0], step)

    def fast_rendering(self) -> bool:
        """Whether rays go through the pruned renderer now (outside training, without gradients, when enabled)."""
        return self.config.render.enabled and not self.training and not torch.is_grad_enabled()

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:  # type: ignore[override]
        bg_rgb = self.prepare_rays(ray_bundle)  # driving code + pose per ray, background colour (as sahs)

        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
        keep = self.kept_samples(ray_samples)
        if self.fast_rendering():
            outs, weights = march(self.field, ray_samples, self.config.render, keep)
            level = self.composite(ray_samples, outs, weights, bg_rgb, ray_bundle.fars)
        elif keep is not None:
            outs = kept_outputs(self.field, ray_samples, keep)
            weights = ray_samples.get_weights(outs[FieldHeadNames.DENSITY])
            level = self.composite(ray_samples, outs, weights, bg_rgb, ray_bundle.fars)
        else:
            level, weights = self._render_level(self.field, ray_samples, bg_rgb, ray_bundle.fars)
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)
        outputs = self.with_images(level)
        if self.training:
            outputs["weights_list"] = weights_list
            outputs["ray_samples_list"] = ray_samples_list
        return outputs

    def kept_samples(self, ray_samples: RaySamples) -> Tensor | None:
        """The samples the field must evaluate (``[N, S]``; None: all), per the occupancy grid once it is active; in
        training, also keeps a sample of the batch's conditioning for the grid's next update."""
        grid = self.occupancy_grid
        if grid is None or not self.config.occupancy.enabled:  # built, then switched off: every sample
            return None
        if self.training:
            code, pose = self.field.conditioning(ray_samples)
            rows = torch.randperm(code.shape[0], device=code.device)[:OCCUPANCY_CONDITIONS]
            self._conditions = (code[rows, 0].detach(), pose[rows, 0].detach() if pose is not None else None)
        if not grid.is_active:
            return None
        keep = grid.query(ray_samples.frustums.get_positions())
        self._kept_share = keep.float().mean().detach()  # a tensor: read only when the metric is written
        return keep

    def with_images(self, level: dict[str, Tensor]) -> dict[str, Any]:
        """A level's per-ray outputs plus the colour images made from them (semantic classes, hyper-space)."""
        outputs: dict[str, Any] = dict(level)
        if "semantics_probs" in level:
            outputs["semantics"] = colorize(level["semantics_probs"].argmax(dim=-1))
        if "ambient" in level:
            amb = level["ambient"] * 0.5 + 0.5  # the fast field's w is already in (-1, 1)
            outputs["ambient_image"] = torch.cat([amb, amb[:, :1], torch.full_like(amb[:, :1], 0.5)], dim=-1)[:, :3]
        return outputs

    def background_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        """What an empty ray renders (the background, its label, depth at the far bound), as :meth:`forward`'s."""
        if self.collider is not None:
            ray_bundle = self.collider(ray_bundle)
        bg_rgb = self.prepare_rays(ray_bundle)
        assert ray_bundle.fars is not None
        samples = ray_bundle.get_ray_samples(bin_starts=ray_bundle.fars[:, None], bin_ends=ray_bundle.fars[:, None])
        n = len(ray_bundle)
        zeros = bg_rgb.new_zeros
        outs: dict = {
            FieldHeadNames.RGB: zeros(n, 1, 3),
            DEFORMATION_KEY: zeros(n, 1, 1),
            AMBIENT_KEY: zeros(n, 1, self.field.num_ambient),
        }
        if self.field.semantic_mlp is not None:
            outs[FieldHeadNames.SEMANTICS] = zeros(n, 1, self.field.config.num_classes)
        level = self.composite(samples, outs, zeros(n, 1, 1), bg_rgb, ray_bundle.fars)
        return self.with_images(level)

    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> dict[str, Tensor]:
        if not self.fast_rendering():
            return super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        return culled_image_outputs(
            camera_ray_bundle.to(self.device),
            self.forward,  # type: ignore[arg-type]
            self.background_outputs,
            self.config.eval_num_rays_per_chunk,
            self.config.render,
        )

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:
        metrics = super().get_metrics_dict(outputs, batch)
        if self.occupancy_grid is not None and self.training:
            # Share of the field's samples the occupancy grid let through in the last batch (1 before it is active).
            grid = self.occupancy_grid
            metrics["kept_samples"] = self._kept_share if grid.is_active else torch.ones((), device=self.device)
            metrics["occupied_cells"] = grid.occupied_share()
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training and "weights_list" in outputs:
            losses["interlevel_loss"] = self.config.interlevel_loss_mult * interlevel_loss(
                outputs["weights_list"], outputs["ray_samples_list"]
            )
            if self.config.distortion_loss_mult > 0:
                losses["distortion_loss"] = self.config.distortion_loss_mult * distortion_loss(
                    outputs["weights_list"], outputs["ray_samples_list"]
                )
        return losses
