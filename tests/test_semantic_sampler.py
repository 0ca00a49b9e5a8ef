"""The semantic-aware dynamic ray sampler: statistics, floor, all-reduce, fallbacks, face-rect share, resume,
and the pipeline that feeds it from the model's losses.

Statistical tests use scipy's chi-square goodness of fit and accept at p > 0.001 (a correct sampler
fails one such test in 1000 runs; seeds are fixed so runs are reproducible). Each also checks the
test has power: the same counts reject a plausible wrong hypothesis at p < 1e-9.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils import writer
from scipy.stats import chisquare

from sahs_nerfstudio.data.semantics import IGNORE_LABEL, LIPS, MOUTH_INTERIOR, NUM_CLASSES
from sahs_nerfstudio.pipeline import SAHSPipeline, SamplerUpdater, find_train_sampler
from sahs_nerfstudio.samplers.class_stats import (
    DEFAULT_CLASS_WEIGHTS,
    ClassLossEMA,
    class_log_name,
    class_probabilities,
)
from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSampler, SemanticPixelSamplerConfig

K = NUM_CLASSES
ALPHA = 1e-3
BEFORE = TrainingCallbackLocation.BEFORE_TRAIN_ITERATION
AFTER = TrainingCallbackLocation.AFTER_TRAIN_ITERATION


def make_sampler(num_rays: int = 2048, **cfg) -> SemanticPixelSampler:
    sampler = SemanticPixelSamplerConfig(**cfg).setup(num_rays_per_batch=num_rays)
    assert isinstance(sampler, SemanticPixelSampler)
    return sampler


def label_batch(counts: dict, num_images: int = 2, height: int = 16, width: int = 18, seed: int = 0) -> dict:
    """A batch whose labels have exactly ``counts[class]`` pixels per class (the rest background), shuffled."""
    total = num_images * height * width
    flat = torch.zeros(total, dtype=torch.long)
    pos = 0
    for cls, n in counts.items():
        flat[pos : pos + n] = cls
        pos += n
    assert pos <= total
    gen = torch.Generator().manual_seed(seed)
    flat = flat[torch.randperm(total, generator=gen)]
    return {
        "image": torch.rand(num_images, height, width, 3, generator=gen),
        "image_idx": torch.arange(num_images) + 10,
        "semantics": flat.view(num_images, height, width, 1),
    }


def category_counts(labels: torch.Tensor) -> np.ndarray:
    """Counts of ignore (index 0) and of classes 0..K-1 (indices 1..K)."""
    return torch.bincount(labels.view(-1) + 1, minlength=K + 1).numpy().astype(np.float64)


def expected_category_frequencies(batch: dict, probs: torch.Tensor) -> np.ndarray:
    """Pixel weight = p[class], ignored pixels 1/K: expected share of each category."""
    pixel_counts = category_counts(batch["semantics"])
    weights = np.concatenate([[1.0 / K], probs.double().numpy()])
    mass = pixel_counts * weights
    return mass / mass.sum()


def draw_labels(sampler: SemanticPixelSampler, batch: dict, num_batches: int) -> torch.Tensor:
    return torch.cat([sampler.sample(batch)["semantics"].view(-1) for _ in range(num_batches)])


def chi2_p(observed: np.ndarray, expected_freq: np.ndarray) -> float:
    keep = expected_freq > 0
    assert observed[~keep].sum() == 0, "drew from a category of probability zero"
    exp = expected_freq[keep] * observed.sum()
    return float(chisquare(observed[keep], exp).pvalue)


# ----------------------------------------------------------------------------------------------
# (1) with fixed class probabilities, sampled class frequencies match them


def test_sampled_class_frequencies_match_fixed_probabilities():
    torch.manual_seed(0)
    counts = {1: 150, 2: 40, 4: 20, MOUTH_INTERIOR: 8, LIPS: 12, 9: 100, 11: 120, IGNORE_LABEL: 30}
    batch = label_batch(counts)  # 576 pixels, background fills the rest (96)
    probs = torch.tensor([0.02, 0.05, 0.08, 0.1, 0.1, 0.05, 0.05, 0.3, 0.12, 0.04, 0.05, 0.04])
    sampler = make_sampler()
    sampler.set_class_probabilities(probs)
    drawn = draw_labels(sampler, batch, num_batches=30)  # 61440 rays
    observed = category_counts(drawn)
    expected = expected_category_frequencies(batch, probs)
    assert chi2_p(observed, expected) > ALPHA
    # Power: plain uniform pixel sampling is clearly rejected by the same counts.
    uniform = category_counts(batch["semantics"]) / batch["semantics"].numel()
    assert chi2_p(observed, uniform) < 1e-9


def test_every_pixel_is_drawn_in_proportion_to_its_weight():
    """Pixel-level exactness (within a class too): per-pixel counts against p[class(pixel)]."""
    torch.manual_seed(1)
    batch = label_batch({1: 60, 7: 40, 8: 30, IGNORE_LABEL: 20}, num_images=2, height=8, width=10)  # 160 pixels
    probs = torch.tensor([0.05, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.2, 0.15, 0.05, 0.05, 0.05])
    sampler = make_sampler()
    sampler.set_class_probabilities(probs)
    flat = []
    for _ in range(20):
        idx = sampler.sample(batch)["indices"]
        flat.append((idx[:, 0] - 10) * 80 + idx[:, 1] * 10 + idx[:, 2])
    observed = torch.bincount(torch.cat(flat), minlength=160).numpy().astype(np.float64)
    labels = batch["semantics"].view(-1)
    weights = torch.where(labels >= 0, probs[labels.clamp(min=0)], torch.tensor(1.0 / K)).double().numpy()
    assert chi2_p(observed, weights / weights.sum()) > ALPHA
    assert chi2_p(observed, np.full(160, 1 / 160)) < 1e-9


def test_uniform_mode_ignores_class_probabilities():
    torch.manual_seed(2)
    batch = label_batch({7: 10, 1: 200})
    sampler = make_sampler(mode="uniform")
    sampler.set_class_probabilities(torch.tensor([0.01] * 7 + [0.89] + [0.01] * 4))
    observed = category_counts(draw_labels(sampler, batch, 10))
    assert chi2_p(observed, category_counts(batch["semantics"]) / batch["semantics"].numel()) > ALPHA


# ----------------------------------------------------------------------------------------------
# (2) a class absent from several batches keeps at least the floor


def test_absent_class_keeps_its_loss_and_at_least_the_floor():
    floor = 0.01
    tracker = ClassLossEMA(K)
    counts = torch.full((K,), 10.0)
    tracker.update(torch.full((K,), 1.0) * counts, counts, decay=0.9)  # every class: mean loss 1
    p_first = tracker.probabilities(DEFAULT_CLASS_WEIGHTS, floor)
    absent = torch.ones(K)
    absent[MOUTH_INTERIOR] = 0.0  # mouth interior absent from the next 50 batches
    for _ in range(50):
        tracker.update(100.0 * absent * counts, absent * counts, decay=0.9)  # every other class: loss 100
        p = tracker.probabilities(DEFAULT_CLASS_WEIGHTS, floor)
        assert p[MOUTH_INTERIOR] >= floor - 1e-12
        assert torch.all(p >= floor - 1e-12) and abs(float(p.sum()) - 1.0) < 1e-9
    assert float(tracker.mean_loss[MOUTH_INTERIOR]) == pytest.approx(1.0)  # kept, not decayed
    assert int(tracker.num_updates[MOUTH_INTERIOR]) == 1 and int(tracker.num_updates[0]) == 51
    # The others' average went 1 -> 100 - 99 * 0.9^50; mouth (weight 2) keeps loss 1.
    others = 100.0 - 99.0 * 0.9**50
    expected = floor + (1 - K * floor) * 2.0 / (2.0 + 2 * others + 10 * others)
    assert float(p[MOUTH_INTERIOR]) == pytest.approx(expected, rel=1e-4)
    assert float(p[MOUTH_INTERIOR]) < float(p_first[MOUTH_INTERIOR])

    # The published rule (last batch only) with a zero floor would give exactly 0; ours keeps the floor
    # even when the class's loss was 0 and the decay is 0.
    t0 = ClassLossEMA(K)
    t0.update(torch.zeros(K), torch.ones(K), decay=0.0)
    t0.update(absent * 5.0, absent, decay=0.0)
    p0 = t0.probabilities(DEFAULT_CLASS_WEIGHTS, floor)
    assert float(p0[MOUTH_INTERIOR]) == pytest.approx(floor)

    # And a floor-probability class is still drawn by the sampler.
    torch.manual_seed(3)
    batch = label_batch({MOUTH_INTERIOR: 20, 1: 300})
    sampler = make_sampler()
    sampler.set_class_probabilities(p0)
    drawn = draw_labels(sampler, batch, 10)
    n_mouth = int((drawn == MOUTH_INTERIOR).sum())
    exp = expected_category_frequencies(batch, p0)[MOUTH_INTERIOR + 1] * drawn.numel()
    assert n_mouth > 0 and abs(n_mouth - exp) < 5 * np.sqrt(exp)


def test_class_probabilities_formula_weights_and_unseen_classes():
    loss = torch.tensor([1.0, 2.0, 0, 0, 0, 0, 0, 3.0, 1.0, 0, 0, 0])
    seen = torch.zeros(K, dtype=torch.bool)
    seen[[0, 1, 7, 8]] = True
    p = class_probabilities(loss, seen, DEFAULT_CLASS_WEIGHTS, 0.02)
    # Unseen classes take the largest seen loss (3), mouth interior and lips count x2.
    score = torch.tensor([1.0, 2.0, 3, 3, 3, 3, 3, 6.0, 2.0, 3, 3, 3], dtype=torch.float64)
    assert torch.allclose(p, 0.02 + (1 - K * 0.02) * score / score.sum())
    assert torch.allclose(class_probabilities(loss, torch.zeros(K, dtype=torch.bool)), torch.full((K,), 1 / K).double())
    zero = class_probabilities(torch.zeros(K), torch.ones(K, dtype=torch.bool), DEFAULT_CLASS_WEIGHTS, 0.0)
    w = torch.tensor(DEFAULT_CLASS_WEIGHTS, dtype=torch.float64)
    assert torch.allclose(zero, w / w.sum())
    with pytest.raises(ValueError):
        class_probabilities(loss, seen, DEFAULT_CLASS_WEIGHTS, 0.2)


# ----------------------------------------------------------------------------------------------
# (3) two processes end with identical probabilities after different local losses


def _local_stats(rank: int, step: int):
    sums, counts = torch.zeros(K), torch.zeros(K)
    classes = range(0, 6) if rank == 0 else range(4, K)  # mouth interior only ever on rank 1
    for c in classes:
        counts[c] = 5.0 + c + rank * 3 + step
        sums[c] = counts[c] * (0.1 * (c + 1) + rank * 0.7 + 0.05 * step)
    return sums, counts


class _LatestBatch:
    """Holds one batch's statistics until the updater takes them, as the pipeline does."""

    def __init__(self) -> None:
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        stats, self.pending = self.pending, None
        return stats


