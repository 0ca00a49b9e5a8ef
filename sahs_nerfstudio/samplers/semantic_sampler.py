"""Semantic-aware dynamic ray sampling.

Each training step a pixel's chance to be drawn is its semantic class's probability; the class
probabilities follow each class's recent loss (per-ray RGB MSE + semantic CE, coarse and fine,
averaged over the class's rays), multiplied by a per-class weight (mouth interior and lips x2),
normalised, and mixed with a floor so that no class ever starves. Unlike the published code, which
recomputes the probabilities from the last batch only (a class absent from one batch gets
probability 0 forever), the loss of each class is an exponential moving average that a class
keeps while it is absent.

How the statistics travel (see :class:`SamplerUpdater`):

* the model fills ``class_loss_sum`` / ``class_loss_count`` in ``get_loss_dict``;
* an AFTER_TRAIN_ITERATION callback all-reduces them across processes (``--machine.num-devices N``)
  so every rank holds the same statistics, updates :class:`ClassLossEMA` (a persistent buffer on
  the model, hence saved with the checkpoint) and writes the probabilities into the train
  sampler's :class:`SharedProbabilities`;
* :class:`SharedProbabilities` is a small file-backed shared-memory tensor, pickled by file name,
  so a sampler copied into ``ParallelDataManager``'s worker processes (``pathos`` spawn, which does
  not use torch's shared-tensor pickling) still reads the probabilities the trainer writes.

The sampler uses its probabilities only once it is *activated* (the callbacks do that for the
train sampler); the eval sampler, built from the same config object, stays uniform.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from nerfstudio.data.utils.pixel_sampling_utils import divide_rays_per_image
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils import writer
from torch import Tensor, nn

from sahs_nerfstudio.data.semantics import CLASS_NAMES, MOUTH_CLASSES, NUM_CLASSES

DEFAULT_CLASS_WEIGHTS: tuple[float, ...] = tuple(2.0 if c in MOUTH_CLASSES else 1.0 for c in range(NUM_CLASSES))
"""Mouth interior and lips count twice, as in the published method."""

# Rejection sampling: candidates per round are capped; after this many rounds (or 64k candidates
# with no acceptance) the rest is drawn exactly from the full weight map. With the class floor the
# acceptance rate is at least floor / max probability, so this is reached only for pathological
# weights (an all-false nerfstudio mask, a zero floor with zero class weights).
_MAX_CANDIDATES_PER_ROUND = 1 << 22
_MAX_REJECTION_ROUNDS = 16


def class_log_name(cls: int) -> str:
    """Scalar name of a class's probability, e.g. ``sampler/p_mouth_interior``."""
    return "sampler/p_" + CLASS_NAMES[cls].replace(" ", "_").replace("/", "_")


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class SemanticPixelSamplerConfig(PixelSamplerConfig):
    """Semantic-aware dynamic ray sampling (SAHS), with AD-NeRF's face-rectangle share as an option."""

    _target: type = field(default_factory=lambda: SemanticPixelSampler)
    """Target class to instantiate."""
    mode: Literal["semantic", "uniform"] = "semantic"
    """``semantic``: a pixel's weight is its class's probability; ``uniform``: every pixel weighs the same."""
    class_weights: tuple[float, ...] = DEFAULT_CLASS_WEIGHTS
    """One multiplier per class (12) on its loss before normalising; mouth interior and lips x2 by default."""
    ema_decay: float = 0.9
    """Moving-average decay of each class's mean loss per step (0 = last batch only, as published)."""
    min_class_probability: float = 0.01
    """Floor of every class probability, at most 1/12: p = floor + (1 - 12 floor) * normalised weighted loss."""
    face_rect_fraction: float | None = None
    """Share of rays drawn inside the frame's face rectangle/bbox, the rest outside (AD-NeRF: 0.95); None = off."""
    log_every: int = 100
    """Log the class probabilities (``sampler/p_<class>``) every this many steps."""


