"""SAHS runs in ``ns-eval``, ``ns-render`` and ``ns-viewer`` (written against nerfstudio 1.1.5).

Two things nerfstudio 1.1.5 does not offer a hook for:

* ``nerfstudio.utils.eval_utils.eval_setup`` (behind ``ns-eval``, ``ns-render``, ``ns-viewer``)
  loads ``sorted(os.listdir(load_dir))[-1]`` with ``torch.load`` through the module attribute
  ``eval_load_checkpoint``: a truncated newest checkpoint fails with ``EOFError``. For SAHS runs
  that attribute is replaced by :func:`load_sahs_checkpoint`, which verifies checksums and falls
  back to the previous intact checkpoint (:func:`~sahs_nerfstudio.checkpoint_io.load_newest_checkpoint`, passed to
  :func:`install`).
  Other methods' runs go to nerfstudio's own function.
* ``nerfstudio.scripts.viewer.run_viewer.RunViewer.main`` replaces the run's viewer settings with
  its command line's, whose ``websocket_host`` defaults to ``0.0.0.0``: every interface. For SAHS
  runs the module's ``_start_viewer`` is wrapped so the viewer binds ``127.0.0.1`` unless the
  command line names a host (``--viewer.websocket-host``).

Both are installed by :func:`install`, called from ``SAHSTrainerConfig.get_checkpoint_dir``:
nerfstudio imports the plugin while ``eval_utils`` and ``run_viewer`` are still being imported
(so their functions do not exist yet), but ``eval_setup`` asks the run's config for its checkpoint
folder just before it loads, when both modules are complete.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose ``eval_utils`` and ``run_viewer`` internals this replaces."""

LOCAL_HOST = "127.0.0.1"
HOST_FLAGS = ("--viewer.websocket-host", "--viewer.websocket_host")
"""How a user names the viewer's host on the ``ns-viewer`` command line."""

_original_eval_load: Optional[Callable[..., Tuple[Path, int]]] = None
_original_start_viewer: Optional[Callable[..., Any]] = None
_load_newest: Optional[Callable[[Path, Optional[int]], Tuple[Path, Any]]] = None
"""The project's verified-checkpoint loader (``checkpoint_io.load_newest_checkpoint``), given to :func:`install`."""
_is_sahs: Optional[Callable[[Any], bool]] = None
"""Whether a run's config is a SAHS run (``utils.run_loader.is_sahs_config``), given to :func:`install`."""


def load_sahs_checkpoint(config: Any, pipeline: Any) -> Tuple[Path, int]:
    """``eval_load_checkpoint`` for SAHS runs: the newest verified checkpoint, else the previous one."""
    from nerfstudio.utils.rich_utils import CONSOLE

    if _is_sahs is None or _load_newest is None or not _is_sahs(config):
        assert _original_eval_load is not None
        return _original_eval_load(config, pipeline)
    path, state = _load_newest(Path(config.load_dir), config.load_step)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    CONSOLE.print(f"Done loading checkpoint from {path}", markup=False, soft_wrap=True)
    return path, int(state["step"])


def user_named_host(argv: List[str]) -> bool:
    """Whether the command line sets the viewer's host."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in HOST_FLAGS)


def _start_viewer_locally(config: Any, pipeline: Any, step: int) -> Any:
    if _is_sahs is not None and _is_sahs(config) and not user_named_host(sys.argv[1:]):
        config.viewer.websocket_host = LOCAL_HOST
    assert _original_start_viewer is not None
    return _original_start_viewer(config, pipeline, step)


def install(load_newest: Callable[[Path, Optional[int]], Tuple[Path, Any]], is_sahs: Callable[[Any], bool]) -> None:
    """Route nerfstudio's checkpoint loading and ``ns-viewer``'s start through the functions above, with the
    project's loader and run check passed in (``compat/`` imports nothing of the package).

    Idempotent, and a no-op for a module that is not (fully) imported yet.
    """
    global _original_eval_load, _original_start_viewer, _load_newest, _is_sahs
    _load_newest, _is_sahs = load_newest, is_sahs
    eval_utils = sys.modules.get("nerfstudio.utils.eval_utils")
    current = getattr(eval_utils, "eval_load_checkpoint", None)
    if current is not None and current is not load_sahs_checkpoint:
        _original_eval_load = current
        eval_utils.eval_load_checkpoint = load_sahs_checkpoint  # type: ignore[union-attr]
    run_viewer = sys.modules.get("nerfstudio.scripts.viewer.run_viewer")
    start = getattr(run_viewer, "_start_viewer", None)
    if start is not None and start is not _start_viewer_locally:
        _original_start_viewer = start
        run_viewer._start_viewer = _start_viewer_locally  # type: ignore[union-attr]
