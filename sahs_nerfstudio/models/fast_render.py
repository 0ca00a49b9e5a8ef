"""Rendering whole images with ``sahs-fast`` outside training, without the work that cannot show in them.

The training renderer evaluates the whole field (deformation, canonical grid and planes, colour and semantic
heads) at every sample of every ray. A pixel only depends on the samples that carry weight, so the renderer used
for images (evaluation, the viewer, ``sahs-render``) leaves out, in this order:

1. **rays far from anything** (:func:`culled_image_outputs`): a first pass renders every ``cull_stride``-th ray of
   the image in both directions. A pixel whose coarse cell (the four coarse rays around it) and the cells next to
   it all accumulate less than ``cull_accumulation`` is taken as the background: its colour can differ from the
   reference by at most its own accumulation (below the threshold, like the coarse rays around it) times the
   colour difference, so PSNR stays above ``-20 log10(cull_accumulation)`` (40 dB at 0.01) even in the worst case;
   the background is a known image, so those pixels cost one lookup;
2. **samples behind an opaque surface** (:func:`march`): the density half of the field runs over the samples of
   each ray in blocks, front to back; a ray stops once its transmittance is below ``stop_transmittance``, which
   bounds what all its remaining samples could add;
3. **colour and semantics of samples without weight**: the heads run only on samples whose weight exceeds
   ``min_weight`` (at most ``num_samples * min_weight`` of a pixel in all).

The proposal network and the PDF resampling run as in training (the same sample positions), every sample kept is
computed by the same functions, and compositing is the model's own (``SAHSModel.composite``), so the image is the
reference's up to those bounds (``tests/test_render_speed.py`` compares both paths on a trained model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import Tensor

from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY
from sahs_nerfstudio.fields.fast_field import SAHSFastField, per_ray

Outputs = dict[str, Tensor]


@dataclass
class FastRenderConfig:
    """How ``sahs-fast`` renders images outside training (evaluation, the viewer, ``sahs-render``)."""

    enabled: bool = True
    """Render images with the pruned renderer of ``models/fast_render.py``; False: every sample of every ray through
    the whole field, as in training (the reference it is tested against)."""
    cull_stride: int = 4
    """Spacing in pixels of the coarse first pass that finds empty regions of the image (< 2: no culling)."""
    cull_accumulation: float = 0.01
    """Pixels whose surrounding coarse rays all accumulate less than this are the background (bounds their error)."""
    stop_transmittance: float = 1e-4
    """A ray stops evaluating the field once its transmittance falls below this (bounds what is left out)."""
    min_weight: float = 2e-5
    """Samples with at most this weight skip the colour and semantic heads."""
    block_samples: int = 8
    """Samples per ray evaluated between two transmittance checks."""


def march(
    field: SAHSFastField,
    ray_samples: RaySamples,
    cfg: FastRenderConfig,
    keep: Bool[Tensor, "N S"] | None = None,
) -> tuple[dict, Float[Tensor, "N S 1"]]:
    """The field's outputs (keyed like ``field(ray_samples)``) and the samples' weights, evaluating the density half
    front to back with early ray termination and the heads only where there is weight; left-out samples (and those
    ``keep`` leaves out: the occupancy grid's empty cells) read 0."""
    code, pose = field.conditioning(ray_samples)
    positions = ray_samples.frustums.get_positions()
    deltas = ray_samples.deltas
    assert deltas is not None
    n, s = positions.shape[:2]
    max_depth = -math.log(cfg.stop_transmittance)
    optical_depth = positions.new_zeros(n)
    alive = torch.arange(n, device=positions.device)
    widths = _output_widths(field, positions, code, pose)
    full = {key: positions.new_zeros(n, s, width) for key, width in widths.items()}
    block = max(cfg.block_samples, 1)
    for s0 in range(0, s, block):
        if alive.numel() == 0:
            break
        s1 = min(s0 + block, s)
        if keep is None:
            rays = alive[:, None].expand(-1, s1 - s0).reshape(-1)
            samples = torch.arange(s0, s1, device=positions.device).repeat(alive.numel())
        else:
            r, c = keep[alive, s0:s1].nonzero(as_tuple=True)
            rays, samples = alive[r], c + s0
        if rays.numel() > 0:
            part = field.density_points(positions[rays, samples], *_point_conditioning(code, pose, rays, samples))
            for key in full:
                full[key][rays, samples] = part[key]
            optical_depth.index_add_(0, rays, part["density"][:, 0] * deltas[rays, samples, 0])
        alive = alive[optical_depth[alive] < max_depth]
    weights = ray_samples.get_weights(full["density"])

    rays, samples = (weights[..., 0] > cfg.min_weight).nonzero(as_tuple=True)
    directions = ray_samples.frustums.directions
    # At least one sample, so that the heads' output widths are known when nothing has weight.
    rays, samples = (rays, samples) if rays.numel() else (rays.new_zeros(1), samples.new_zeros(1))
    heads = field.head_points(full["feat"][rays, samples], directions[rays, samples])
    if weights[rays, samples].max() <= cfg.min_weight:
        heads = {key: torch.zeros_like(value) for key, value in heads.items()}
    outs: dict = {
        FieldHeadNames.DENSITY: full["density"],
        DEFORMATION_KEY: full[DEFORMATION_KEY],
        AMBIENT_KEY: full[AMBIENT_KEY],
    }
    for key, head in (("rgb", FieldHeadNames.RGB), ("semantics", FieldHeadNames.SEMANTICS)):
        if key in heads:
            values = positions.new_zeros(n, s, heads[key].shape[-1])
            values[rays, samples] = heads[key]
            outs[head] = values
    return outs, weights


def _output_widths(field: SAHSFastField, positions: Tensor, code: Tensor, pose: Tensor | None) -> dict[str, int]:
    """Widths of the density half's outputs the renderer keeps (from one point: the field's sizes decide them)."""
    one = torch.zeros(1, dtype=torch.long, device=positions.device)
    part = field.density_points(positions[:1, 0], *_point_conditioning(code, pose, one, one))
    return {key: part[key].shape[-1] for key in ("density", "feat", DEFORMATION_KEY, AMBIENT_KEY)}


def kept_outputs(field: SAHSFastField, ray_samples: RaySamples, keep: Bool[Tensor, "N S"]) -> dict:
    """``field(ray_samples)`` (differentiable, every head) evaluated only at the samples ``keep`` marks; the others
    read zero (density, colour, logits, deformation, ambient). Training's path with the occupancy grid."""
    code, pose = field.conditioning(ray_samples)
    positions = ray_samples.frustums.get_positions()
    n, s = positions.shape[:2]
    rays, samples = keep.nonzero(as_tuple=True)
    scale = 1.0
    if rays.numel() == 0:  # one sample for the output widths (and a graph), multiplied by zero below
        rays, samples, scale = rays.new_zeros(1), samples.new_zeros(1), 0.0
    directions = ray_samples.frustums.directions[rays, samples]
    point_code, point_pose, rows = _point_conditioning(code, pose, rays, samples)
    out = field.forward_points(positions[rays, samples], directions, point_code, point_pose, rows=rows)
    outs: dict = {}
    for key, head in (
        ("density", FieldHeadNames.DENSITY),
        ("rgb", FieldHeadNames.RGB),
        ("semantics", FieldHeadNames.SEMANTICS),
        (DEFORMATION_KEY, DEFORMATION_KEY),
        (AMBIENT_KEY, AMBIENT_KEY),
    ):
        if key in out:
            value = out[key] * scale
            outs[head] = value.new_zeros(n, s, value.shape[-1]).index_put((rays, samples), value)
    return outs


def _point_conditioning(
    code: Tensor, pose: Tensor | None, rays: Tensor, samples: Tensor
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(code, pose, rows)`` for the field's ``rows`` argument from the per-ray conditioning ``[N, 1 or S, C]`` (the
    samples' metadata may hold it expanded): a flat table of conditioning rows and each point's row in it."""
    code, pose = per_ray(code), (per_ray(pose) if pose is not None else None)
    if code.shape[1] == 1 and (pose is None or pose.shape[1] == 1):
        return code[:, 0], (pose[:, 0] if pose is not None else None), rays
    s = max(code.shape[1], pose.shape[1] if pose is not None else 1)
    n = code.shape[0]

    def flat(cond: Tensor) -> Tensor:
        return cond.expand(n, s, cond.shape[-1]).reshape(n * s, -1)

    return flat(code), (flat(pose) if pose is not None else None), rays * s + samples


def _coarse_lines(size: int, stride: int) -> Tensor:
    lines = torch.arange(0, size, stride)
    return lines if int(lines[-1]) == size - 1 else torch.cat([lines, torch.tensor([size - 1])])


def cull_mask(coarse_acc: Float[Tensor, "Hc Wc"], rows: Tensor, cols: Tensor, height: int, width: int, limit: float):
    """Pixels of the image whose coarse cell and its neighbouring cells all accumulate less than ``limit``.

    ``coarse_acc`` is the accumulation at the coarse rays (rows ``rows``, columns ``cols`` of the image).
    """
    dilated = F.max_pool2d(coarse_acc[None, None], kernel_size=3, stride=1, padding=1)
    cell_max = F.max_pool2d(dilated, kernel_size=2, stride=1)[0, 0]  # [Hc - 1, Wc - 1]: max over each cell's corners

    def cell_of(lines: Tensor, size: int) -> Tensor:
        index = torch.searchsorted(lines, torch.arange(size), right=True) - 1
        return index.clamp(0, lines.numel() - 2)

    return cell_max[cell_of(rows, height)][:, cell_of(cols, width)] < limit


def _chunked(render: Callable[[RayBundle], Outputs], rays: RayBundle, chunk: int) -> Outputs:
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(rays), chunk):
        for key, value in render(rays[start : start + chunk]).items():
            if isinstance(value, Tensor):
                parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


def culled_image_outputs(
    camera_ray_bundle: RayBundle,
    render: Callable[[RayBundle], Outputs],
    background: Callable[[RayBundle], Outputs],
    chunk: int,
    cfg: FastRenderConfig,
) -> Outputs:
    """An image's outputs ``[H, W, C]``: ``render`` (rays -> per-ray outputs) on the coarse rays and on every pixel
    near something, ``background`` (the outputs of an empty ray) on the rest."""
    height, width = camera_ray_bundle.shape[:2]
    flat = camera_ray_bundle.flatten()
    stride = cfg.cull_stride
    if stride < 2 or height <= stride or width <= stride:
        outputs = _chunked(render, flat, chunk)
        return {key: value.view(height, width, -1) for key, value in outputs.items()}
    rows, cols = _coarse_lines(height, stride), _coarse_lines(width, stride)
    coarse_index = (rows[:, None] * width + cols[None, :]).flatten()
    coarse = _chunked(render, flat[coarse_index.to(flat.origins.device)], chunk)
    culled = cull_mask(
        coarse["accumulation"].view(rows.numel(), cols.numel()).cpu(), rows, cols, height, width, cfg.cull_accumulation
    ).flatten()
    culled[coarse_index] = False
    todo = torch.ones(height * width, dtype=torch.bool)
    todo[coarse_index] = False
    todo &= ~culled
    groups = [(coarse_index, coarse)]
    for mask, fn in ((todo, render), (culled, background)):
        index = mask.nonzero()[:, 0]
        if index.numel() > 0:
            groups.append((index, _chunked(fn, flat[index.to(flat.origins.device)], chunk)))
    outputs: Outputs = {}
    for key, value in coarse.items():
        full = value.new_empty(height * width, *value.shape[1:])
        for index, part in groups:
            full[index.to(full.device)] = part[key]
        outputs[key] = full.view(height, width, -1)
    return outputs
