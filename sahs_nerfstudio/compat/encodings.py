"""Torch paths of nerfstudio's encodings replaced in place (written against nerfstudio 1.1.5, torch 2.14).

Both classes subclass a nerfstudio 1.1.5 encoding and override its ``pytorch_fwd``, the method its
``forward`` calls when no tcnn encoding was built, relying on the attributes its ``__init__`` sets:

* :class:`ExactNeRFEncoding` (``NeRFEncoding``: ``num_frequencies``, ``include_input``,
  ``tcnn_encoding``): frequencies exactly ``2^k``. nerfstudio computes ``sin(2 pi x 2^e)`` with
  ``e = linspace(min, max, L)``; choosing ``min = -log2(2 pi)``, ``max = L - 1 - log2(2 pi)`` lands on
  ``2^k`` only up to float32 rounding of the exponent and of ``2 pi x``: at ``|x| <= 1`` an error of
  about 1e-4 for 10 frequencies and 4e-3 for 15 (measured). The subclass keeps those constructor
  arguments (so it still reports that frequency range) but multiplies by the exact powers of two,
  matching a plain NeRF loop to float32 precision. Output order is nerfstudio's: all sines
  (input-dim major, frequency minor), then all cosines, then the raw input when ``include_input``.
* :class:`TorchHashEncoding` (``HashEncoding``: ``scalings``, ``hash_offset``, ``hash_table``,
  ``hash_table_size``, ``num_levels``, ``features_per_level``, ``tcnn_encoding``, and ``hash_fn``'s
  Instant-NGP primes): the same values as nerfstudio's torch path in about half the time on a CPU.
  :func:`use_fast_torch_hashing` swaps the class of encodings nerfstudio builds itself (the proposal
  networks' ``HashMLPDensityField``) in place: same parameters, same state dict.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding, NeRFEncoding
from nerfstudio.utils.math import expected_sin
from torch import Tensor, nn

from sahs_nerfstudio.kernels.hash_grid_torch import hash_grid_torch

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose encodings these subclasses override."""


class ExactNeRFEncoding(NeRFEncoding):
    """:class:`NeRFEncoding` whose frequencies are exactly ``2^k`` (no ``2 pi`` factor), ``k = 0..L-1``."""

    def __init__(self, in_dim: int, num_frequencies: int, include_input: bool) -> None:
        log2_two_pi = math.log2(2.0 * math.pi)
        super().__init__(
            in_dim=in_dim,
            num_frequencies=num_frequencies,
            min_freq_exp=-log2_two_pi,
            max_freq_exp=num_frequencies - 1 - log2_two_pi,
            include_input=include_input,
            implementation="torch",
        )
        # A buffer so that it follows the module's device and dtype; not saved (it is a constant).
        self.register_buffer("freqs", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False)

    def pytorch_fwd(
        self,
        in_tensor: Float[Tensor, "*bs input_dim"],
        covs: Float[Tensor, "*bs input_dim input_dim"] | None = None,
    ) -> Float[Tensor, "*bs output_dim"]:
        """Sines then cosines of ``2^k x`` (mip-NeRF integrated encoding when ``covs`` is given)."""
        freqs: Tensor = self.freqs.to(in_tensor.dtype)  # type: ignore[assignment]
        scaled = (in_tensor[..., None] * freqs).flatten(-2)  # [..., in_dim * L]
        if covs is None:
            # cos(a) = sin(a + pi/2) is how nerfstudio does it; computing cos directly is exact.
            return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)
        var = (torch.diagonal(covs, dim1=-2, dim2=-1)[..., :, None] * freqs**2).flatten(-2)
        return expected_sin(torch.cat([scaled, scaled + torch.pi / 2.0], dim=-1), torch.cat([var, var], dim=-1))


class TorchHashEncoding(HashEncoding):
    """nerfstudio's :class:`HashEncoding` with a faster torch path (tcnn, when used, is untouched).

    The math is :func:`~sahs_nerfstudio.kernels.hash_grid_torch.hash_grid_torch` (the compiled kernel's reference);
    this class only plugs it into nerfstudio's encoding, relying on the attributes ``HashEncoding.__init__`` sets.
    """

    @property
    def max_scaling(self) -> float:
        """``scalings.max()``, read from the buffer once (reading a GPU buffer in every forward would sync the device
        at every call); a property, not set in ``__init__``: :func:`use_fast_torch_hashing` swaps the class of
        encodings that were built as nerfstudio's, so no ``__init__`` of this class ever ran for them."""
        cached = self.__dict__.get("_max_scaling")
        if cached is None:
            cached = self.__dict__["_max_scaling"] = float(self.scalings.max())
        return cached

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        shape = in_tensor.shape[:-1]
        out = hash_grid_torch(
            in_tensor.reshape(-1, 3),
            self.hash_table,
            self.scalings,
            self.hash_offset,
            self.hash_table_size,
            self.max_scaling,
        )
        return out.reshape(*shape, self.num_levels * self.features_per_level)


def use_fast_torch_hashing(module: nn.Module, encoding: type[TorchHashEncoding] = TorchHashEncoding) -> None:
    """Switch every torch-backed nerfstudio :class:`HashEncoding` inside ``module`` (e.g. proposal networks) to
    ``encoding`` (:class:`TorchHashEncoding` or a subclass): same parameters and values, faster on a CPU."""
    for sub in module.modules():
        if type(sub) is HashEncoding and sub.tcnn_encoding is None:
            sub.__class__ = encoding