def validate_config(config: SemanticPixelSamplerConfig) -> None:
    """Raise ValueError for settings that cannot give a distribution."""
    if len(config.class_weights) != NUM_CLASSES:
        raise ValueError(f"class_weights needs {NUM_CLASSES} values, got {len(config.class_weights)}")
    if any((not math.isfinite(w)) or w < 0 for w in config.class_weights):
        raise ValueError(f"class_weights must be finite and >= 0, got {config.class_weights}")
    if not 0.0 <= config.min_class_probability <= 1.0 / NUM_CLASSES:
        raise ValueError(f"min_class_probability must be in [0, 1/{NUM_CLASSES}], got {config.min_class_probability}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.face_rect_fraction is not None and not 0.0 <= config.face_rect_fraction <= 1.0:
        raise ValueError(f"face_rect_fraction must be in [0, 1] or None, got {config.face_rect_fraction}")
    if config.log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {config.log_every}")


# ----------------------------------------------------------------------------------------------
# Loss statistics -> class probabilities


def class_probabilities(
    mean_loss: Float[Tensor, " K"],
    seen: Tensor,
    class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS,
    min_probability: float = 0.01,
) -> Float[Tensor, " K"]:
    """Class probabilities from per-class mean losses: ``floor + (1 - K floor) * w*l / sum(w*l)``.

    Classes never seen get the largest seen loss (so they are explored once they show up). With no
    class seen, or all weighted losses zero, the result is uniform over classes (or proportional to
    the weights). Always finite, sums to 1, and every entry is >= ``min_probability``.
    """
    k = mean_loss.shape[0]
    if not 0.0 <= min_probability <= 1.0 / k:
        raise ValueError(f"min_probability must be in [0, 1/{k}], got {min_probability}")
    weights = torch.as_tensor(class_weights, dtype=torch.float64, device=mean_loss.device)
    seen = seen.bool() & torch.isfinite(mean_loss)
    if not bool(seen.any()):
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=mean_loss.device)
    loss = mean_loss.double().clamp(min=0.0)
    loss = torch.where(seen, loss, loss[seen].max())
    score = weights * loss
    total = score.sum()
    if not bool(total > 0):
        score = weights if bool(weights.sum() > 0) else torch.ones_like(weights)
        total = score.sum()
    return min_probability + (1.0 - k * min_probability) * score / total


