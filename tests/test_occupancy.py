"""The occupancy grid (``models/occupancy.py``): a known sphere, decay, the masked density, and sparse evaluation."""

from __future__ import annotations

import math

import torch
from nerfstudio.cameras.rays import RayBundle

from sahs_nerfstudio.data import keys
from sahs_nerfstudio.models.fast_render import FastRenderConfig, kept_outputs, march
from sahs_nerfstudio.models.occupancy import OccupancyGrid, OccupancyGridConfig, masked_density_fn

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
CENTRE = torch.tensor([0.2, -0.1, 0.05])


def _sphere(radius: float, density: float = 50.0):
    """Density ``density`` inside a ball of ``radius`` around CENTRE, 0 outside; counts the points it is asked."""
    asked = {"points": 0}

    def fn(points: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        asked["points"] += points.shape[0]
        return ((points - CENTRE).norm(dim=-1, keepdim=True) < radius).float() * density

    return fn, asked


def _grid(**overrides) -> OccupancyGrid:
    values = dict(enabled=True, resolution=32, update_every=1, start_step=0, dilation=1)
    values.update(overrides)
    return OccupancyGrid(OccupancyGridConfig(**values), AABB)  # type: ignore[arg-type]


def test_a_known_sphere_no_sample_outside_none_lost_inside():
    torch.manual_seed(0)
    grid = _grid()
    density, asked = _sphere(0.4)
    points = torch.rand(200_000, 3) * 2 - 1
    assert bool(grid.query(points).all())  # before any update: every point inside the box
    for step in range(6):
        assert grid.update(density, num_conditions=1, step=step)
    # First every cell, then a random quarter plus (at most a quarter of) the cells with some opacity.
    quarter = 32**3 // 4
    assert 32**3 + 5 * quarter < asked["points"] < 32**3 + 5 * 2 * quarter
    distance = (points - CENTRE).norm(dim=-1)
    kept = grid.query(points)
    assert bool(kept[distance < 0.4].all()), "a point inside the sphere was skipped"
    diagonal = math.sqrt(3) * grid.cell_size()
    margin = 0.4 + (grid.config.dilation + 1) * diagonal
    assert not bool(kept[distance > margin].any()), "a point well outside the sphere was kept"
    # The grid skips most of the box: the sphere and its margin are a small part of it.
    assert 0.03 < grid.occupied_fraction() < 0.2
    assert not bool(grid.query(torch.tensor([[1.5, 0.0, 0.0]])).any())  # outside the box: never evaluated


def test_nothing_is_skipped_before_the_start_step_and_between_updates():
    grid = _grid(start_step=10, update_every=4)
    density, asked = _sphere(0.3)
    assert not grid.update(density, 1, step=5)  # before start
    assert not grid.update(density, 1, step=11)  # not an update step
    assert asked["points"] == 0 and grid.occupied_fraction() == 1.0
    assert grid.update(density, 1, step=12)
    assert grid.occupied_fraction() < 0.2


def test_a_region_the_field_leaves_decays_out_and_one_it_fills_comes_back():
    torch.manual_seed(1)
    grid = _grid(decay=0.5)
    big, _ = _sphere(0.6, density=0.5)  # opacity 0.5 * 1/16 per cell: occupied at threshold 0.01
    for step in range(3):
        grid.update(big, 1, step)
    shell = CENTRE + torch.tensor([0.5, 0.0, 0.0])
    assert bool(grid.query(shell[None]).all())
    small, _ = _sphere(0.2, density=0.5)
    for step in range(3, 40):
        grid.update(small, 1, step)
    assert not bool(grid.query(shell[None]).any()), "a region emptied long ago is still occupied"
    assert bool(grid.query(CENTRE[None]).all())
    # Filled again: found by the random quarter of cells within a few updates.
    for step in range(40, 60):
        grid.update(big, 1, step)
    assert bool(grid.query(shell[None]).all())


def test_masked_density_is_zero_where_skipped_and_the_function_only_sees_kept_points():
    grid = _grid()
    density, asked = _sphere(0.4)
    grid.update(density, 1, 0)
    points = torch.rand(3, 500, 3) * 2 - 1
    masked = masked_density_fn(density, grid)
    before = asked["points"]
    out = masked(points)
    kept = grid.query(points)
    assert out.shape == (3, 500, 1)
    assert asked["points"] - before == int(kept.sum()) < points.shape[0] * points.shape[1]
    assert torch.equal(out[kept], density(points[kept]))
    assert bool((out[~kept] == 0).all())


def _tiny_field_samples(n: int = 6, s: int = 10):
    from sahs_nerfstudio.fields.fast_field import SAHSFastField, SAHSFastFieldConfig

    torch.manual_seed(3)
    cfg = SAHSFastFieldConfig.for_driver(
        "expression", implementation="torch", num_levels=3, max_res=32, log2_hashmap_size=8, hidden_dim=16
    )
    field = SAHSFastField(cfg, aabb=AABB * 0.5)
    bundle = RayBundle(
        origins=torch.zeros(n, 3) + torch.tensor([0.0, 0.0, 0.6]),
        directions=torch.nn.functional.normalize(torch.randn(n, 3) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1),
        pixel_area=torch.ones(n, 1),
        nears=torch.full((n, 1), 0.2),
        fars=torch.full((n, 1), 1.0),
        metadata={keys.DRIVING_CODE: torch.randn(n, cfg.code_dim)},
    )
    bins = torch.linspace(0.2, 1.0, s + 1).expand(n, s + 1)
    samples = bundle.get_ray_samples(bin_starts=bins[:, :-1, None], bin_ends=bins[:, 1:, None])
    return field, samples


def test_kept_outputs_equal_the_whole_field_where_kept_and_read_zero_elsewhere():
    field, samples = _tiny_field_samples()
    keep = torch.rand(samples.shape) < 0.6
    whole = field(samples)
    sparse = kept_outputs(field, samples, keep)
    assert set(sparse) == set(whole)
    for key, value in whole.items():
        torch.testing.assert_close(sparse[key][keep], value[keep], atol=1e-6, rtol=1e-5)
        assert bool((sparse[key][~keep] == 0).all())
    # Gradients reach the field's parameters through the kept samples only, as through the masked whole field.
    loss_sparse = sum(v.square().sum() for v in sparse.values())
    loss_whole = sum((v * keep[..., None]).square().sum() for v in whole.values())
    grads_sparse = torch.autograd.grad(loss_sparse, list(field.parameters()), allow_unused=True)
    grads_whole = torch.autograd.grad(loss_whole, list(field.parameters()), allow_unused=True)
    for a, b in zip(grads_sparse, grads_whole, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_march_with_every_sample_kept_equals_march_without_a_mask():
    field, samples = _tiny_field_samples()
    with torch.no_grad():
        plain, w_plain = march(field, samples, FastRenderConfig())
        masked, w_masked = march(field, samples, FastRenderConfig(), keep=torch.ones(samples.shape, dtype=torch.bool))
        none, w_none = march(field, samples, FastRenderConfig(), keep=torch.zeros(samples.shape, dtype=torch.bool))
    torch.testing.assert_close(w_masked, w_plain)
    for key in plain:
        torch.testing.assert_close(masked[key], plain[key])
    assert float(w_none.abs().max()) == 0.0
