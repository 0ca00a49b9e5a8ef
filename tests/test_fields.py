"""The SAHS fields against plain references (tiny sizes, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import nn

from sahs_nerfstudio.fields.audio_encoder import AudioEncoder, AudioEncoderConfig
from sahs_nerfstudio.fields.canonical_field import SpatialEmbeddingGrid
from sahs_nerfstudio.fields.deformation import HyperDeformation
from sahs_nerfstudio.fields.encoding import positional_encoding
from sahs_nerfstudio.fields.sahs_field import AMBIENT_KEY, DEFORMATION_KEY, SAHSField, SAHSFieldConfig

# Small networks for the behavioural tests; the published sizes are only built where widths are checked.
TINY = dict(
    warp_depth=2,
    warp_width=16,
    warp_skips=(1,),
    hyper_depth=2,
    hyper_width=8,
    hyper_skips=(1,),
    canonical_depth=2,
    canonical_width=16,
    canonical_skips=(1,),
    colour_depth=1,
    colour_width=8,
    semantic_depth=1,
    semantic_width=8,
    grid_resolution=4,
    grid_channels=4,
)
AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def first_linear(module: nn.Module) -> nn.Linear:
    layer = next(m for m in module.modules() if isinstance(m, nn.Linear))
    return layer


def make_ray_samples(num_rays: int, num_samples: int, code_dim: int = 76, with_pose: bool = True) -> RaySamples:
    """Real RaySamples from a RayBundle with per-ray metadata, the way the model will build them."""
    metadata = {"driving_code": torch.randn(num_rays, code_dim)}
    if with_pose:
        metadata["pose"] = torch.randn(num_rays, 6) * 0.3
    bundle = RayBundle(
        origins=torch.randn(num_rays, 3) * 0.1,
        directions=nn.functional.normalize(torch.randn(num_rays, 3), dim=-1),
        pixel_area=torch.ones(num_rays, 1),
        camera_indices=torch.zeros(num_rays, 1, dtype=torch.long),
        metadata=metadata,
    )
    bins = torch.linspace(0.2, 0.8, num_samples + 1).expand(num_rays, -1)[..., None]
    return bundle.get_ray_samples(bin_starts=bins[:, :-1], bin_ends=bins[:, 1:])


# ---------------------------------------------------------------- positional encoding


@pytest.mark.parametrize(
    "in_dim, freqs, include_input, out_dim",
    [(3, 10, True, 63), (3, 15, True, 93), (2, 4, True, 18), (1, 4, True, 9), (6, 3, False, 36), (3, 4, True, 27)],
)
def test_positional_encoding_matches_plain_nerf_loop(in_dim, freqs, include_input, out_dim):
    enc = positional_encoding(in_dim, freqs, include_input)
    assert isinstance(enc, NeRFEncoding)
    assert enc.get_out_dim() == out_dim
    x = torch.rand(200, in_dim) * 2 - 1
    # The original NeRF loop: [x, sin(2^0 x), cos(2^0 x), sin(2^1 x), ...].
    ref = [x] if include_input else []
    for k in range(freqs):
        ref += [torch.sin(2.0**k * x), torch.cos(2.0**k * x)]
    ref = torch.cat(ref, dim=-1)
    out = enc(x)
    assert out.shape == (200, out_dim)
    # Same values in a different order: compare sorted rows ...
    torch.testing.assert_close(out.sort(-1).values, ref.sort(-1).values, atol=1e-5, rtol=0)
    # ... and element by element once the reference is put in nerfstudio's order (sin, cos: dim-major, then x).
    sins = torch.stack([torch.sin(2.0**k * x) for k in range(freqs)], -1).flatten(-2)
    coss = torch.stack([torch.cos(2.0**k * x) for k in range(freqs)], -1).flatten(-2)
    ordered = torch.cat([sins, coss] + ([x] if include_input else []), -1)
    torch.testing.assert_close(out, ordered, atol=1e-5, rtol=0)


def test_nerfstudio_frequency_range_is_two_to_the_k():
    # The constructor arguments place 2 pi * 2^e exactly on 2^k (up to rounding).
    enc = positional_encoding(3, 10, True)
    assert enc.min_freq == pytest.approx(-math.log2(2 * math.pi))
    assert enc.max_freq == pytest.approx(9 - math.log2(2 * math.pi))


# ---------------------------------------------------------------- configuration


def test_published_input_widths_audio():
    cfg = SAHSFieldConfig.for_driver("audio")
    deform = HyperDeformation(cfg)
    field = SAHSField(cfg, deform, AABB)
    assert deform.warp is not None and deform.hyper is not None
    assert first_linear(deform.warp).in_features == 175
    assert first_linear(deform.hyper).in_features == 175
    assert first_linear(field.canonical.trunk).in_features == 117
    assert first_linear(field.canonical.colour_mlp).in_features == 256 + 27 + 32
    semantic = field.canonical.semantic_mlp
    assert semantic is not None and first_linear(semantic).in_features == 256
    # Depths/widths: 6 x 128 + output, 6 x 64 + output, 8 x 256 trunk, skips re-concatenating the input.
    assert len(deform.warp.layers) == 7 and deform.warp.layers[4].in_features == 128 + 175
    assert len(deform.hyper.layers) == 7 and deform.hyper.layers[4].in_features == 64 + 175
    assert deform.hyper.layers[-1].out_features == 2
    trunk = field.canonical.trunk.layers  # 8 x 256 ReLU layers + [density, feat] output
    assert len(trunk) == 9 and trunk[4].in_features == 256 + 117 and trunk[-1].out_features == 1 + 256
    assert len(field.canonical.colour_mlp.layers) == 5 and field.canonical.colour_mlp.layers[-1].out_features == 3
    assert semantic.layers[-1].out_features == 12
    assert field.canonical.grid is not None and field.canonical.grid.grid.shape == (1, 32, 32, 32, 32)


def test_published_input_widths_expression():
    cfg = SAHSFieldConfig.for_driver("expression")
    deform = HyperDeformation(cfg)
    field = SAHSField(cfg, deform, AABB)
    assert deform.warp is not None and deform.hyper is not None
    assert first_linear(deform.warp).in_features == 169
    assert first_linear(deform.hyper).in_features == 169
    assert deform.hyper.layers[-1].out_features == 1
    assert first_linear(field.canonical.trunk).in_features == 178
    trunk = field.canonical.trunk.layers
    assert len(trunk) == 5 and trunk[3].in_features == 256 + 178 and trunk[-1].out_features == 1 + 256
    assert deform.pose_encoding is None and field.canonical.pose_encoding is None


def test_canonical_code_rule():
    assert SAHSFieldConfig.for_driver("audio").canonical_code is False
    assert SAHSFieldConfig.for_driver("expression").canonical_code is True
    # No warp and no hyper: a NeRFace / AD-NeRF style model conditions the canonical NeRF directly.
    nerface = SAHSFieldConfig.for_driver("audio", use_warp=False, use_hyper=False)
    assert nerface.canonical_code is True
    assert nerface.canonical_in_dim == 63 + 76 + 36
    assert SAHSFieldConfig.for_driver("audio", use_warp=False).canonical_code is False
    # An explicit choice wins.
    assert SAHSFieldConfig.for_driver("expression", canonical_code=False).canonical_in_dim == 93 + 9
    assert (
        SAHSFieldConfig.for_driver("audio", use_warp=False, use_hyper=False, canonical_code=False).canonical_code
        is False
    )
    with pytest.raises(ValueError, match="canonical_skips"):
        SAHSFieldConfig.for_driver("expression", canonical_skips=(4,))
    # A bare config resolves to the same published values as for_driver.
    assert SAHSFieldConfig(driver="expression").resolved() == SAHSFieldConfig.for_driver("expression")


# ---------------------------------------------------------------- field behaviour


@pytest.mark.parametrize("driver, ambient", [("audio", 2), ("expression", 1)])
def test_field_outputs_on_ray_samples(driver, ambient):
    torch.manual_seed(0)
    cfg = SAHSFieldConfig.for_driver(driver, **TINY)
    deform = HyperDeformation(cfg)
    coarse, fine = cfg.setup(deformation=deform, aabb=AABB), cfg.setup(deformation=deform, aabb=AABB)
    assert coarse.deformation is fine.deformation and coarse.canonical is not fine.canonical
    samples = make_ray_samples(5, 7, with_pose=driver == "audio")
    out = coarse(samples)
    assert out[FieldHeadNames.RGB].shape == (5, 7, 3)
    assert out[FieldHeadNames.DENSITY].shape == (5, 7, 1)
    assert out[FieldHeadNames.SEMANTICS].shape == (5, 7, 12)
    assert out[DEFORMATION_KEY].shape == (5, 7, 1)
    assert out[AMBIENT_KEY].shape == (5, 7, ambient)
    assert (out[FieldHeadNames.RGB] >= 0).all() and (out[FieldHeadNames.RGB] <= 1).all()
    assert (out[FieldHeadNames.DENSITY] >= 0).all()
    # get_density / get_outputs agree with forward (eval mode: no noise).
    coarse.eval()
    density, feat = coarse.get_density(samples)
    heads = coarse.get_outputs(samples, feat)
    torch.testing.assert_close(density, heads[FieldHeadNames.DENSITY])
    torch.testing.assert_close(heads[FieldHeadNames.RGB], coarse(samples)[FieldHeadNames.RGB])
    # forward_points on a flat batch gives the same values as through RaySamples.
    meta = samples.metadata
    assert meta is not None
    pts = coarse.forward_points(
        samples.frustums.get_positions().reshape(-1, 3),
        samples.frustums.directions.expand(5, 7, 3).reshape(-1, 3),
        meta["driving_code"].expand(5, 7, 76).reshape(-1, 76),
        meta["pose"].expand(5, 7, 6).reshape(-1, 6) if driver == "audio" else None,
    )
    torch.testing.assert_close(pts["rgb"].view(5, 7, 3), heads[FieldHeadNames.RGB])


def test_density_noise_only_in_training():
    cfg = SAHSFieldConfig.for_driver("audio", **TINY)
    field = SAHSField(cfg, aabb=AABB)
    samples = make_ray_samples(4, 5)
    field.eval()
    torch.testing.assert_close(field(samples)[FieldHeadNames.DENSITY], field(samples)[FieldHeadNames.DENSITY])
    field.train()
    a, b = field(samples)[FieldHeadNames.DENSITY], field(samples)[FieldHeadNames.DENSITY]
    assert not torch.equal(a, b)
    pts = make_ray_samples(3, 2).frustums.get_positions()
    out = field.forward_points(pts, None, torch.randn(3, 1, 76), torch.randn(3, 1, 6), density_noise_std=0.0)
    torch.testing.assert_close(out["density"], out["density_raw"].clamp_min(0))
    assert "rgb" not in out


def test_without_warp_points_stay_put():
    cfg = SAHSFieldConfig.for_driver("audio", use_warp=False, **TINY)
    deform = HyperDeformation(cfg)
    assert deform.warp is None
    x = torch.randn(4, 6, 3)
    out = deform(x, torch.randn(4, 1, 76), torch.randn(4, 1, 6))
    assert torch.equal(out.x_canon, x)
    assert torch.equal(out.offset, torch.zeros_like(x))
    assert out.ambient.shape == (4, 6, 2)
    off = HyperDeformation(SAHSFieldConfig.for_driver("audio", use_warp=False, use_hyper=False, **TINY))
    out = off(x, torch.randn(4, 1, 76), None)
    assert torch.equal(out.x_canon, x) and out.ambient.shape == (4, 6, 0)


def test_warp_offset_is_tanh_bounded():
    torch.manual_seed(0)
    deform = HyperDeformation(SAHSFieldConfig.for_driver("audio", deformation_init_scale=0.0, **TINY))
    assert deform.warp is not None
    last = deform.warp.layers[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.mul_(1e3)  # drive the pre-activation far into saturation
    x = torch.randn(64, 3) * 3
    out = deform(x, torch.randn(64, 76) * 5, torch.randn(64, 6))
    assert out.offset.abs().max() <= 1.0
    assert out.offset.abs().max() > 0.99  # saturated, so the bound is what is being tested
    torch.testing.assert_close(out.x_canon, x + out.offset)


def test_small_deformation_init_starts_near_identity():
    deform = HyperDeformation(SAHSFieldConfig.for_driver("audio", **TINY))
    out = deform(torch.randn(10, 3), torch.randn(10, 76), torch.randn(10, 6))
    assert out.offset.abs().max() < 1e-2 and out.ambient.abs().max() < 1e-2


def trilinear_reference(grid: torch.Tensor, aabb: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Hand-written trilinear interpolation; grid [C, Z, Y, X] with corner samples on the box corners."""
    res = torch.tensor(grid.shape[1:][::-1], dtype=points.dtype)  # (X, Y, Z) sizes
    out = []
    for p in points:
        u = (p - aabb[0]) / (aabb[1] - aabb[0]) * (res - 1)  # continuous index along x, y, z
        i0 = u.floor().long().clamp(max=(res - 2).long())
        f = u - i0
        acc = torch.zeros(grid.shape[0])
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                    acc = acc + w * grid[:, i0[2] + dz, i0[1] + dy, i0[0] + dx]
        out.append(acc)
    return torch.stack(out)


