"""The pruned image renderer of ``sahs-fast`` (``models/fast_render.py``) against the training renderer."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from nerfstudio.cameras.cameras import Cameras

from sahs_nerfstudio.models.fast_render import FastRenderConfig, cull_mask
from sahs_nerfstudio.models.occupancy import OccupancyGridConfig
from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModel, SAHSFastModelConfig

STEPS = 120
OCCUPANCY_PSNR_BOUND = 35.0
"""Images with the occupancy grid against without it, on the briefly trained model (measured: see the test)."""


@pytest.fixture(scope="module")
def trained_fast(subject_train, tmp_path_factory, learning_seed) -> SAHSFastModel:
    """A briefly trained CPU ``sahs-fast`` (opaque head, some haze around it), loaded as ``sahs-render`` loads it."""
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.presets import fast_cpu_trainer_config
    from sahs_nerfstudio.utils.run_loader import load_run

    out = tmp_path_factory.mktemp("fast_render_run")
    config = fast_cpu_trainer_config(subject_train / "nerface", steps=STEPS, rays=512, output_dir=out)
    config.machine.seed = learning_seed
    # The occupancy grid takes over at half the run (the preset's start, 256 steps, is past this short run).
    model_config = config.pipeline.model
    assert isinstance(model_config, SAHSFastModelConfig)
    model_config.occupancy = OccupancyGridConfig(enabled=True, start_step=STEPS // 2, update_every=STEPS // 6)
    config.set_timestamp()
    train_main(config)
    _, pipeline, _, _ = load_run(config.get_base_dir() / "config.yml", test_mode="test")
    model = pipeline.model
    assert isinstance(model, SAHSFastModel)
    model.eval()
    model.held_out = pipeline.datamanager.eval_dataset.cameras  # type: ignore[attr-defined]
    return model


def _render_all(model: SAHSFastModel, render: FastRenderConfig) -> tuple[list[dict], int]:
    """Every held-out frame with ``render``, and the number of points the field's density half evaluated."""
    model.config.render = render
    count = 0
    density_points = model.field.density_points

    def counting(positions, *args):
        nonlocal count
        count += positions[..., 0].numel()
        return density_points(positions, *args)

    model.field.density_points = counting  # type: ignore[method-assign]
    try:
        cameras: Cameras = model.held_out  # type: ignore[assignment]
        return [model.get_outputs_for_camera(cameras[i : i + 1]) for i in range(len(cameras))], count
    finally:
        del model.field.density_points
        model.config.render = FastRenderConfig()


def test_fast_renderer_matches_the_reference_on_a_trained_model(trained_fast):
    reference, ref_points = _render_all(trained_fast, FastRenderConfig(enabled=False))
    fast, fast_points = _render_all(trained_fast, FastRenderConfig())
    unculled, _ = _render_all(trained_fast, FastRenderConfig(cull_stride=0))
    # Never more field evaluations than the reference (how many fewer depends on how opaque the model is:
    # this briefly trained one is hazy; benchmarks/render_speed.py measures the time).
    assert fast_points <= ref_points, (fast_points, ref_points)
    for ref, cut, whole in zip(reference, fast, unculled, strict=True):
        assert set(cut) == set(ref) and all(cut[k].shape == ref[k].shape for k in ref)
        err = (cut["rgb"] - ref["rgb"]).abs()
        # Culling: a pixel changes by at most its accumulation (< cull_accumulation = 0.01) times a colour step.
        assert float(err.max()) < 0.01
        assert -10 * math.log10(float(err.square().mean()) + 1e-12) > 40.0
        # Early termination and skipped heads alone: at most stop_transmittance + 24 * min_weight ~ 6e-4.
        assert float((whole["rgb"] - ref["rgb"]).abs().max()) < 1e-3
        assert float((whole["semantics_probs"] - ref["semantics_probs"]).abs().max()) < 1e-3
        labels_ref, labels_fast = ref["semantics_probs"].argmax(-1), cut["semantics_probs"].argmax(-1)
        assert float((labels_ref != labels_fast).float().mean()) < 1e-3
        assert float((cut["depth"] - ref["depth"]).abs().max()) < 0.01 * float(ref["depth"].max())


@pytest.mark.learning
def test_occupancy_grid_skips_empty_space_and_changes_little(trained_fast, learned):
    """Trained with the grid: it was updated and saved with the checkpoint, it leaves out part of the field's
    evaluations, and images with and without it (both through the reference renderer) nearly agree."""
    grid = trained_fast.occupancy_grid
    assert grid is not None and bool(grid.active) and int(grid.updates) >= 2
    assert grid.occupied_fraction() > 0.0
    # measured 0.65-0.78 over seeds (tests/README.md): a grid that never found empty space would stay at 1
    learned.below("occupied fraction of the grid", grid.occupied_fraction(), 0.9)
    with_grid, grid_points = _render_all(trained_fast, FastRenderConfig(enabled=False))
    trained_fast.config.occupancy.enabled = False
    try:
        without, all_points = _render_all(trained_fast, FastRenderConfig(enabled=False))
    finally:
        trained_fast.config.occupancy.enabled = True
    learned.below("field points with / without the grid", grid_points / all_points, 0.9)
    for a, b in zip(with_grid, without, strict=True):
        mse = float((a["rgb"] - b["rgb"]).square().mean())
        learned.above("image with vs without the grid (PSNR dB)", -10 * math.log10(mse + 1e-12), OCCUPANCY_PSNR_BOUND)
        labels = a["semantics_probs"].argmax(-1) != b["semantics_probs"].argmax(-1)
        assert float(labels.float().mean()) < 0.01


def test_training_mode_uses_the_reference_renderer(trained_fast):
    trained_fast.train()
    try:
        assert not trained_fast.fast_rendering()
    finally:
        trained_fast.eval()
    with torch.no_grad():
        assert trained_fast.fast_rendering()
    assert not trained_fast.fast_rendering()  # gradients on: a caller wants to backpropagate


def test_cull_mask_keeps_the_neighbourhood_of_coarse_rays_that_see_something():
    height = width = 33
    rows = cols = torch.arange(0, 33, 4)  # coarse rays every 4 pixels, 0..32 (the last on the border)
    acc = torch.zeros(9, 9)
    acc[4, 4] = 0.5  # only the coarse ray at pixel (16, 16) sees something
    culled = cull_mask(acc, rows, cols, height, width, limit=0.01)
    assert culled.shape == (height, width)
    # The four cells around it and the cells next to those stay: pixels 8..23 in both directions.
    kept = (~culled).nonzero()
    assert int(kept.min()) == 8 and int(kept.max()) == 23
    assert not culled[8:24, 8:24].any() and culled[:8].all() and culled[24:].all() and culled[:, 24:].all()
    # Nothing at or above the limit is culled; everything is when all coarse rays are below it.
    assert not cull_mask(acc, rows, cols, height, width, limit=0.5)[8:24, 8:24].any()
    assert cull_mask(acc, rows, cols, height, width, limit=0.6).all()


def test_a_config_saved_before_the_render_settings_loads_with_them():
    config = SAHSFastModelConfig()
    text = yaml.dump(config)
    lines, kept, skipping = text.splitlines(), [], False
    for line in lines:  # drop the ``render:`` block, as in a config.yml written before it existed
        if line.startswith("render:"):
            skipping = True
            continue
        if skipping and line.startswith(" "):
            continue
        skipping = False
        kept.append(line)
    assert len(kept) < len(lines)
    loaded = yaml.load("\n".join(kept), Loader=yaml.Loader)
    assert isinstance(loaded, SAHSFastModelConfig)
    assert loaded.render == FastRenderConfig()