def _run_updates(rank: int, steps: int, reduce_fn=None):
    latest = _LatestBatch()
    tracker = ClassLossEMA(K)
    sampler = make_sampler(64, ema_decay=0.5, log_every=1000)
    callbacks = SamplerUpdater(tracker, latest.take, sampler).callbacks()
    assert len(callbacks) == 2
    for step in range(steps):
        for cb in callbacks:
            cb.run_callback_at_location(step, BEFORE)
        latest.pending = reduce_fn(step) if reduce_fn is not None else _local_stats(rank, step)
        for cb in callbacks:
            cb.run_callback_at_location(step, AFTER)
        assert latest.pending is None  # consumed: never counted twice
    return sampler.class_probabilities, tracker.mean_loss.clone(), sampler.shared.version


def _dist_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        probs, mean_loss, version = _run_updates(rank, steps=4)
        torch.save({"probs": probs, "mean_loss": mean_loss, "version": version}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_end_with_identical_probabilities(tmp_path):
    tmp.spawn(_dist_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["probs"], r1["probs"]) and torch.equal(r0["mean_loss"], r1["mean_loss"])
    assert r0["version"] == r1["version"] == 5  # one push before the first step, one per step

    def summed(step):
        (s0, c0), (s1, c1) = _local_stats(0, step), _local_stats(1, step)
        return s0 + s1, c0 + c1

    ref_probs, _, _ = _run_updates(0, steps=4, reduce_fn=summed)
    assert torch.allclose(r0["probs"], ref_probs, atol=1e-6)
    local_only, _, _ = _run_updates(0, steps=4)  # what rank 0 alone would have used
    assert (r0["probs"] - local_only).abs().max() > 0.01


def test_callbacks_log_probabilities_and_skip_foreign_samplers(tmp_path):
    latest = _LatestBatch()
    sampler = make_sampler(64, log_every=2)
    callbacks = SamplerUpdater(ClassLossEMA(K), latest.take, sampler).callbacks()
    writer.EVENT_STORAGE.clear()
    try:
        for step in range(3):
            latest.pending = (torch.arange(K, dtype=torch.float32), torch.ones(K))
            for cb in callbacks:
                cb.run_callback_at_location(step, AFTER)
        logged = {(e["name"], e["step"]) for e in writer.EVENT_STORAGE}
    finally:
        writer.EVENT_STORAGE.clear()
    assert class_log_name(MOUTH_INTERIOR) == "sampler/p_mouth_interior"
    assert {(class_log_name(c), s) for c in range(K) for s in (0, 2)} == logged
    other = SimpleNamespace(datamanager=SimpleNamespace(train_pixel_sampler=object()))
    assert find_train_sampler(other) is None
    # A pipeline whose data manager has nerfstudio's own sampler gets the model's callback only.
    _write_tiny_nerface(tmp_path)
    pipeline = _tiny_pipeline(tmp_path, PixelSamplerConfig())
    assert find_train_sampler(pipeline) is None
    assert len(pipeline.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, None))) == 1  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# (4) ignore labels and mask-less images fall back to uniform; nothing divides by zero