def test_spatial_grid_is_trilinear():
    torch.manual_seed(0)
    aabb = torch.tensor([[-0.5, -1.0, 0.2], [0.7, 0.4, 1.5]])
    grid = SpatialEmbeddingGrid(aabb, resolution=5, channels=3, init_std=0.01)
    with torch.no_grad():
        # A non-cubic random grid makes an axis mix-up visible.
        grid.grid = nn.Parameter(torch.randn(1, 3, 4, 5, 6))
    pts = aabb[0] + torch.rand(50, 3) * (aabb[1] - aabb[0])
    ref = trilinear_reference(grid.grid[0].detach(), aabb, pts)
    torch.testing.assert_close(grid(pts), ref, atol=1e-5, rtol=1e-5)
    # Batch shape is kept.
    assert grid(pts.view(5, 10, 3)).shape == (5, 10, 3)
    # The box corners read the corner samples exactly.
    torch.testing.assert_close(grid(aabb[:1])[0], grid.grid[0, :, 0, 0, 0].detach())
    torch.testing.assert_close(grid(aabb[1:])[0], grid.grid[0, :, -1, -1, -1].detach())


def test_spatial_grid_init():
    grid = SpatialEmbeddingGrid(AABB, resolution=8, channels=32, init_std=0.01)
    assert grid.grid.shape == (1, 32, 8, 8, 8)
    assert 0.005 < grid.grid.std().item() < 0.02


