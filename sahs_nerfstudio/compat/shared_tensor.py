"""A float64 vector shared by every process that unpickles it (written against nerfstudio 1.1.5, pathos 0.3.5, torch 2.14).

nerfstudio 1.1.5's ``ParallelDataManager`` starts its ``DataProcessor`` workers with ``pathos``'
multiprocessing (``multiprocess``, ``dill`` pickling, "spawn"), not ``torch.multiprocessing``: the
pixel sampler reaches a worker as a pickled copy, and torch's shared-memory tensor reductions (which
only ``torch.multiprocessing``'s pickler uses) do not apply. A worker would never see what the
trainer writes into an ordinary tensor. :class:`SharedVector` lives in a memory-mapped file
(``torch.from_file(shared=True)``, in ``/dev/shm`` when it is writable) and pickles as its file name,
so any pickler gives every process the same memory.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import weakref

import torch
from torch import Tensor

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose ``ParallelDataManager`` (pathos workers) this works around."""


def shared_dir() -> str:
    """``/dev/shm`` (RAM-backed) when it is writable, else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SharedVector:
    """``size`` float64 values in a memory-mapped file, zero-initialised; ``.tensor`` is the shared view.

    Pickling keeps only the file name (plus a snapshot). The creating process removes the file when
    this object is garbage collected or the process exits; a copy unpickled after that keeps a private
    copy of the snapshot rather than create an orphan file. Writes are not atomic across processes.
    """

    def __init__(self, size: int, prefix: str = "sahs") -> None:
        self.size = int(size)
        self.path = os.path.join(shared_dir(), f"{prefix}_{os.getpid()}_{uuid.uuid4().hex}")
        self.tensor = self._map(self.path, self.size)
        self.tensor.zero_()
        self._finalizer: weakref.finalize | None = weakref.finalize(self, _unlink, self.path)

    @staticmethod
    def _map(path: str, size: int) -> Tensor:
        return torch.from_file(path, shared=True, size=size, dtype=torch.float64)

    def __getstate__(self) -> dict:
        return {"size": self.size, "path": self.path, "snapshot": self.tensor.clone()}

    def __setstate__(self, state: dict) -> None:
        self.size = state["size"]
        self.path = state["path"]
        self._finalizer = None
        if os.path.exists(self.path):
            self.tensor = self._map(self.path, self.size)
        else:
            self.tensor = state["snapshot"].clone()

    @property
    def owner(self) -> bool:
        """Whether this is the creating process's object (the one that removes the file)."""
        return self._finalizer is not None

    def close(self) -> None:
        """Remove the backing file now (owner only); attached processes keep their mapping."""
        if self._finalizer is not None:
            self._finalizer()
