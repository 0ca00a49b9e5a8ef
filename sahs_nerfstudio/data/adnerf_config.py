"""AD-NeRF's per-subject run configs: ``HeadNeRF_config.txt`` / ``TorsoNeRF_config.txt``.

AD-NeRF's ``data_util/process_data.py`` writes them next to the transforms files, in configargparse's
``key = value`` syntax, one key per line::

    expname = Obama_head
    datadir = dataset/Obama
    basedir = dataset/Obama/logs
    near = 0.5679027318954468
    far = 1.1679027318954467
    testskip = 104

with ``near = mean_z - 0.2``, ``far = mean_z + 0.4`` (``mean_z`` is the mean depth of the world origin
along the cameras' optical axes, i.e. minus the mean z of the head translations after AD-NeRF's
division by 10) and ``testskip = n_val // 7``. Its trainer evaluates ``val[::testskip]`` (every frame
when ``testskip`` is 0) and defaults to ``testskip = 8`` when no config names one.

Only ``near``, ``far``, ``testskip`` (and, when a user added them, ``nosmo_iters`` / ``smo_size``) are
read here; paths and names are AD-NeRF's own business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.errors import FormatError

CONFIG_FILES = ("HeadNeRF_config.txt", "TorsoNeRF_config.txt")
"""Read in this order; the first one present wins (process_data.py writes both with the same values)."""
DEFAULT_TESTSKIP = 8
"""AD-NeRF's ``--testskip`` default when no config file names one."""
NEAR_MARGIN = 0.2
FAR_MARGIN = 0.4


@dataclass
class ADNeRFRunConfig:
    """What a subject's AD-NeRF config file says (None: the file does not name it)."""

    path: Optional[Path] = None
    """The file read, or None when the subject has none."""
    near: Optional[float] = None
    far: Optional[float] = None
    testskip: Optional[int] = None
    nosmo_iters: Optional[int] = None
    """Step from which AD-NeRF smooths the audio code (its trainer's default is 300000)."""
    smo_size: Optional[int] = None
    """Frames in AD-NeRF's audio smoothing window (its trainer's default is 8)."""


def _parse_lines(path: Path) -> Dict[str, str]:
    values: Dict[str, str] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FormatError(
            path, "<file>", "a readable 'key = value' text file", f"{type(err).__name__}: {err}"
        ) from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise FormatError(path, f"line {number}", "'key = value'", repr(raw)[:60])
        key, value = (part.strip() for part in line.split("=", 1))
        values[key] = value
    return values


def _number(path: Path, key: str, value: str, integer: bool) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise FormatError(path, key, kind, repr(value)[:40]) from None
    if not math.isfinite(number):
        raise FormatError(path, key, "a finite number", value)
    return number


def read_run_config(root: Path) -> ADNeRFRunConfig:
    """The first of :data:`CONFIG_FILES` in ``root``, or an empty config when there is none."""
    for name in CONFIG_FILES:
        path = root / name
        if not path.is_file():
            continue
        values = _parse_lines(path)
        cfg = ADNeRFRunConfig(path=path)
        if "near" in values:
            cfg.near = _number(path, "near", values["near"], integer=False)
        if "far" in values:
            cfg.far = _number(path, "far", values["far"], integer=False)
        for key in ("testskip", "nosmo_iters", "smo_size"):
            if key in values:
                value = int(_number(path, key, values[key], integer=True))
                if value < 0:
                    raise FormatError(path, key, "an integer >= 0", str(value))
                setattr(cfg, key, value)
        return cfg
    return ADNeRFRunConfig()


def mean_axis_depth(c2w: Float[np.ndarray, "N 4 4"]) -> float:
    """process_data.py's ``mean_z``: mean depth of the world origin along each camera's optical axis.

    The camera looks down its -z axis; the origin's camera-space z is ``-(R[:, 2] . o)`` for a
    camera-to-world ``[R | o]``, so its depth is ``R[:, 2] . o``.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    return float(np.mean(np.einsum("ni,ni->n", c2w[:, :3, 2], c2w[:, :3, 3])))


def bounds_from_poses(c2w: Float[np.ndarray, "N 4 4"]) -> tuple[float, float]:
    """``(mean_z - 0.2, mean_z + 0.4)``: process_data.py's bounds for these cameras."""
    mean_z = mean_axis_depth(c2w)
    return mean_z - NEAR_MARGIN, mean_z + FAR_MARGIN


def write_run_configs(root: Path, name: str, c2w: Sequence[np.ndarray], num_val: int) -> list[Path]:
    """Write both config files as process_data.py does (bounds of all frames, ``testskip = n_val // 7``).

    Paths are written relative to the subject folder so a subject's bytes do not depend on where it was written.
    """
    near, far = bounds_from_poses(np.stack([np.asarray(m) for m in c2w]))
    paths = []
    for file_name, suffix in zip(CONFIG_FILES, ("_head", "_com"), strict=True):
        path = root / file_name
        path.write_text(
            f"expname = {name}{suffix}\ndatadir = .\nbasedir = ./logs\n"
            f"near = {near!r}\nfar = {far!r}\ntestskip = {num_val // 7}\n"
        )
        paths.append(path)
    return paths