def test_all_ignored_and_maskless_batches_sample_uniformly():
    torch.manual_seed(4)
    sampler = make_sampler(1024)
    sampler.set_class_probabilities(torch.tensor([0.01] * 7 + [0.89] + [0.01] * 4))
    n_pix = 2 * 8 * 10
    for with_semantics in (True, False):
        batch = label_batch({IGNORE_LABEL: n_pix}, num_images=2, height=8, width=10)
        if not with_semantics:
            del batch["semantics"]
        flat = []
        for _ in range(10):
            out = sampler.sample(batch)
            assert ("semantics" in out) == with_semantics
            idx = out["indices"]
            flat.append((idx[:, 0] - 10) * 80 + idx[:, 1] * 10 + idx[:, 2])
        observed = torch.bincount(torch.cat(flat), minlength=n_pix).numpy().astype(np.float64)
        assert chi2_p(observed, np.full(n_pix, 1 / n_pix)) > ALPHA


def test_degenerate_statistics_and_inputs_never_produce_nan():
    tracker = ClassLossEMA(K)
    tracker.update(torch.zeros(K), torch.zeros(K), decay=0.9)  # an all-ignored batch
    assert int(tracker.num_updates.sum()) == 0
    p = tracker.probabilities(DEFAULT_CLASS_WEIGHTS, 0.01)
    assert torch.allclose(p, torch.full((K,), 1 / K).double())
    nan_sum = torch.ones(K)
    nan_sum[3] = float("nan")
    tracker.update(nan_sum, torch.ones(K), decay=0.9)  # a NaN loss is skipped, not propagated
    assert bool(torch.isfinite(tracker.mean_loss).all()) and int(tracker.num_updates[3]) == 0
    assert bool(torch.isfinite(tracker.probabilities(DEFAULT_CLASS_WEIGHTS, 0.0)).all())

    sampler = make_sampler(64)
    with pytest.raises(ValueError):
        sampler.set_class_probabilities(torch.zeros(K))
    with pytest.raises(ValueError):
        sampler.set_class_probabilities(torch.ones(K - 1))
    sampler.shared.tensor[2:] = float("nan")  # a corrupted shared vector reads as uniform
    assert torch.allclose(sampler.class_probabilities, torch.full((K,), 1 / K).double())
    with pytest.raises(ValueError):
        SemanticPixelSamplerConfig(class_weights=(1.0,) * 3).setup()
    with pytest.raises(ValueError):
        SemanticPixelSamplerConfig(min_class_probability=0.5).setup()

    # nerfstudio's own ``mask`` key: pixels outside it are never drawn; an all-false mask does not hang.
    torch.manual_seed(5)
    batch = label_batch({1: 100})
    batch["mask"] = torch.zeros_like(batch["semantics"], dtype=torch.bool)
    batch["mask"][0, :4] = True
    sampler = make_sampler(256)
    sampler.set_class_probabilities(torch.full((K,), 1 / K))
    out = sampler.sample(batch)
    assert bool((out["indices"][:, 0] == 10).all()) and bool((out["indices"][:, 1] < 4).all())
    batch["mask"][:] = False
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = sampler.sample(batch)
    assert out["indices"].shape == (256, 3)


