"""Checkpoint files of SAHS runs: written atomically with a checksum, verified when read.

nerfstudio writes ``step-N.ckpt`` in place, so a crash or a full disk during the write leaves a
0-byte or truncated newest checkpoint that every loader then picks. Here a checkpoint is written
to ``step-N.ckpt.<pid>.partial`` in the same folder, flushed and fsynced, and only then renamed
(rename within one folder is atomic): a ``step-N.ckpt`` is always complete. Its SHA-256, computed
while writing, goes to ``step-N.ckpt.sha256`` (torch does not check the CRCs of its zip archive,
so a file damaged later would load silently wrong weights without it).

Every loader of a SAHS run (the trainer's ``--load-dir``, ``ns-eval`` / ``ns-render`` /
``ns-viewer`` through :mod:`sahs_nerfstudio.compat.eval_checkpoint`, ``sahs-*``) picks the
newest checkpoint with :func:`load_newest_checkpoint`, which skips a file that does not load with
one warning naming it and falls back to the previous one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.errors import FormatError

STEP_NAME = re.compile(r"step-(\d+)\.ckpt")
"""nerfstudio's checkpoint file name."""

PARTIAL_SUFFIX = ".partial"
"""Suffix of a checkpoint still being written (left behind only by a killed process)."""

DIGEST_SUFFIX = ".sha256"
"""Suffix of the file holding a checkpoint's SHA-256."""

KEEP_LATEST = 2
"""Checkpoints kept when a run keeps only its latest: the newest and one intact fallback."""

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CheckpointNotSaved(FormatError):
    """A checkpoint could not be written (a full disk); the previous ones are untouched."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def checkpoint_step(path: Path) -> Optional[int]:
    """The step of ``step-<N>.ckpt``; None for any other file (partial writes, checksums)."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(folder: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if (step := checkpoint_step(p)) is not None and p.is_file()]
    return sorted(found, reverse=True)


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


class _HashingWriter:
    """A write-only binary stream that hashes what passes through (no second read of the file)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, write) -> None:
    with open(path, "wb") as raw:
        write(raw)
        raw.flush()
        os.fsync(raw.fileno())


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def write_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename) with its checksum.

    Raises:
        CheckpointNotSaved: the disk (or quota) is full; nothing at ``path`` changed.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}"
    tmp_digest = folder / f"{path.name}{DIGEST_SUFFIX}.{os.getpid()}{PARTIAL_SUFFIX}"
    writer: List[_HashingWriter] = []

    def save(raw: BinaryIO) -> None:
        writer.append(_HashingWriter(raw))
        torch.save(state, writer[0])  # type: ignore[arg-type]

    try:
        _write_durably(tmp, save)
        line = f"{writer[0].sha.hexdigest()}  {path.name}\n".encode()
        _write_durably(tmp_digest, lambda raw: raw.write(line))
        # Checksum first: a crash between the two renames leaves a checksum without its checkpoint
        # (ignored), never a checkpoint with another one's checksum.
        os.replace(tmp_digest, digest_path(path))
        os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
        if _disk_full(err):
            free = shutil.disk_usage(folder).free
            size = sum(len(t.untyped_storage()) for t in _tensors(state))
            previous = list_checkpoints(folder)
            kept = f"kept {previous[0][1].name}" if previous else "no earlier checkpoint"
            raise CheckpointNotSaved(
                path,
                "<disk>",
                f"room for the checkpoint (about {_mib(size)})",
                f"no space left on device ({_mib(free)} free); {kept}",
            ) from None
        raise


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` is, or was caused by, a full disk (torch re-raises our stream's OSError as a
    RuntimeError of its zip writer, with the OSError as its context)."""
    seen: List[BaseException] = []
    cur: Optional[BaseException] = err
    while cur is not None and not any(cur is s for s in seen):
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            return True
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return False


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def prune_checkpoints(folder: Path, keep: int = KEEP_LATEST) -> None:
    """Delete all but the ``keep`` newest checkpoints (with their checksums) and stale partial writes."""
    for _, path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)
    live = {p.name for _, p in list_checkpoints(folder)}
    for p in folder.iterdir():
        orphan_digest = p.name.endswith(".ckpt" + DIGEST_SUFFIX) and p.name[: -len(DIGEST_SUFFIX)] not in live
        if p.name.endswith(PARTIAL_SUFFIX) or orphan_digest:
            p.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def _first_line(err: BaseException, limit: int = 120) -> str:
    text = str(err).strip()
    first = text.splitlines()[0][:limit] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def verify_checkpoint(path: Path) -> None:
    """FormatError unless ``path`` is a non-empty file matching its recorded checksum (when it has one)."""
    if not path.is_file():
        raise FormatError(path, "<file>", "a checkpoint file", "no such file")
    size = path.stat().st_size
    if size == 0:
        raise FormatError(path, "<file>", "a checkpoint", "an empty file (0 bytes)")
    recorded = digest_path(path)
    if recorded.is_file():
        expected = recorded.read_text().split()[0] if recorded.read_text().strip() else ""
        actual = _sha256(path)
        if actual != expected:
            raise FormatError(
                path,
                "<sha256>",
                f"{expected[:16]}... as recorded when it was saved",
                f"{actual[:16]}... ({size} bytes: cut short or changed since)",
            )


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A verified nerfstudio checkpoint (``step``, ``pipeline``, ...) on the CPU, or a FormatError."""
    from sahs_nerfstudio.compat.checkpoints import allow_nerfstudio_checkpoints

    allow_nerfstudio_checkpoints()
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a damaged zip or pickle fails in many ways)
        raise FormatError(path, "<file>", "a nerfstudio checkpoint that loads", _first_line(err)) from None
    if not isinstance(state, dict) or "pipeline" not in state or "step" not in state:
        found = f"keys {sorted(state)[:6]}" if isinstance(state, dict) else type(state).__name__
        raise FormatError(path, "<file>", "a nerfstudio checkpoint ('step', 'pipeline', ...)", found)
    return state


def warn(message: str) -> None:
    """One warning line (never wrapped, so it stays one line in logs)."""
    CONSOLE.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def load_newest_checkpoint(folder: Path, step: Optional[int] = None) -> Tuple[Path, Dict[str, Any]]:
    """The checkpoint of ``step``, or the newest one in ``folder`` that loads.

    A newer checkpoint that does not load is skipped with one warning naming it. An explicit
    ``step`` that does not load is an error (the user asked for that one).
    """
    if step is not None:
        path = folder / checkpoint_name(step)
        if not path.is_file():
            steps = ", ".join(str(s) for s, _ in list_checkpoints(folder)[:5]) or "none"
            raise FormatError(path, "load_step", f"a saved step (saved: {steps})", "no such file")
        return path, load_checkpoint(path)
    if not folder.is_dir():
        raise FormatError(folder, "<checkpoints>", "a folder of step-*.ckpt files", "no such folder")
    found = list_checkpoints(folder)
    if not found:
        partial = sum(1 for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX))
        extra = f" (only {partial} unfinished write(s))" if partial else ""
        raise FormatError(folder, "step-*.ckpt", "a checkpoint of this run", f"none{extra}")
    first_error: Optional[FormatError] = None
    for _, path in found:
        try:
            return path, load_checkpoint(path)
        except FormatError as err:
            first_error = first_error or err
            warn(f"skipping checkpoint {path} that does not load ({err}); trying the previous one")
    assert first_error is not None
    raise FormatError(
        folder, "step-*.ckpt", "a checkpoint that loads", f"{len(found)} that do not, newest: {first_error}"
    )
