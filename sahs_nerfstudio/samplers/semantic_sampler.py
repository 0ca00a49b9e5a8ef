"""Semantic-aware dynamic ray sampling (SAHS), with AD-NeRF's face-rectangle share as an option.

Each training step a pixel's chance to be drawn is its semantic class's probability. The
probabilities come from the per-class loss statistics of :mod:`sahs_nerfstudio.samplers.class_stats`,
which the pipeline (:class:`sahs_nerfstudio.pipeline.SAHSPipeline`) feeds from the model's losses
after every step and writes here with :meth:`SemanticPixelSampler.set_class_probabilities`.

The probabilities live in a :class:`SharedProbabilities` vector, memory shared with every copy of
the sampler, so a sampler copied into ``ParallelDataManager``'s worker processes still reads what
the trainer writes. The sampler uses them only once it is *activated* (the pipeline does that for the
train sampler); the eval sampler, built from the same config object, stays uniform.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from nerfstudio.data.utils.pixel_sampling_utils import divide_rays_per_image
from torch import Tensor

from sahs_nerfstudio.compat.shared_tensor import SharedVector
from sahs_nerfstudio.data.frame_store import PER_FRAME_KEYS, FaceRectLookup, finish_ray_batch
from sahs_nerfstudio.data.semantics import NUM_CLASSES
from sahs_nerfstudio.samplers.class_stats import DEFAULT_CLASS_WEIGHTS

# Rejection sampling: candidates per round are capped; after this many rounds (or 64k candidates
# with no acceptance) the rest is drawn exactly from the full weight map. With the class floor the
# acceptance rate is at least floor / max probability, so this is reached only for pathological
# weights (an all-false nerfstudio mask, a zero floor with zero class weights).
_MAX_CANDIDATES_PER_ROUND = 1 << 22
_MAX_REJECTION_ROUNDS = 16


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
    class_area_exponent: float = 0.0
    """``g`` in a pixel's weight ``p_c / area_c ** g`` (``area_c``: the class's share of the batch's pixels).
    0 is the published rule (a class's share of rays is ``p_c`` times its area: the mouth, ~1.5 % of a
    frame, gets ~2 % of the rays); 1 gives each class the share ``p_c`` of the rays whatever its size."""
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
    if not (math.isfinite(config.class_area_exponent) and 0.0 <= config.class_area_exponent <= 1.0):
        raise ValueError(f"class_area_exponent must be in [0, 1], got {config.class_area_exponent}")
    if config.log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {config.log_every}")


# ----------------------------------------------------------------------------------------------
# The probabilities, shared between the trainer and the sampler (possibly in another process)


class SharedProbabilities:
    """``[active, version, p_0 .. p_{K-1}]`` in a :class:`SharedVector`, shared by every copy (pickle) of it.

    A reader may see a mix of two consecutive vectors for one batch (writes are not atomic), which
    is harmless: every entry is a valid probability >= the floor, and a reader normalises what it reads.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.vector = SharedVector(num_classes + 2, prefix="sahs_sampler")
        self.tensor[2:] = 1.0 / num_classes

    @property
    def tensor(self) -> Tensor:
        return self.vector.tensor

    @property
    def path(self) -> str:
        return self.vector.path

    def close(self) -> None:
        """Remove the backing file now (owner only); attached processes keep their mapping."""
        self.vector.close()

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


def _gather(values: Tensor | FaceRectLookup, flat_index: Tensor) -> Tensor:
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
        self._area_cache: tuple[weakref.ref, int, Tensor] | None = None

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
        state["_area_cache"] = None
        return state

    # -- sampling ------------------------------------------------------------------------------

    def _class_weight_table(self, device: torch.device, labels: Tensor) -> tuple[Tensor, float] | None:
        """(per-class pixel weight, weight of an ignored pixel), or None when every pixel weighs the same."""
        if not self.active or self.config.mode == "uniform":
            return None
        probs = self.class_probabilities.to(device=device, dtype=torch.float32)
        if self.config.class_area_exponent > 0:
            # A class's rays ~ p_c * area_c^(1 - g); classes absent from the batch get no rays either way.
            probs = probs / self._class_areas(labels).to(device).pow(self.config.class_area_exponent)
        return probs, 1.0 / NUM_CLASSES

    def _class_areas(self, labels: Tensor) -> Float[Tensor, " K"]:
        """Each class's share of the labelled pixels (inf when absent); cached while ``labels`` is unchanged."""
        cache = self._area_cache
        if cache is not None and cache[0]() is labels and cache[1] == labels._version:
            return cache[2]
        flat = labels.reshape(-1).long()
        counts = torch.bincount(flat[flat >= 0], minlength=NUM_CLASSES)[:NUM_CLASSES].float()
        # An absent class weighs 0 (inf area): it has no pixel, and must not inflate the rejection bound.
        areas = torch.where(counts > 0, counts / counts.sum().clamp(min=1.0), torch.full_like(counts, math.inf))
        self._area_cache = (weakref.ref(labels), labels._version, areas)
        return areas

    def sample_indices(self, batch: dict, num_rays: int) -> Int[Tensor, "num_rays 3"]:
        """Batch-local ``(image, row, column)`` indices of ``num_rays`` rays drawn from an image batch."""
        image = batch["image"]
        num_images, height, width = image.shape[:3]
        total = num_images * height * width
        labels: Tensor | None = batch.get("semantics")
        face: Tensor | None = batch.get("face_rect")
        # Compact batches (SAHSDataManager) carry one rectangle per frame instead of a per-pixel image.
        rects = FaceRectLookup(batch["face_rects"], height, width) if "face_rects" in batch else None
        rects = None if face is not None else rects
        mask: Tensor | None = None if self.config.ignore_mask else batch.get("mask")
        device = image.device if labels is None else labels.device
        table = None if labels is None else self._class_weight_table(device, labels)
        ctx = _DrawContext(
            total=total,
            device=device,
            labels=None if table is None or labels is None else labels.reshape(-1),
            table=None if table is None else table[0],
            ignore_weight=0.0 if table is None else table[1],
            face=rects if face is None else face.reshape(-1).bool(),
            mask=None if mask is None else mask.reshape(-1).bool(),
        )
        frac = self.config.face_rect_fraction
        if frac is not None and ctx.face is not None and self.active and all(self._regions_of(face, rects)):
            n_in = int(round(frac * num_rays))
            parts = [self._draw(ctx, n_in, region=True), self._draw(ctx, num_rays - n_in, region=False)]
        else:
            parts = [self._draw(ctx, num_rays, region=None)]
        flat = torch.cat(parts)
        hw = height * width
        # On the image's device like nerfstudio's own indices (labels may sit on the GPU, images on the CPU).
        return torch.stack([flat // hw, (flat % hw) // width, flat % width], dim=-1).to(image.device)

    def _regions_of(self, face: Tensor | None, rects: FaceRectLookup | None) -> tuple[bool, bool]:
        if rects is not None:
            return rects.regions_present()
        return self._regions_present(face) if face is not None else (False, False)

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
        collated = {k: v[c, y, x] for k, v in batch.items() if k not in PER_FRAME_KEYS and v is not None}
        collated = finish_ray_batch(collated, batch, c, y, x)  # compact dtypes -> the model's, per-ray face_rect
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
    face: "Tensor | FaceRectLookup | None"
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
            lab = _gather(self.labels, flat).long()  # int8 in compact batches
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


__all__ = [
    "SemanticPixelSampler",
    "SemanticPixelSamplerConfig",
    "SharedProbabilities",
    "validate_config",
]