def test_variable_resolution_batches_use_the_list_collate():
    torch.manual_seed(6)
    sampler = make_sampler(200)
    sampler.set_class_probabilities(torch.tensor([0.01] * 7 + [0.89] + [0.01] * 4))
    sem = [torch.full((6, 5, 1), 1, dtype=torch.long), torch.full((4, 9, 1), 1, dtype=torch.long)]
    sem[1][0, 0, 0] = MOUTH_INTERIOR
    batch = {
        "image": [torch.rand(6, 5, 3), torch.rand(4, 9, 3)],
        "semantics": sem,
        "face_rect": [torch.ones(6, 5, 1, dtype=torch.bool), torch.ones(4, 9, 1, dtype=torch.bool)],
        "image_idx": torch.tensor([3, 4]),
    }
    out = sampler.sample(batch)
    assert out["image"].shape == (200, 3) and out["semantics"].shape == (200, 1)
    idx = out["indices"]
    assert set(idx[:, 0].tolist()) == {3, 4}
    assert int((idx[:, 0] == 3).sum()) == 100
    second = out["semantics"][idx[:, 0] == 4, 0]
    # p_mouth * 1 / (p_mouth * 1 + p_skin * 35) = 0.89 / 1.24 of the second image's rays
    assert abs(float((second == MOUTH_INTERIOR).float().mean()) - 0.89 / 1.24) < 0.2


