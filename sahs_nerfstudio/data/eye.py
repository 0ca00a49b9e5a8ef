"""The per-frame eye track of the AD-NeRF layout: ``au.csv``, OpenFace's blink action unit (AU45).

Audio does not say when a person blinks, so audio-driven models take the eyes as an extra driving
channel. The AD-NeRF lineage (ER-NeRF, RAD-NeRF, ...) reads it from OpenFace's per-frame output
``au.csv`` in the dataset root: one row per frame (row ``k`` is ``img_id`` ``k``), columns separated
by ``", "`` so that pandas names the column ``" AU45_r"`` (the key those loaders use). This module
writes that file (``frame, AU45_r``; ``frame`` counts from 1, as OpenFace does) and reads it, or a full
OpenFace file with many more columns, checking every value.

Values and what the model reads:

* ``AU45_r`` is OpenFace's blink intensity, 0 (eyes open) .. 5; a full blink reads about 2.
* The model reads the **eye closure** ``clip(AU45_r, 0, 2) / 2`` in ``[0, 1]`` (0 open, 1 shut):
  ER-NeRF's rule, intensities above 2 all meaning fully closed.
* ``sahs-process`` writes ``AU45_r`` from the landmarks: with ``o`` the mean of the expression code's
  two eye-openness channels (the eye aspect ratio ``(|p1-p5| + |p2-p4|) / (2 |p0-p3|)`` of each eye
  over its sequence median, so 1 is the subject's usual open eye and 0 a shut one),
  ``AU45_r = 2 * clip(1 - o, 0, 1)``: the usual eye writes 0, a shut eye 2, an eye opened wider than
  usual still 0 (a blink measure has nothing below "open").
* The synthetic subject writes ``AU45_r = 2 * blink`` from its ``blink`` control (0 open, 1 shut).

A missing ``au.csv`` means no eye channel (said once per dataset); a bad one is a one-line
:class:`~sahs_nerfstudio.errors.FormatError` naming the file, the column and the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.errors import FormatError

AU_CSV = Path("au.csv")
"""The eye track's file name in an AD-NeRF dataset root (OpenFace's output name)."""
FRAME_COLUMN = "frame"
"""OpenFace's 1-based frame number column."""
AU45_COLUMN = "AU45_r"
"""OpenFace's blink intensity column (``" AU45_r"`` with the leading space pandas keeps after ``", "``)."""
AU45_MAX = 5.0
"""OpenFace's action-unit intensities lie in ``[0, 5]``."""
AU45_FULL_CLOSURE = 2.0
"""The intensity read as fully closed (ER-NeRF: ``clip(AU45_r, 0, 2) / 2``)."""


def closure_from_au45(au45: Float[np.ndarray, " N"]) -> Float[np.ndarray, " N"]:
    """Eye closure in ``[0, 1]`` (0 open, 1 shut) from AU45 intensities (ER-NeRF's saturation at 2)."""
    return np.clip(np.asarray(au45, dtype=np.float64), 0.0, AU45_FULL_CLOSURE) / AU45_FULL_CLOSURE


def au45_from_closure(closure: Float[np.ndarray, " N"]) -> Float[np.ndarray, " N"]:
    """AU45 intensities of closures in ``[0, 1]`` (the inverse of :func:`closure_from_au45` there)."""
    closure = np.asarray(closure, dtype=np.float64)
    if closure.size and (not np.all(np.isfinite(closure)) or closure.min() < 0.0 or closure.max() > 1.0):
        raise ValueError(f"eye closures must lie in [0, 1], got {closure.min()}..{closure.max()}")
    return closure * AU45_FULL_CLOSURE


def au45_from_openness(openness: Float[np.ndarray, " N"]) -> Float[np.ndarray, " N"]:
    """AU45 from the landmark eye openness (eye aspect ratio over its median: 1 usual, 0 shut); see the module
    docstring."""
    return au45_from_closure(np.clip(1.0 - np.asarray(openness, dtype=np.float64), 0.0, 1.0))


