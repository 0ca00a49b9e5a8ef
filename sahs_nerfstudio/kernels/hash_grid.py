"""The fused CPU hash-grid kernel (``hash_grid.cpp``) and the encoding that uses it.

:class:`CompiledHashEncoding` is :class:`~sahs_nerfstudio.compat.encodings.TorchHashEncoding` (same parameters, same
state dict, same values) whose CPU path runs the C++ kernel: one pass over the points instead of eight gathers, and a
backward that writes each level's table rows from one thread instead of ``index_add_``. The torch path stays the
reference: ``tests/test_hash_kernel.py`` compares both, values and gradients, and a field's ``grid_kernel="torch"``
selects it.

The extension is built with the machine's C++ compiler when the first encoding is made (about a minute) through
``torch.utils.cpp_extension.load`` and cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``).
When it cannot be built (no compiler, no headers), the torch path is used and one message says why.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sahs_nerfstudio.compat.encodings import TorchHashEncoding

SOURCE = Path(__file__).with_name("hash_grid.cpp")
"""The kernel's C++ source (shipped as package data)."""
EXTENSION_NAME = "sahs_hash_grid_v4"
"""Name of the built extension; bump it when the source's interface or its build flags change (a cached build of
the same name is reused as it is)."""
BUILD_FLAGS = ["-O3", "-fopenmp"]
"""Compile flags; ``-fopenmp`` makes ``at::parallel_for`` run on torch's threads (without it the build is serial)."""
LINK_FLAGS = ["-fopenmp"]
"""Link flags: the OpenMP runtime torch itself uses."""

_kernel: ModuleType | None = None
_failure: str | None = None


def load_kernel() -> ModuleType | None:
    """The built extension, building it on the first call; None (after one printed line) when it cannot be built."""
    global _kernel, _failure
    if _kernel is not None or _failure is not None:
        return _kernel
    try:
        from torch.utils.cpp_extension import load

        built = load(
            name=EXTENSION_NAME,
            sources=[str(SOURCE)],
            extra_cflags=BUILD_FLAGS,
            extra_ldflags=LINK_FLAGS,
            verbose=bool(os.environ.get("SAHS_DEBUG")),
        )
        assert isinstance(built, ModuleType)
        _kernel = built
    except Exception as err:  # noqa: BLE001 - any build failure means: use the reference
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        _failure = f"compiled hash-grid kernel unavailable ({type(err).__name__}: {reason[:200]}); using the torch path"
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(f"[yellow]{_failure}[/yellow]")
    return _kernel


def kernel_failure() -> str | None:
    """Why the kernel could not be built (None when it was, or was not tried yet)."""
    return _failure


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, positions: Tensor, table: Tensor, scalings: Tensor, table_size: int) -> Tensor:
        kernel = load_kernel()
        assert kernel is not None
        ctx.save_for_backward(positions, table, scalings)
        ctx.table_size = table_size
        return kernel.forward(positions, table, scalings, table_size)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
        positions, table, scalings = ctx.saved_tensors
        kernel = load_kernel()
        assert kernel is not None
        need_positions = bool(ctx.needs_input_grad[0])
        grad_table, grad_positions = kernel.backward(
            grad_outputs[0], positions, table, scalings, ctx.table_size, need_positions
        )
        return (grad_positions if need_positions else None), grad_table, None, None


def hash_grid(
    positions: Float[Tensor, "N 3"], table: Float[Tensor, "LT F"], scalings: Float[Tensor, " L"], table_size: int
) -> Float[Tensor, "N LF"]:
    """The kernel's encoding of ``positions`` (CPU tensors of one floating dtype), differentiable in both inputs."""
    out = _HashGridFunction.apply(positions, table, scalings, table_size)
    assert isinstance(out, Tensor)
    return out


class CompiledHashEncoding(TorchHashEncoding):
    """:class:`TorchHashEncoding` running the compiled kernel for CPU tensors (the torch path otherwise, and when the
    kernel cannot be built). On a machine without CUDA the kernel is built (or its failure printed) when the first
    one is made, so a build does not land inside the first training step, where it would pass for the step's cost; with
    CUDA it is built only if a CPU tensor ever comes through (a GPU run never needs it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tcnn_encoding is None and not torch.cuda.is_available():
            load_kernel()

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        table = self.hash_table
        if in_tensor.device.type != "cpu" or table.device.type != "cpu" or load_kernel() is None:
            return super().pytorch_fwd(in_tensor)
        shape = in_tensor.shape[:-1]
        positions = in_tensor.reshape(-1, 3).to(table.dtype)
        out = hash_grid(positions, table, self.scalings, self.hash_table_size)
        return out.reshape(*shape, self.num_levels * self.features_per_level)