# ----------------------------------------------------------------------------------------------
# (5) the face-rectangle share


def _rect_batch(seed: int = 0) -> dict:
    batch = label_batch(
        {1: 200, MOUTH_INTERIOR: 30, 9: 150, IGNORE_LABEL: 20}, num_images=2, height=16, width=18, seed=seed
    )
    face = torch.zeros_like(batch["semantics"], dtype=torch.bool)
    face[0, 2:10, 3:12] = True  # 72 pixels
    face[1, 5:14, 6:16] = True  # 90 pixels
    batch["face_rect"] = face
    return batch


def test_face_rect_share_is_respected():
    torch.manual_seed(7)
    batch = _rect_batch()
    probs = torch.tensor([0.03, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.05, 0.04, 0.03])
    sampler = make_sampler(1000, face_rect_fraction=0.95)
    sampler.set_class_probabilities(probs)
    inside_labels, outside_labels = [], []
    for _ in range(20):
        out = sampler.sample(batch)
        inside = out["face_rect"][:, 0]
        assert int(inside.sum()) == 950  # exactly round(0.95 * 1000) per batch
        inside_labels.append(out["semantics"][inside, 0])
        outside_labels.append(out["semantics"][~inside, 0])
    # Within each region the class weighting still holds.
    for region, drawn in ((True, torch.cat(inside_labels)), (False, torch.cat(outside_labels))):
        sel = batch["face_rect"][..., 0] == region
        sub = {"semantics": batch["semantics"][..., 0][sel]}
        assert chi2_p(category_counts(drawn), expected_category_frequencies(sub, probs)) > ALPHA


def test_face_rect_share_statistically_for_an_inactive_and_a_degenerate_rect():
    torch.manual_seed(8)
    batch = _rect_batch(seed=1)
    area = float(batch["face_rect"].float().mean())
    eval_sampler = make_sampler(1000, face_rect_fraction=0.95)  # never activated, like the eval sampler
    inside = torch.cat([eval_sampler.sample(batch)["face_rect"][:, 0] for _ in range(10)])
    observed = np.array([int(inside.sum()), int((~inside).sum())], dtype=np.float64)
    assert chi2_p(observed, np.array([area, 1 - area])) > ALPHA

    sampler = make_sampler(500, face_rect_fraction=0.95)
    sampler.activate()
    batch["face_rect"][:] = True  # no bbox: the rectangle is the whole image; nothing lies outside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = sampler.sample(batch)
    assert out["indices"].shape == (500, 3)
    assert sum("outside the face rectangle" in str(w.message) for w in caught) == 1  # warned once


