"""The compiled hash-grid kernel (``kernels/hash_grid.cpp``) against its torch reference, forward and backward."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sahs_nerfstudio.compat.encodings import TorchHashEncoding
from sahs_nerfstudio.fields.fast_field import SAHSFastField, SAHSFastFieldConfig
from sahs_nerfstudio.kernels.hash_grid import CompiledHashEncoding, hash_grid, load_kernel

GRIDS = [
    # levels, min res, max res, log2 table size, features: the CPU preset's field, a dense-ish small table with
    # many collisions, 4 features, and a table too big for 32-bit products (the reference's int64 path).
    dict(num_levels=8, min_res=16, max_res=512, log2_hashmap_size=15, features_per_level=2),
    dict(num_levels=3, min_res=4, max_res=64, log2_hashmap_size=6, features_per_level=2),
    dict(num_levels=5, min_res=16, max_res=256, log2_hashmap_size=12, features_per_level=4),
    dict(num_levels=2, min_res=16, max_res=4096, log2_hashmap_size=19, features_per_level=2),
]


@pytest.fixture(scope="module")
def kernel():
    module = load_kernel()
    assert module is not None, "the kernel did not build on this machine (a C++ compiler is part of the setup)"
    return module


def _pair(grid: dict, seed: int = 0) -> tuple[TorchHashEncoding, CompiledHashEncoding]:
    torch.manual_seed(seed)
    ref = TorchHashEncoding(implementation="torch", **grid)
    ref.hash_table.data.uniform_(-1.0, 1.0)  # larger than the init scale: differences would show
    fast = CompiledHashEncoding(implementation="torch", **grid)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _border_points(encoding: TorchHashEncoding, n: int) -> torch.Tensor:
    """Points with coordinates exactly on cell borders of every level (and on the box faces 0 and 1)."""
    scalings = encoding.scalings
    points = []
    for level in range(len(scalings)):
        cells = torch.randint(0, int(scalings[level]) + 1, (n, 3)).float()
        points.append(cells / scalings[level])
    points.append(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.5, 1.0]]))
    return torch.cat(points).clamp(0.0, 1.0)


def _values_and_grads(encoding, x: torch.Tensor, upstream: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = encoding(x)
    table_grad, x_grad = torch.autograd.grad((out * upstream).sum(), [encoding.hash_table, x])
    return out.detach(), table_grad, x_grad


@pytest.mark.parametrize("grid", GRIDS, ids=["preset", "collisions", "four-features", "int64-table"])
def test_kernel_equals_the_torch_reference_forward_and_backward(kernel, grid):
    """``CompiledHashEncoding`` (the kernel) against ``TorchHashEncoding``, whose forward is the plain function
    ``kernels.hash_grid_torch.hash_grid_torch``: values per level, table and position gradients."""
    ref, fast = _pair(grid)
    torch.manual_seed(1)
    x = torch.cat([torch.rand(3000, 3), _border_points(ref, 40)])
    upstream = torch.randn(x.shape[0], ref.get_out_dim())
    out_r, table_r, x_r = _values_and_grads(ref, x, upstream)
    out_f, table_f, x_f = _values_and_grads(fast, x, upstream)
    feats = grid["features_per_level"]
    for level in range(grid["num_levels"]):  # every level on its own: an off-by-one level would show here
        cols = slice(level * feats, (level + 1) * feats)
        torch.testing.assert_close(out_f[:, cols], out_r[:, cols], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(table_f, table_r, atol=1e-5, rtol=1e-5)
    # The position gradient grows with the finest scaling (d frac / dx): compare relative to its size.
    scale = float(x_r.abs().max())
    torch.testing.assert_close(x_f / scale, x_r / scale, atol=1e-5, rtol=1e-5)
    assert float(table_r.abs().sum()) > 0 and scale > 0


def test_kernel_gradients_pass_gradcheck_in_double(kernel):
    torch.manual_seed(2)
    encoding = TorchHashEncoding(num_levels=3, min_res=4, max_res=32, log2_hashmap_size=8, implementation="torch")
    scalings = encoding.scalings.double()
    table = (torch.rand(encoding.hash_table.shape, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    # Away from cell borders, where the encoding is smooth and finite differences are exact enough.
    x = (torch.rand(12, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    size = encoding.hash_table_size
    assert torch.autograd.gradcheck(lambda p, t: hash_grid(p, t, scalings, size), (x, table), eps=1e-7, atol=1e-6)


def test_kernel_build_runs_parallel_for_on_torchs_threads(kernel):
    """Built with OpenMP, ``at::parallel_for`` inside the extension uses every thread torch is given; a build without
    ``-fopenmp`` ignores the pragma and runs one (so the thread-count test below would compare one thread with one)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert kernel.threads_in_parallel_for(64) == 2
        torch.set_num_threads(1)
        assert kernel.threads_in_parallel_for(64) == 1
    finally:
        torch.set_num_threads(threads)