class ClassLossEMA(nn.Module):
    """Per-class moving average of the mean per-ray loss; a persistent buffer, so checkpoints keep it.

    A class absent from a batch keeps its average (it neither decays nor drops to zero); the first
    batch that contains a class sets its average directly.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.register_buffer("mean_loss", torch.zeros(num_classes))
        self.register_buffer("num_updates", torch.zeros(num_classes, dtype=torch.long))

    mean_loss: Tensor
    num_updates: Tensor

    @property
    def seen(self) -> Tensor:
        return self.num_updates > 0

    @torch.no_grad()
    def update(self, loss_sum: Float[Tensor, " K"], loss_count: Float[Tensor, " K"], decay: float) -> None:
        """Fold in one batch: classes with rays get ``decay * old + (1 - decay) * batch mean``."""
        loss_sum = loss_sum.detach().to(self.mean_loss.device, torch.float32)
        loss_count = loss_count.detach().to(self.mean_loss.device, torch.float32)
        batch_mean = loss_sum / loss_count.clamp(min=1.0)
        present = (loss_count > 0) & torch.isfinite(batch_mean)
        first = present & ~self.seen
        blended = decay * self.mean_loss + (1.0 - decay) * batch_mean
        new = torch.where(first, batch_mean, torch.where(present, blended, self.mean_loss))
        self.mean_loss.copy_(new)
        self.num_updates.add_(present.long())

    def probabilities(self, class_weights: Sequence[float], min_probability: float) -> Float[Tensor, " K"]:
        return class_probabilities(self.mean_loss, self.seen, class_weights, min_probability)


def all_reduce_class_stats(
    loss_sum: Float[Tensor, " K"], loss_count: Float[Tensor, " K"]
) -> tuple[Float[Tensor, " K"], Float[Tensor, " K"]]:
    """Sum the batch statistics over all processes (a no-op without an initialised process group)."""
    stats = torch.stack([loss_sum.detach().float(), loss_count.detach().float()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats[0], stats[1]


# ----------------------------------------------------------------------------------------------
# Shared state between the trainer and the sampler (possibly in another process)


def _shared_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SharedProbabilities:
    """``[active, version, p_0 .. p_{K-1}]`` in a memory-mapped file, shared by every process that unpickles it.

    Pickling keeps only the file name (plus a snapshot), so it survives any pickler, including the
    ``dill``-based one of ``pathos`` that ParallelDataManager uses. The creating process removes the
    file when this object is garbage collected or the process exits. Writes are not atomic: a reader
    may see a mix of two consecutive vectors for one batch, which is harmless (every entry is a
    valid probability >= the floor); a reader normalises what it reads.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.path = os.path.join(_shared_dir(), f"sahs_sampler_{os.getpid()}_{uuid.uuid4().hex}")
        self.tensor = self._map(self.path, num_classes)
        self.tensor.zero_()
        self.tensor[2:] = 1.0 / num_classes
        self._finalizer = weakref.finalize(self, _unlink, self.path)

    @staticmethod
    def _map(path: str, num_classes: int) -> Tensor:
        return torch.from_file(path, shared=True, size=num_classes + 2, dtype=torch.float64)

    def __getstate__(self) -> dict:
        return {"num_classes": self.num_classes, "path": self.path, "snapshot": self.tensor.clone()}

    def __setstate__(self, state: dict) -> None:
        self.num_classes = state["num_classes"]
        self.path = state["path"]
        self._finalizer = None
        if os.path.exists(self.path):
            self.tensor = self._map(self.path, self.num_classes)
        else:  # the owner is gone: keep a private copy rather than create an orphan file
            self.tensor = state["snapshot"].clone()

    def close(self) -> None:
        """Remove the backing file now (owner only); attached processes keep their mapping."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def active(self) -> bool:
        return bool(self.tensor[0] > 0.5)

    @property
    def version(self) -> int:
        return int(self.tensor[1])

    def activate(self) -> None:
        self.tensor[0] = 1.0

    def read(self) -> Float[Tensor, " K"]:
        """A consistent copy of the probabilities (normalised; uniform if the stored values are unusable)."""
        probs = self.tensor[2:].clone()
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) or not bool(probs.sum() > 0):
            return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)
        return probs / probs.sum()

    def write(self, probs: Float[Tensor, " K"]) -> None:
        probs = torch.as_tensor(probs, dtype=torch.float64).detach().cpu().flatten()
        if probs.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} class probabilities, got {probs.shape[0]}")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) or not bool(probs.sum() > 0):
            raise ValueError(f"class probabilities must be finite, >= 0 and not all zero, got {probs.tolist()}")
        self.tensor[2:] = probs / probs.sum()
        self.tensor[1] += 1.0
        self.tensor[0] = 1.0


# ----------------------------------------------------------------------------------------------
# The sampler


def _gather(values: Tensor, flat_index: Tensor) -> Tensor:
    return values[flat_index.to(values.device)].to(flat_index.device)


class SemanticPixelSampler(PixelSampler):
    """Draws rays with per-pixel weight = probability of the pixel's class (rejection sampling, exact).

    Batch keys used: ``semantics`` ([B, H, W, 1] long, -1 = ignore; optional), ``face_rect``
    ([B, H, W, 1] bool; optional) and nerfstudio's ``mask`` (pixels outside it are never drawn).
    Ignored pixels, and every pixel of a batch without ``semantics``, weigh ``1/K``: the weight every
    pixel has under uniform class probabilities. Draws are with replacement, as nerfstudio's own.
    The inherited ``rejection_sample_mask``/``max_num_iterations`` fields are not used.
    """

    config: SemanticPixelSamplerConfig

    def __init__(self, config: SemanticPixelSamplerConfig, **kwargs) -> None:
        validate_config(config)
        super().__init__(config, **kwargs)
        self.shared = SharedProbabilities(NUM_CLASSES)
        self._warned: set = set()
        self._region_cache: tuple[weakref.ref, int, tuple[bool, bool]] | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def class_probabilities(self) -> Float[Tensor, " K"]:
        """The probabilities the sampler uses (float64, CPU)."""
        return self.shared.read()

    @property
    def active(self) -> bool:
        """False until :meth:`activate`/:meth:`set_class_probabilities`: an inactive sampler is plain uniform."""
        return self.shared.active

    def activate(self) -> None:
        self.shared.activate()

    def set_class_probabilities(self, probs: Float[Tensor, " K"]) -> None:
        """Store new class probabilities (normalised here) and activate the sampler; visible to worker processes."""
        self.shared.write(probs)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_warned"] = set()
        state["_region_cache"] = None  # holds a weak reference: not picklable
        return state

    # -- sampling ------------------------------------------------------------------------------

    def _class_weight_table(self, device: torch.device) -> tuple[Tensor, float] | None:
        """(per-class pixel weight, weight of an ignored pixel), or None when every pixel weighs the same."""
        if not self.active or self.config.mode == "uniform":
            return None
        probs = self.class_probabilities.to(device=device, dtype=torch.float32)
        return probs, 1.0 / NUM_CLASSES

    def sample_indices(self, batch: dict, num_rays: int) -> Int[Tensor, "num_rays 3"]:
        """Batch-local ``(image, row, column)`` indices of ``num_rays`` rays drawn from an image batch."""
        image = batch["image"]
        num_images, height, width = image.shape[:3]
        total = num_images * height * width
        labels: Tensor | None = batch.get("semantics")
        face: Tensor | None = batch.get("face_rect")
        mask: Tensor | None = None if self.config.ignore_mask else batch.get("mask")
        device = image.device if labels is None else labels.device
        table = None if labels is None else self._class_weight_table(device)
        ctx = _DrawContext(
            total=total,
            device=device,
            labels=None if table is None or labels is None else labels.reshape(-1),
            table=None if table is None else table[0],
            ignore_weight=0.0 if table is None else table[1],
            face=None if face is None else face.reshape(-1).bool(),
            mask=None if mask is None else mask.reshape(-1).bool(),
        )
        frac = self.config.face_rect_fraction
        if frac is not None and face is not None and self.active and all(self._regions_present(face)):
            n_in = int(round(frac * num_rays))
            parts = [self._draw(ctx, n_in, region=True), self._draw(ctx, num_rays - n_in, region=False)]
        else:
            parts = [self._draw(ctx, num_rays, region=None)]
        flat = torch.cat(parts)
        hw = height * width
        # On the image's device like nerfstudio's own indices (labels may sit on the GPU, images on the CPU).
        return torch.stack([flat // hw, (flat % hw) // width, flat % width], dim=-1).to(image.device)

    def _regions_present(self, face: Tensor) -> tuple[bool, bool]:
        """Whether any pixel is inside / outside the face rectangle; cached while the batch tensor is unchanged."""
        cache = self._region_cache
        if cache is not None and cache[0]() is face and cache[1] == face._version:
            return cache[2]
        present = (bool(face.any()), not bool(face.all()))
        if not all(present):
            where = "inside" if not present[0] else "outside"
            self._warn_once(
                f"region_{where}", f"No pixel {where} the face rectangle in the batch: rays use the whole image."
            )
        self._region_cache = (weakref.ref(face), face._version, present)
        return present

    def _draw(self, ctx: "_DrawContext", n: int, region: bool | None) -> Tensor:
        """``n`` flat pixel indices from the weight map restricted to ``region`` (inside/outside the face rect)."""
        if n <= 0:
            return torch.zeros(0, dtype=torch.long, device=ctx.device)
        if ctx.uniform and (region is None or ctx.face is None):
            return torch.randint(ctx.total, (n,), device=ctx.device)
        out = _rejection_sample(ctx, n, region)
        if out is not None:
            return out
        if region is not None:
            where = "inside" if region else "outside"
            self._warn_once(
                f"region{region}", f"No pixel {where} the face rectangle in this batch: those rays use the whole image."
            )
            return self._draw(ctx, n, None)
        self._warn_once("empty", "Every pixel of the batch has zero sampling weight (empty mask?): sampling uniformly.")
        return torch.randint(ctx.total, (n,), device=ctx.device)

    # -- nerfstudio entry points ---------------------------------------------------------------

    def collate_image_dataset_batch(self, batch: dict, num_rays_per_batch: int, keep_full_image: bool = False):
        """nerfstudio's collate with our indices: every per-pixel key (``semantics``, ``face_rect``) is gathered."""
        if bool(self.config.is_equirectangular) or self.config.fisheye_crop_radius is not None:
            self._warn_once("camera", "SemanticPixelSampler: equirectangular/fisheye cameras use nerfstudio's sampler.")
            return super().collate_image_dataset_batch(batch, num_rays_per_batch, keep_full_image)
        indices = self.sample_indices(batch, num_rays_per_batch)
        c, y, x = (i.flatten().cpu() for i in torch.split(indices, 1, dim=-1))
        collated = {key: value[c, y, x] for key, value in batch.items() if key != "image_idx" and value is not None}
        assert collated["image"].shape[0] == num_rays_per_batch
        indices = indices.clone()
        indices[:, 0] = batch["image_idx"][c].to(indices.device)
        collated["indices"] = indices
        if keep_full_image:
            collated["full_image"] = batch["image"]
        return collated

    def collate_image_dataset_batch_list(self, batch: dict, num_rays_per_batch: int, keep_full_image: bool = False):
        """Variable-resolution batches (lists of images): each image gets its share of rays, weighted within it."""
        images: list[Tensor] = batch["image"]
        num_images = len(images)
        per_pixel = [k for k, v in batch.items() if isinstance(v, list) and len(v) == num_images]
        counts = divide_rays_per_image(num_rays_per_batch, num_images)
        all_indices, gathered = [], {k: [] for k in per_pixel}
        for i, n in enumerate(counts):
            if n == 0:
                continue
            sub = {k: batch[k][i][None] for k in per_pixel}
            idx = self.sample_indices(sub, n)
            idx[:, 0] = i
            y, x = idx[:, 1].cpu(), idx[:, 2].cpu()
            for k in per_pixel:
                gathered[k].append(batch[k][i][y, x])
            all_indices.append(idx)
        indices = torch.cat(all_indices)
        c = indices[:, 0].cpu()
        collated = {k: torch.cat(v) for k, v in gathered.items() if k != "mask"}
        assert collated["image"].shape[0] == num_rays_per_batch
        indices[:, 0] = batch["image_idx"][c].to(indices.device)
        collated["indices"] = indices
        if keep_full_image:
            collated["full_image"] = batch["image"]
        return collated