# ----------------------------------------------------------------------------------------------
# (6) the pipeline feeds the sampler from the model's losses; resume restores the probabilities


def _tiny_model_config():
    from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
    from sahs_nerfstudio.models.sahs_model import SAHSModelConfig

    def tiny(driver: str) -> SAHSFieldConfig:
        return SAHSFieldConfig.for_driver(
            driver,  # type: ignore[arg-type]
            warp_width=8,
            hyper_width=8,
            canonical_width=16,
            colour_width=8,
            semantic_width=8,
            grid_resolution=4,
            grid_channels=4,
        )

    return SAHSModelConfig(
        audio_field=tiny("audio"), expression_field=tiny("expression"), num_coarse_samples=4, num_importance_samples=4
    )


def _tiny_model():
    from nerfstudio.data.scene_box import SceneBox

    meta = {"driver_kind": "expression", "near": 0.2, "far": 0.8, "background": torch.rand(4, 4, 3)}
    return _tiny_model_config().setup(
        scene_box=SceneBox(aabb=torch.tensor([[-0.5] * 3, [0.5] * 3])), num_train_data=2, metadata=meta
    )


def _tiny_pipeline(root: Path, pixel_sampler: PixelSamplerConfig | None = None) -> SAHSPipeline:
    from sahs_nerfstudio.pipeline import SAHSPipelineConfig

    datamanager = _datamanager_config("vanilla", root, 64)
    datamanager.pixel_sampler = pixel_sampler or SemanticPixelSamplerConfig(ema_decay=0.5, log_every=1000)
    pipeline = SAHSPipelineConfig(datamanager=datamanager, model=_tiny_model_config()).setup(device="cpu")
    assert isinstance(pipeline, SAHSPipeline)
    return pipeline


def test_model_exposes_the_class_losses_of_its_latest_training_batch():
    torch.manual_seed(9)
    model = _tiny_model()
    model.train()
    n = 40
    labels = torch.randint(0, K, (n, 1))
    labels[:3] = IGNORE_LABEL
    labels[3:6] = MOUTH_INTERIOR
    probs = torch.softmax(torch.randn(n, K), -1)
    outputs = {"rgb": torch.rand(n, 3), "rgb_coarse": torch.rand(n, 3)}
    outputs.update(semantics_probs=probs, semantics_probs_coarse=probs)
    batch = {"image": torch.rand(n, 3), "semantics": labels}
    model.get_loss_dict(outputs, batch)
    assert int(model.class_loss_count.sum()) == n - 3  # ignored rays are not counted
    assert int(model.class_loss_count[MOUTH_INTERIOR]) >= 3
    se = lambda key: ((outputs[key] - batch["image"]) ** 2).mean(-1)  # noqa: E731
    ce = -torch.log(probs.gather(-1, labels.clamp(min=0))[:, 0] + 1e-8)
    per_ray = se("rgb") + se("rgb_coarse") + 2 * ce
    mouth = labels[:, 0] == MOUTH_INTERIOR
    assert torch.isclose(model.class_loss_sum[MOUTH_INTERIOR], per_ray[mouth].sum(), rtol=1e-5)
    del batch["semantics"]  # a batch without labels counts no rays (not the previous batch's again)
    model.get_loss_dict(outputs, batch)
    assert float(model.class_loss_count.sum()) == 0.0
    model.eval()  # evaluation batches leave the training statistics alone
    model.get_loss_dict(outputs, {"image": torch.rand(n, 3), "semantics": labels})
    assert float(model.class_loss_count.sum()) == 0.0