def write_au_csv(path: Path, au45: Float[np.ndarray, " N"]) -> Path:
    """Write ``frame, AU45_r`` rows (frame from 1), OpenFace-style with ``", "`` separators."""
    au45 = np.asarray(au45, dtype=np.float64)
    if au45.ndim != 1 or not np.all(np.isfinite(au45)) or (au45.size and (au45.min() < 0 or au45.max() > AU45_MAX)):
        raise ValueError(f"AU45 intensities must be a finite 1-d array in [0, {AU45_MAX:g}]")
    lines = [f"{FRAME_COLUMN}, {AU45_COLUMN}"] + [f"{k + 1}, {v:.4f}" for k, v in enumerate(au45)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_au_csv(path: Path) -> Float[np.ndarray, " N"]:
    """The ``AU45_r`` column of an OpenFace-style ``au.csv`` (any other columns ignored), one value per row.

    Raises a FormatError for a missing or unreadable file, a header without ``AU45_r``, a row with too few
    values, a value that is not a number in ``[0, 5]``, or ``frame`` numbers that are not ``1, 2, 3, ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "<file>", "an OpenFace au.csv eye track", "no such file")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise FormatError(path, "<file>", "a readable CSV file", f"{type(err).__name__}: {err}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise FormatError(path, "<header>", f"a header with an '{AU45_COLUMN}' column", "an empty file")
    header = [cell.strip() for cell in rows[0]]
    if AU45_COLUMN not in header:
        raise FormatError(path, "<header>", f"an '{AU45_COLUMN}' column (OpenFace's blink)", f"columns {header[:8]}")
    if len(rows) < 2:
        raise FormatError(path, AU45_COLUMN, "at least one frame row", "only the header")
    col = header.index(AU45_COLUMN)
    frame_col = header.index(FRAME_COLUMN) if FRAME_COLUMN in header else None
    values = np.empty(len(rows) - 1)
    for k, row in enumerate(rows[1:]):
        line = f"row {k + 2}"
        if len(row) <= max(col, frame_col or 0):
            raise FormatError(path, f"{AU45_COLUMN} ({line})", f"{len(header)} values like the header", str(len(row)))
        values[k] = _number(path, f"{AU45_COLUMN} ({line})", row[col], f"a number in [0, {AU45_MAX:g}]")
        if not 0.0 <= values[k] <= AU45_MAX:
            raise FormatError(path, f"{AU45_COLUMN} ({line})", f"a number in [0, {AU45_MAX:g}]", row[col].strip())
        if frame_col is not None:
            frame = _number(path, f"{FRAME_COLUMN} ({line})", row[frame_col], f"frame number {k + 1}")
            if frame != k + 1:
                raise FormatError(
                    path,
                    f"{FRAME_COLUMN} ({line})",
                    f"frame number {k + 1} (one row per frame, in order)",
                    f"{frame:g}",
                )
    return values


def _number(path: Path, field_name: str, cell: str, expected: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise FormatError(path, field_name, expected, repr(cell.strip())[:40]) from None
    if not np.isfinite(value):
        raise FormatError(path, field_name, expected, cell.strip())
    return value


def frame_closures(path: Path, img_ids: list[int]) -> Float[np.ndarray, " N"]:
    """The eye closure of each frame ``img_ids[k]`` (row ``img_id`` of ``au.csv``, as ER-NeRF indexes it)."""
    au45 = read_au_csv(path)
    too_far = [i for i in img_ids if i >= len(au45)]
    if too_far:
        raise FormatError(
            path,
            AU45_COLUMN,
            f"a row for every frame (img_id up to {max(img_ids)}, so {max(img_ids) + 1} rows)",
            f"{len(au45)} rows",
        )
    return closure_from_au45(au45[np.asarray(img_ids, dtype=np.int64)])


_REPORTED_MISSING: set[str] = set()


def read_eye_track(root: Path, img_ids: list[int]) -> Float[np.ndarray, " N"] | None:
    """The frames' eye closures from ``root/au.csv``, or None when there is none (said once per dataset)."""
    path = Path(root) / AU_CSV
    if path.is_file():
        return frame_closures(path, img_ids)
    key = str(path.resolve())
    if key not in _REPORTED_MISSING:
        _REPORTED_MISSING.add(key)
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(f"{path} not found: no eye channel (an audio model's eyes follow the audio alone)")
    return None


# ----------------------------------------------------------------------------------------------
# Natural blinks, for driving a model when no eye track is given

BLINKS_PER_MINUTE = 17.5
"""Mean blink rate of an adult at rest, talking: about 15-20 per minute."""
BLINK_SECONDS = (0.1, 0.3)
"""Range of one blink's duration (lid down and up again), drawn uniformly."""
MIN_GAP_SECONDS = 1.0
"""Shortest open interval between two blinks."""
GAP_SHAPE = 4.0
"""Gamma shape of the open intervals (beyond ``MIN_GAP_SECONDS``): 1 would be a Poisson process; 4 keeps the
rate near its mean over a minute, as people blink more regularly than at random."""


def natural_blinks(
    num_frames: int, fps: float, seed: int = 0, per_minute: float = BLINKS_PER_MINUTE
) -> Float[np.ndarray, " T"]:
    """An eye-closure track (0 open, 1 shut) with blinks at a human rate.

    Open intervals are ``MIN_GAP_SECONDS`` plus a gamma variate (shape ``GAP_SHAPE``) whose sum has mean
    ``60 / per_minute``; each blink lasts a uniform ``BLINK_SECONDS`` and closes as ``sin^2`` over its duration
    (fully shut at its middle). The first blink comes after one drawn interval. Deterministic for a ``seed``.
    """
    if num_frames < 0 or not fps > 0 or not per_minute > 0:
        raise ValueError("natural_blinks needs num_frames >= 0, fps > 0 and per_minute > 0")
    rng = np.random.default_rng(seed)
    mean_gap = 60.0 / per_minute - MIN_GAP_SECONDS - 0.5 * sum(BLINK_SECONDS)
    if mean_gap <= 0:
        raise ValueError(f"{per_minute} blinks per minute leave no open interval")
    times = np.arange(num_frames) / fps
    closure = np.zeros(num_frames)
    end = num_frames / fps
    t = 0.0
    while True:
        t += MIN_GAP_SECONDS + rng.gamma(GAP_SHAPE, mean_gap / GAP_SHAPE)
        duration = rng.uniform(*BLINK_SECONDS)
        if t >= end:
            break
        inside = (times >= t) & (times < t + duration)
        closure[inside] = np.maximum(closure[inside], np.sin(np.pi * (times[inside] - t) / duration) ** 2)
        t += duration
    return closure