def test_gradients_reach_grid_warp_hyper_and_audio_net():
    torch.manual_seed(0)
    cfg = SAHSFieldConfig.for_driver("audio", deformation_init_scale=0.0, **TINY)
    field = SAHSField(cfg, aabb=AABB)
    audio = AudioEncoder(AudioEncoderConfig())
    samples = make_ray_samples(6, 4)
    assert samples.metadata is not None
    samples.metadata["driving_code"] = audio.encode(torch.randn(6, 16, 29))[:, None, :]
    out = field(samples)
    heads = (FieldHeadNames.RGB, FieldHeadNames.DENSITY, FieldHeadNames.SEMANTICS)
    loss = torch.stack([out[k].square().sum() for k in heads]).sum()
    loss.backward()
    deform = field.deformation
    assert deform.warp is not None and deform.hyper is not None and field.canonical.grid is not None
    for name, param in [
        ("grid", field.canonical.grid.grid),
        ("warp", first_linear(deform.warp).weight),
        ("hyper", first_linear(deform.hyper).weight),
        ("audio", first_linear(audio.audio_net.encoder_fc).weight),
        ("audio conv", audio.audio_net.encoder_conv[0].weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_missing_conditioning_is_a_clear_error():
    field = SAHSField(SAHSFieldConfig.for_driver("audio", **TINY), aabb=AABB)
    samples = make_ray_samples(2, 3, with_pose=False)
    with pytest.raises(KeyError, match="pose"):
        field(samples)


# ----------------------------------------------------------------------------------------------
# One field base: the module graph and where the shared conditioning is declared


def _package_imports(package: str) -> dict[str, set[str]]:
    """``module -> sahs_nerfstudio modules it imports`` for every module under ``package``, counting imports
    inside functions and ``if TYPE_CHECKING:`` blocks too."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(importlib.import_module(package).__file__ or "").parent
    top = Path(importlib.import_module("sahs_nerfstudio").__file__ or "").parent.parent

    def is_module(name: str) -> bool:
        path = top.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        name = f"{package}.{path.stem}" if path.stem != "__init__" else package
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                # ``from sahs_nerfstudio.data import keys`` imports the module ``sahs_nerfstudio.data.keys``
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.startswith("sahs_nerfstudio.") and is_module(m)}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others, in ``graph``."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_fast_field_does_not_reach_the_sahs_field_and_fields_have_no_import_cycle():
    graph = _package_imports("sahs_nerfstudio.fields")
    assert "sahs_nerfstudio.fields.sahs_field" in graph  # the walk did see the package

    assert "sahs_nerfstudio.fields.sahs_field" not in _reachable(graph, "sahs_nerfstudio.fields.fast_field")
    for module in graph:
        assert module not in _reachable(graph, module), f"import cycle through {module}"
    # data flows data/ -> fields/: the dataparser's modules (the metadata keys among them) import no field
    for module, imported in _package_imports("sahs_nerfstudio.data").items():
        assert not {m for m in imported if m.startswith("sahs_nerfstudio.fields")}, module


def test_errors_and_compat_are_leaves_and_the_package_has_no_import_cycle():
    """``errors.py`` (FormatError and the one-line exit) imports nothing of the package, so every layer can raise
    it; it used to import ``data.formats`` while ``data.synthetic.config`` imported it back. ``compat/`` used to
    import ``checkpoint_io``, ``utils.run_loader`` and ``utils.metrics``."""
    graph = _package_imports("sahs_nerfstudio")
    assert graph["sahs_nerfstudio.errors"] == set()
    # compat/ holds library workarounds only: it imports nothing of the package but the plain kernel function its
    # encoding plugs in (the project's loaders and checks are passed to it)
    for module, imported in _package_imports("sahs_nerfstudio.compat").items():
        outside = {m for m in imported if not m.startswith("sahs_nerfstudio.compat")}
        assert outside <= {"sahs_nerfstudio.kernels.hash_grid_torch"}, (module, outside)
    packages = ("data", "data.synthetic", "fields", "models", "samplers", "process", "rendering", "refinement", "utils")
    for package in (*packages, "compat", "kernels", "viewer", "scripts", "driving"):
        graph |= _package_imports(f"sahs_nerfstudio.{package}")

    for module in graph:
        assert module not in _reachable(graph, module), f"import cycle through {module}"
    # the models read per-camera conditioning from ray metadata, not from the dataparser
    for module, imported in _package_imports("sahs_nerfstudio.models").items():
        assert "sahs_nerfstudio.data.sahs_dataparser" not in imported, module


def test_shared_conditioning_fields_are_declared_only_in_the_base():
    import dataclasses

    from sahs_nerfstudio.fields.base import SAHSConditioningConfig
    from sahs_nerfstudio.fields.fast_field import SAHSFastFieldConfig
    from sahs_nerfstudio.fields.mlp_config import SAHSMLPFieldConfig

    shared = set(SAHSConditioningConfig.__annotations__)
    assert {"driver", "code_dim", "use_warp", "use_hyper", "use_pose", "canonical_code", "num_ambient_dims"} <= shared
    for cls in (SAHSMLPFieldConfig, SAHSFieldConfig, SAHSFastFieldConfig):
        assert issubclass(cls, SAHSConditioningConfig)
        assert not shared & set(cls.__dict__.get("__annotations__", {})), cls.__name__
        assert shared <= {f.name for f in dataclasses.fields(cls)}
        # one resolution rule: the base's, with each subclass adding sizes and checks only
        assert "resolved" not in cls.__dict__ and "for_driver" not in cls.__dict__, cls.__name__
    # the two fields are siblings: neither config is the other's
    assert not issubclass(SAHSFastFieldConfig, SAHSMLPFieldConfig)
    assert not issubclass(SAHSMLPFieldConfig, SAHSFastFieldConfig)
    # the published per-driver conditioning is the same for both fields
    for driver in ("audio", "expression"):
        mlp, grid = SAHSFieldConfig.for_driver(driver), SAHSFastFieldConfig.for_driver(driver)
        assert all(getattr(mlp, k) == getattr(grid, k) for k in shared if k != "_target"), driver