@dataclass
class _DrawContext:
    total: int
    device: torch.device
    labels: Tensor | None
    """Flat labels when pixels are weighted by class, else None (all weights equal)."""
    table: Tensor | None
    ignore_weight: float
    face: Tensor | None
    mask: Tensor | None

    @property
    def uniform(self) -> bool:
        return self.labels is None and self.mask is None

    @property
    def max_weight(self) -> float:
        if self.table is None:
            return 1.0
        return max(float(self.table.max()), self.ignore_weight)

    def weights(self, flat: Tensor, region: bool | None) -> Tensor:
        if self.labels is None or self.table is None:
            w = torch.ones(flat.shape[0], device=self.device)
        else:
            lab = _gather(self.labels, flat)
            w = self.table[lab.clamp(min=0)]
            w = torch.where(lab >= 0, w, torch.full_like(w, self.ignore_weight))
        if region is not None and self.face is not None:
            w = w * (_gather(self.face, flat) == region)
        if self.mask is not None:
            w = w * _gather(self.mask, flat)
        return w


def _rejection_sample(ctx: _DrawContext, n: int, region: bool | None) -> Tensor | None:
    """Exact draws with replacement, probability proportional to ``ctx.weights``; None if all weights are 0."""
    w_max = ctx.max_weight
    got: list[Tensor] = []
    num_got = drawn = accepted = 0
    m = min(max(4 * n, 1024), _MAX_CANDIDATES_PER_ROUND)
    for _ in range(_MAX_REJECTION_ROUNDS):
        cand = torch.randint(ctx.total, (m,), device=ctx.device)
        ok = torch.rand(m, device=ctx.device) * w_max < ctx.weights(cand, region)
        acc = cand[ok]
        got.append(acc[: n - num_got])
        num_got += min(acc.shape[0], n - num_got)
        drawn += m
        accepted += acc.shape[0]
        if num_got >= n:
            return torch.cat(got)
        if accepted == 0 and drawn >= 1 << 16:
            break  # (nearly) empty support: let the exact path decide
        rate = max(accepted / drawn, 1.0 / (drawn * 4))
        m = int(min(math.ceil((n - num_got) / rate * 1.3) + 64, _MAX_CANDIDATES_PER_ROUND))
    # Rare weights or a tiny region: draw the rest exactly from the full weight map.
    weights = ctx.weights(torch.arange(ctx.total, device=ctx.device), region).double()
    cdf = torch.cumsum(weights, 0)
    if not bool(cdf[-1] > 0):
        return None
    u = torch.rand(n - num_got, device=ctx.device, dtype=torch.float64) * cdf[-1]
    rest = torch.searchsorted(cdf, u, right=True).clamp(max=ctx.total - 1)
    return torch.cat(got + [rest])