def test_kernel_is_deterministic_and_independent_of_the_thread_count(kernel):
    ref, fast = _pair(GRIDS[0])
    x = torch.rand(5000, 3)
    upstream = torch.randn(x.shape[0], ref.get_out_dim())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _values_and_grads(fast, x, upstream)
        torch.set_num_threads(2)
        two = _values_and_grads(fast, x, upstream)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_input_without_position_gradient_skips_it(kernel):
    _, fast = _pair(GRIDS[1])
    x = torch.rand(100, 3)  # no requires_grad: only the table's gradient
    out = fast(x)
    (grad,) = torch.autograd.grad(out.sum(), [fast.hash_table])
    assert grad.shape == fast.hash_table.shape and float(grad.abs().sum()) > 0


def test_field_flag_selects_kernel_or_reference_with_the_same_parameters():
    compiled = SAHSFastField(SAHSFastFieldConfig(implementation="torch", num_levels=4, max_res=64).resolved())
    reference = SAHSFastField(
        SAHSFastFieldConfig(implementation="torch", num_levels=4, max_res=64, grid_kernel="torch").resolved()
    )
    assert type(compiled.grid) is CompiledHashEncoding and type(reference.grid) is TorchHashEncoding
    assert type(compiled.deform_grid) is CompiledHashEncoding and type(reference.deform_grid) is TorchHashEncoding
    assert compiled.state_dict().keys() == reference.state_dict().keys()


def test_the_kernel_is_not_built_where_cuda_runs_the_encoding(monkeypatch):
    """A CUDA machine trains on the GPU (tcnn or the torch path): making the encoding does not build the CPU kernel;
    without CUDA it does (so the build never lands inside a timed training step)."""
    from sahs_nerfstudio.kernels import hash_grid as module

    calls = []
    monkeypatch.setattr(module, "load_kernel", lambda: calls.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    CompiledHashEncoding(num_levels=2, min_res=4, max_res=16, log2_hashmap_size=6, implementation="torch")
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    CompiledHashEncoding(num_levels=2, min_res=4, max_res=16, log2_hashmap_size=6, implementation="torch")
    assert calls == [1]


def test_a_missing_compiler_falls_back_to_torch_with_one_message(tmp_path):
    """No compiler: the encoding still equals the reference, and one line says why."""
    script = textwrap.dedent(
        """
        import torch
        from sahs_nerfstudio.compat.encodings import TorchHashEncoding
        from sahs_nerfstudio.kernels.hash_grid import CompiledHashEncoding, kernel_failure
        ref = TorchHashEncoding(num_levels=3, min_res=4, max_res=32, log2_hashmap_size=8, implementation="torch")
        fast = CompiledHashEncoding(num_levels=3, min_res=4, max_res=32, log2_hashmap_size=8, implementation="torch")
        assert kernel_failure() is not None  # tried when the encoding was made, not inside its first forward
        fast.load_state_dict(ref.state_dict())
        x = torch.rand(64, 3)
        for _ in range(3):
            assert torch.equal(fast(x), ref(x))
        assert kernel_failure() is not None
        print("FELL BACK")
        """
    )
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
        "COLUMNS": "400",
    }
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FELL BACK" in run.stdout
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "hash-grid kernel unavailable" in line]
    assert len(lines) == 1, run.stdout + run.stderr
    assert "using the torch path" in lines[0]
