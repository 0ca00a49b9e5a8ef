"""Refiner checkpoints: ``<output>/checkpoints/epoch-NNNN.ckpt``, written atomically, validated on read.

Each epoch's checkpoint is written by the project's one checkpoint writer
(:func:`~sahs_nerfstudio.checkpoint_io.write_checkpoint`: temporary file, fsync, SHA-256, rename, a full disk named in
one line), so an interruption never leaves a broken one and training resumes from the latest. A checkpoint holds the network config and the
identity photo, so refining needs only the checkpoint.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sahs_nerfstudio.checkpoint_io import PARTIAL_SUFFIX, digest_path, verify_checkpoint
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.refinement.networks import RefinerNetworkConfig

CHECKPOINT_FORMAT = "sahs-refiner"
CHECKPOINT_VERSION = 2
"""2: the network config records ``architecture`` (version 1 checkpoints hold the published network)."""


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: Path, epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` (1-based) goes."""
    return checkpoint_dir(output_dir) / f"epoch-{epoch:04d}.ckpt"


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    """Latest ``epoch-NNNN.ckpt`` in ``<output_dir>/checkpoints`` (``None`` if there is none)."""
    ckpts = sorted(checkpoint_dir(output_dir).glob("epoch-*.ckpt"))
    return ckpts[-1] if ckpts else None


def best_checkpoint_path(output_dir: Path) -> Path:
    """Where the checkpoint of the best validation epoch goes (kept apart from the pruned per-epoch ones)."""
    return checkpoint_dir(output_dir) / "best.ckpt"


def remove_stale_temporaries(output_dir: Path) -> None:
    """Deletes the partial files an interrupted save left behind (checkpoints are written by
    :func:`~sahs_nerfstudio.checkpoint_io.write_checkpoint`: temporary file, fsync, checksum, rename)."""
    folder = checkpoint_dir(output_dir)
    for stale in [
        *folder.glob(f"*{PARTIAL_SUFFIX}"),
        *folder.glob(".*.ckpt.tmp"),
    ]:  # (.tmp: the writer before checksums)
        stale.unlink(missing_ok=True)


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Keeps the ``keep`` most recent per-epoch checkpoints (with their checksums)."""
    ckpts = sorted(checkpoint_dir(output_dir).glob("epoch-*.ckpt"))
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Loads and validates a refiner checkpoint (a FormatError if it is something else)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "--checkpoint", "a refiner checkpoint", "a folder" if path.is_dir() else "no such file")
    verify_checkpoint(path)  # its recorded SHA-256: a file cut short or changed since is named as such
    if not zipfile.is_zipfile(path):
        raise FormatError(path, "--checkpoint", "a refiner checkpoint", "not a torch.save file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a foreign file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(exc).__name__)
        raise FormatError(path, "--checkpoint", "a refiner checkpoint", reason[:160]) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        if not isinstance(state, dict):
            found = type(state).__name__
        else:
            found = repr(state["format"]) if "format" in state else "no 'format' key"
        raise FormatError(path, "format", f"'{CHECKPOINT_FORMAT}' (a refiner checkpoint)", found)
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise FormatError(path, "version", f"at most {CHECKPOINT_VERSION}", str(state.get("version")))
    return state


def network_config_from_dict(values: dict[str, Any]) -> RefinerNetworkConfig:
    """The network config stored in a checkpoint (JSON lists back to tuples).

    A config without ``architecture`` predates the residual refiner: it is the published network.
    """
    known = set(RefinerNetworkConfig.__dataclass_fields__)
    kwargs: dict[str, Any] = {"architecture": "published"}
    kwargs.update({k: _tuple_or(v) for k, v in values.items() if k in known})
    return RefinerNetworkConfig(**kwargs)


def network_differences(saved: RefinerNetworkConfig, wanted: RefinerNetworkConfig) -> list[str]:
    """``field=wanted (checkpoint: saved)`` for every field that differs."""
    da, db = asdict(saved), asdict(wanted)
    return [f"{k}={db[k]!r} (checkpoint: {da[k]!r})" for k in da if _tuple_or(da[k]) != _tuple_or(db[k])]


def _tuple_or(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def jsonable(value: Any) -> Any:
    """Dataclass dicts -> JSON (tuples to lists, paths to strings): checkpoints load weights-only."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
