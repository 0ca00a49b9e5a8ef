"""Typed fields of the JSON transforms files: each getter returns the value or raises FormatError.

JSON gives strings where numbers belong, ``true`` (a Python int), ``NaN`` / ``Infinity`` (Python's
json module accepts them), lists of the wrong length and frames that are not objects; every one of
these must end in one line naming the field, never a ``TypeError`` deep inside numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.errors import FormatError

MISSING = "it missing"


def shown(value: Any, limit: int = 60) -> str:
    """A value as the message shows it (JSON-like, cut short)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_json_object(path: Path) -> Dict[str, Any]:
    """A JSON file holding an object, or FormatError (missing, unreadable, invalid, not an object)."""
    if not path.is_file():
        raise FormatError(path, "<file>", "a JSON file", "no such file")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise FormatError(path, "<file>", "valid JSON", f"{type(err).__name__}: {str(err)[:80]}") from None
    if not isinstance(obj, dict):
        raise FormatError(path, "<file>", "a JSON object {...}", type(obj).__name__)
    return obj


def is_number(value: Any) -> bool:
    """An int or float, not a bool (JSON ``true`` would otherwise pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(path: Path, obj: Dict[str, Any], key: str, where: str = "") -> Any:
    if key not in obj:
        raise FormatError(path, f"{where}{key}", "the field to be present", MISSING)
    return obj[key]


def as_object(path: Path, field_name: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(path, field_name, "an object {...}", f"{type(value).__name__} {shown(value)}")
    return value


def as_string(path: Path, field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(path, field_name, "a non-empty string", shown(value))
    return value


def as_number(path: Path, field_name: str, value: Any, what: str = "a number") -> float:
    """A finite number."""
    if not is_number(value):
        raise FormatError(path, field_name, what, shown(value))
    if not math.isfinite(value):
        raise FormatError(path, field_name, f"{what} (finite)", shown(value))
    return float(value)


def as_integer(path: Path, field_name: str, value: Any, minimum: Optional[int] = None) -> int:
    """An integer (a float with an integer value is accepted: some writers emit ``3.0``)."""
    if not is_number(value) or not math.isfinite(value) or float(value) != int(value):
        raise FormatError(path, field_name, "an integer", shown(value))
    if minimum is not None and int(value) < minimum:
        raise FormatError(path, field_name, f"an integer >= {minimum}", shown(value))
    return int(value)


def as_numbers(path: Path, field_name: str, value: Any, length: Optional[int] = None) -> Float[np.ndarray, " D"]:
    """A flat list of finite numbers (of ``length`` entries when given)."""
    what = f"a list of {length} numbers" if length is not None else "a flat list of numbers"
    if not isinstance(value, list):
        raise FormatError(path, field_name, what, f"{type(value).__name__} {shown(value)}")
    bad = next((k for k, v in enumerate(value) if not is_number(v)), None)
    if bad is not None:
        raise FormatError(path, field_name, what, f"{shown(value[bad], 30)} at position {bad}")
    if length is not None and len(value) != length:
        raise FormatError(path, field_name, what, f"{len(value)} values")
    if not value:
        raise FormatError(path, field_name, what, "an empty list")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        k = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise FormatError(path, field_name, "finite numbers", f"{value[k]} at position {k}")
    return arr


def as_list(path: Path, field_name: str, value: Any, non_empty: bool = True) -> List[Any]:
    if not isinstance(value, list) or (non_empty and not value):
        raise FormatError(path, field_name, "a non-empty list", shown(value))
    return value