# ----------------------------------------------------------------------------------------------
# Training callbacks: model statistics -> EMA (checkpointed) -> sampler


def find_train_sampler(pipeline) -> SemanticPixelSampler | None:
    """The pipeline's train sampler if it is a :class:`SemanticPixelSampler` (ParallelDataManager included)."""
    datamanager = getattr(pipeline, "datamanager", None)
    sampler = getattr(datamanager, "train_pixel_sampler", None)
    return sampler if isinstance(sampler, SemanticPixelSampler) else None


class SamplerUpdater:
    """Feeds a :class:`SemanticPixelSampler` from the model's per-class loss statistics.

    Args:
        tracker: the model's :class:`ClassLossEMA` (persistent: a resumed run starts from it).
        get_stats: returns the latest batch's ``(class_loss_sum, class_loss_count)``; they are
            zeroed in place after being read so a batch is never counted twice.
        sampler: the train sampler (in this process; its probabilities are shared with workers).
    """

    def __init__(
        self,
        tracker: ClassLossEMA,
        get_stats: Callable[[], tuple[Tensor, Tensor]],
        sampler: SemanticPixelSampler,
    ) -> None:
        self.tracker = tracker
        self.get_stats = get_stats
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
        loss_sum, loss_count = self.get_stats()
        total_sum, total_count = all_reduce_class_stats(loss_sum, loss_count)
        with torch.no_grad():
            loss_sum.zero_()
            loss_count.zero_()
        self.tracker.update(total_sum, total_count, self.config.ema_decay)
        self.push()
        if self.config.mode == "semantic" and step % self.config.log_every == 0:
            probs = self.sampler.class_probabilities
            for cls in range(NUM_CLASSES):
                writer.put_scalar(name=class_log_name(cls), scalar=float(probs[cls]), step=step)

    def callbacks(self) -> list[TrainingCallback]:
        before = TrainingCallbackLocation.BEFORE_TRAIN_ITERATION
        after = TrainingCallbackLocation.AFTER_TRAIN_ITERATION
        return [
            TrainingCallback(where_to_run=[before], update_every_num_iters=1, func=self.before_iteration),
            TrainingCallback(where_to_run=[after], update_every_num_iters=1, func=self.after_iteration),
        ]


def semantic_sampler_callbacks(
    model: nn.Module, tracker: ClassLossEMA, attributes: TrainingCallbackAttributes
) -> list[TrainingCallback]:
    """Callbacks for a model exposing ``class_loss_sum``/``class_loss_count``; none if the sampler is not ours."""
    sampler = find_train_sampler(attributes.pipeline)
    if sampler is None:
        return []

    def get_stats() -> tuple[Tensor, Tensor]:
        return model.class_loss_sum, model.class_loss_count  # type: ignore[return-value]

    return SamplerUpdater(tracker, get_stats, sampler).callbacks()


__all__ = [
    "DEFAULT_CLASS_WEIGHTS",
    "ClassLossEMA",
    "SamplerUpdater",
    "SemanticPixelSampler",
    "SemanticPixelSamplerConfig",
    "SharedProbabilities",
    "all_reduce_class_stats",
    "class_log_name",
    "class_probabilities",
    "find_train_sampler",
    "semantic_sampler_callbacks",
]