def test_pipeline_feeds_the_sampler_and_resume_restores_its_probabilities(tmp_path):
    torch.manual_seed(10)
    _write_tiny_nerface(tmp_path)
    pipeline = _tiny_pipeline(tmp_path)
    sampler = pipeline.datamanager.train_pixel_sampler
    assert isinstance(sampler, SemanticPixelSampler) and find_train_sampler(pipeline) is sampler
    callbacks = pipeline.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, None))  # type: ignore[arg-type]
    assert len(callbacks) == 3  # the model's set_step + the sampler's two

    # The model's own per-class losses of each step flow through the pipeline into the moving average.
    expected_mean, seen = torch.zeros(K), torch.zeros(K, dtype=torch.bool)
    for step in range(3):
        for cb in callbacks:
            cb.run_callback_at_location(step, BEFORE)
        pipeline.get_train_loss_dict(step)
        loss_sum, loss_count = pipeline.model.class_loss_sum.clone(), pipeline.model.class_loss_count.clone()
        assert int(loss_count.sum()) == 64  # every ray of this data has a label
        for cb in callbacks:
            cb.run_callback_at_location(step, AFTER)
        present = loss_count > 0
        batch_mean = loss_sum / loss_count.clamp(min=1)
        expected_mean = torch.where(present & seen, 0.5 * expected_mean + 0.5 * batch_mean, expected_mean)
        expected_mean = torch.where(present & ~seen, batch_mean, expected_mean)
        seen |= present
    assert torch.allclose(pipeline.sampler_stats.mean_loss, expected_mean, atol=1e-6)
    assert pipeline.take_class_losses() is None  # consumed by the last step's update
    saved_probs = sampler.class_probabilities
    assert sampler.active and not torch.allclose(saved_probs, torch.full((K,), 1 / K).double())

    state = pipeline.state_dict()
    assert "sampler_stats.mean_loss" in state and "sampler_stats.num_updates" in state
    assert not [key for key in state if key.startswith("_model.") and "sampler_stats" in key]
    buf = io.BytesIO()
    torch.save({"pipeline": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf)["pipeline"]
    # Checkpoints written while the model held the statistics (a model buffer) load the same way.
    legacy = {(f"_model.{k}" if k.startswith("sampler_stats.") else k): v for k, v in loaded.items()}

    for saved in (loaded, legacy):
        resumed = _tiny_pipeline(tmp_path)
        fresh_sampler = resumed.datamanager.train_pixel_sampler
        assert isinstance(fresh_sampler, SemanticPixelSampler) and not fresh_sampler.active
        resumed.load_pipeline(saved, step=3)
        assert torch.equal(resumed.sampler_stats.num_updates, pipeline.sampler_stats.num_updates)
        for cb in resumed.get_training_callbacks(TrainingCallbackAttributes(None, None, resumed, None)):  # type: ignore[arg-type]
            cb.run_callback_at_location(100, BEFORE)
        assert fresh_sampler.active
        assert torch.allclose(fresh_sampler.class_probabilities, saved_probs, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Sharing with other processes, and nerfstudio's data managers on real files


def test_pickled_copies_share_the_probabilities():
    sampler = make_sampler(64)
    copy = pickle.loads(pickle.dumps(sampler))
    sampler.set_class_probabilities(torch.arange(1.0, K + 1))
    assert copy.active and torch.allclose(copy.class_probabilities, sampler.class_probabilities)
    path = sampler.shared.path
    sampler.shared.close()
    orphan = pickle.loads(pickle.dumps(copy))  # owner gone: a private snapshot, no new file
    assert not Path(path).exists()
    assert torch.allclose(orphan.class_probabilities, copy.class_probabilities)


def _write_tiny_nerface(root: Path, num_train: int = 3, size: int = 12) -> None:
    from sahs_nerfstudio.data import formats
    from sahs_nerfstudio.data.semantics import encode_mask

    rng = np.random.default_rng(0)
    formats.write_rgb(root / "bg" / "00050.png", np.full((size, size, 3), 255, dtype=np.uint8))
    for split, n in (("train", num_train), ("val", 1), ("test", 1)):
        frames = []
        for k in range(n):
            name = f"./{split}/f_{k:04d}"
            labels = np.ones((size, size), dtype=np.int64)
            labels[: size // 3] = 0
            labels[size // 2 : size // 2 + 2, size // 2 - 1 : size // 2 + 1] = MOUTH_INTERIOR  # 4 pixels
            formats.write_rgb(
                formats.nerface_image_path(root, name), rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            )
            formats.write_rgb(formats.nerface_mask_path(root, name), encode_mask(labels))
            c2w = np.eye(4)
            c2w[2, 3] = 0.5
            frames.append(formats.NeRFaceFrame(name, c2w, np.zeros(76), bbox=(0.25, 0.75, 0.25, 0.75)))
        formats.write_nerface_split(root, split, formats.NeRFaceSplit(0.8, (-20.0, 20.0, 0.5, 0.5), frames))


def _datamanager_config(kind: str, root: Path, num_rays: int):
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
    from nerfstudio.data.datamanagers.parallel_datamanager import ParallelDataManager, ParallelDataManagerConfig

    from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
    from sahs_nerfstudio.data.sahs_dataset import SAHSDataset

    common = dict(
        dataparser=SAHSDataParserConfig(data=root),
        train_num_rays_per_batch=num_rays,
        eval_num_rays_per_batch=num_rays,
        pixel_sampler=SemanticPixelSamplerConfig(),
    )
    if kind == "vanilla":
        return VanillaDataManagerConfig(_target=VanillaDataManager[SAHSDataset], **common)
    return ParallelDataManagerConfig(_target=ParallelDataManager[SAHSDataset], num_processes=1, queue_size=1, **common)


def test_vanilla_datamanager_train_and_eval_samplers(tmp_path):
    from sahs_nerfstudio.sahs_config import sahs_trainer_config

    assert isinstance(sahs_trainer_config().pipeline.datamanager.pixel_sampler, SemanticPixelSamplerConfig)
    _write_tiny_nerface(tmp_path)
    dm = _datamanager_config("vanilla", tmp_path, 256).setup(device="cpu", test_mode="val")
    train, ev = dm.train_pixel_sampler, dm.eval_pixel_sampler
    assert isinstance(train, SemanticPixelSampler) and isinstance(ev, SemanticPixelSampler) and train is not ev
    assert find_train_sampler(SimpleNamespace(datamanager=dm)) is train
    train.set_class_probabilities(torch.tensor([0.01] * 7 + [0.89] + [0.01] * 4))
    torch.manual_seed(10)
    _, batch = dm.next_train(0)
    assert batch["semantics"].shape == (256, 1) and batch["face_rect"].shape == (256, 1)
    n_pix = 3 * 12 * 12
    # mouth: 4 px/image at 0.89, the other 140 px/image at 0.01 -> 0.89*4 / (0.89*4 + 0.01*140) = 0.718
    frac = float((batch["semantics"] == MOUTH_INTERIOR).float().mean())
    assert abs(frac - 3.56 / 4.96) < 0.1
    assert not ev.active  # the shared config object did not leak train-time state into eval
    _, eval_batch = dm.next_eval(0)
    eval_frac = float((eval_batch["semantics"] == MOUTH_INTERIOR).float().mean())
    assert eval_frac < 0.1 and n_pix > 0  # uniform: 4/144 = 2.8 %


def test_parallel_datamanager_worker_sees_updated_probabilities(tmp_path):
    _write_tiny_nerface(tmp_path)
    dm = _datamanager_config("parallel", tmp_path, 512).setup(device="cpu", test_mode="val")
    try:
        sampler = dm.train_pixel_sampler
        assert isinstance(sampler, SemanticPixelSampler)
        first = dm.next_train(0)[1]  # sampled by the worker before any update: uniform
        assert float((first["semantics"] == MOUTH_INTERIOR).float().mean()) < 0.1
        sampler.set_class_probabilities(torch.tensor([0.01] * 7 + [0.89] + [0.01] * 4))
        for step in range(3):  # drain batches queued before the update (queue_size 1 + one in hand)
            dm.next_train(step)
        labels = torch.cat([dm.next_train(step)[1]["semantics"].view(-1) for step in range(3, 6)])
        frac = float((labels == MOUTH_INTERIOR).float().mean())
        expected = 3.56 / 4.96
        assert abs(frac - expected) < 5 * np.sqrt(expected * (1 - expected) / labels.numel())
    finally:
        for proc in getattr(dm, "data_procs", []):
            proc.terminate()
            proc.join(timeout=10)
