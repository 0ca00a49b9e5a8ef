"""Property: whatever a transforms JSON holds, ``sahs-data`` loads it or raises FormatError, nothing else.

Hypothesis mutates the valid transforms files of the synthetic subject (both layouts, train and
val): a field deleted, replaced by a value of another type (string, bool, null, list, object),
by NaN / +-inf, by an out-of-range number (huge, negative, zero), or a list cut short or grown.
Examples are derandomised (the same cases on every run) and bounded; the tallies are printed and
recorded in BENCHMARKS.md ("Bad input").
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, List, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.errors import FormatError

EXAMPLES = 120
"""Mutated files per layout."""

Key = Union[str, int]

TALLY: Counter = Counter()


def _paths(obj: Any, prefix: Tuple[Key, ...] = ()) -> List[Tuple[Key, ...]]:
    """Every place in the document (frames: the first two and the last, so each is likely to be drawn)."""
    out: List[Tuple[Key, ...]] = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        keep = sorted({0, 1, len(obj) - 1}) if prefix == ("frames",) else range(len(obj))
        for i in keep:
            if 0 <= i < len(obj):
                out += _paths(obj[i], prefix + (i,))
    return out


ODD_VALUES = st.one_of(
    st.sampled_from([None, True, False, "", "0.5", "abc", [], {}, [1, 2], {"a": 1}, 0, -1, 0.0]),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 1e6, -1e6, 49.0, 2**40]),
    st.integers(min_value=-(2**31), max_value=2**31),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
)


def _mutate(doc: Any, path: Tuple[Key, ...], op: str, value: Any, scale: float) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    current = parent[key]
    if op == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif op == "replace":
        parent[key] = value
    elif op == "scale" and isinstance(current, (int, float)) and not isinstance(current, bool):
        parent[key] = current * scale
    elif op == "shorten" and isinstance(current, list):
        parent[key] = current[: len(current) // 2]
    elif op == "extend" and isinstance(current, list):
        parent[key] = current + current[:1] + [0.0]
    else:
        parent[key] = value


def _fuzz(root: Path, data: st.DataObject) -> None:
    files = ["transforms_train.json", "transforms_val.json"]
    name = data.draw(st.sampled_from(files), label="file")
    original = {f: (root / f).read_text() for f in files}
    doc = json.loads(original[name])
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    op = data.draw(st.sampled_from(["delete", "replace", "scale", "shorten", "extend"]), label="op")
    value = data.draw(ODD_VALUES, label="value")
    scale = data.draw(st.sampled_from([0.0, -1.0, 1e6, -1e-6, math.nan, math.inf]), label="scale")
    _mutate(doc, path, op, value, scale)
    (root / name).write_text(json.dumps(doc))
    try:
        SAHSDataParserConfig(data=root).setup().get_dataparser_outputs(split="train")
        TALLY[f"{root.name} loaded"] += 1
    except FormatError:
        TALLY[f"{root.name} FormatError"] += 1
    finally:
        for f, text in original.items():
            (root / f).write_text(text)


@pytest.fixture(scope="module")
def fuzz_subject(subject_nonsquare, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fuzz") / "subject"
    shutil.copytree(subject_nonsquare, dst)
    return dst


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(data=st.data())
def test_mutated_nerface_transforms_load_or_raise_format_error(fuzz_subject, data):
    _fuzz(fuzz_subject / "nerface", data)


@FUZZ
@given(data=st.data())
def test_mutated_adnerf_transforms_load_or_raise_format_error(fuzz_subject, data):
    _fuzz(fuzz_subject / "adnerf", data)


def test_fuzz_tally_is_reported():
    """Prints the tallies (run with -s); both kinds of outcome occurred, so the mutations reach the checks."""
    print(f"\nfuzz tally: {dict(sorted(TALLY.items()))}")
    if TALLY:
        for layout in ("nerface", "adnerf"):
            assert TALLY[f"{layout} FormatError"] > 0 and TALLY[f"{layout} loaded"] > 0, TALLY
