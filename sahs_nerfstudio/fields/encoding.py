"""Positional encodings with the original NeRF frequencies ``sin(2^k x), cos(2^k x)``, ``k = 0..L-1``.

nerfstudio's :class:`NeRFEncoding` computes ``sin(2 pi x 2^e)`` with ``e = linspace(min, max, L)``. Choosing
``min = -log2(2 pi)``, ``max = L - 1 - log2(2 pi)`` lands on ``2^k`` only up to float32 rounding of the exponent
and of ``2 pi x``; at ``|x| <= 1`` that is an error of about 1e-4 for 10 frequencies and 4e-3 for 15 (measured).
:class:`ExactNeRFEncoding` keeps those constructor arguments (so it still reports itself as that frequency range)
but multiplies by the exact powers of two, which are exactly representable: values match a plain NeRF loop
to float32 precision. The output order is nerfstudio's: all sines (input-dim major, frequency minor), then
all cosines, then the raw input when ``include_input``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.utils.math import expected_sin
from torch import Tensor


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


def positional_encoding(in_dim: int, num_frequencies: int, include_input: bool) -> NeRFEncoding:
    """The original NeRF positional encoding: ``[sin(2^k x), cos(2^k x)]_k`` (+ ``x``), as a NeRFEncoding.

    Output width ``in_dim * (2 * num_frequencies + include_input)``: PE10(3-d, incl.) = 63, PE15 = 93,
    PE4(2-d) = 18, PE4(1-d) = 9, PE3(6-d, no raw) = 36, PE4(direction) = 27.
    """
    return ExactNeRFEncoding(in_dim=in_dim, num_frequencies=num_frequencies, include_input=include_input)


def encoding_out_dim(in_dim: int, num_frequencies: int, include_input: bool) -> int:
    """Width of :func:`positional_encoding` without building it (0 for a 0-d input)."""
    return in_dim * (2 * num_frequencies + int(include_input))
