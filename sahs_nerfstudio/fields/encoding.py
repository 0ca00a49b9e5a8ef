"""The original NeRF positional encoding ``sin(2^k x), cos(2^k x)``, ``k = 0..L-1``, as a nerfstudio encoding.

nerfstudio's own :class:`NeRFEncoding` has a ``2 pi`` factor and float32-rounded exponents; the exact
frequencies come from :class:`~sahs_nerfstudio.compat.encodings.ExactNeRFEncoding`, a workaround of its
torch path kept with the other library workarounds.
"""

from __future__ import annotations

from nerfstudio.field_components.encodings import NeRFEncoding

from sahs_nerfstudio.compat.encodings import ExactNeRFEncoding


def positional_encoding(in_dim: int, num_frequencies: int, include_input: bool) -> NeRFEncoding:
    """The original NeRF positional encoding: ``[sin(2^k x), cos(2^k x)]_k`` (+ ``x``), as a NeRFEncoding.

    Output width ``in_dim * (2 * num_frequencies + include_input)``: PE10(3-d, incl.) = 63, PE15 = 93,
    PE4(2-d) = 18, PE4(1-d) = 9, PE3(6-d, no raw) = 36, PE4(direction) = 27.
    """
    return ExactNeRFEncoding(in_dim=in_dim, num_frequencies=num_frequencies, include_input=include_input)


def encoding_out_dim(in_dim: int, num_frequencies: int, include_input: bool) -> int:
    """Width of :func:`positional_encoding` without building it (0 for a 0-d input)."""
    return in_dim * (2 * num_frequencies + int(include_input))
