"""Loading a trained run: nerfstudio's ``eval_setup`` with one-line errors, the only loader in the project.

``sahs-render``, ``sahs-refine``, the benchmark and the tests all load runs through :func:`load_run`.
Around ``eval_setup`` it adds what a user needs:

* the config is read first, so a missing, binary or garbage ``config.yml``, or another method's
  run, ends in one :class:`FormatError` line instead of a traceback;
* SAHS runs load the newest intact checkpoint (:mod:`sahs_nerfstudio.checkpoint_io`, through
  :mod:`sahs_nerfstudio.compat.eval_checkpoint`), and its keys and shapes are compared with the
  model's: nerfstudio loads a checkpoint with missing keys silently;
* runs trained with several processes (state-dict keys ``_model.module.*``) load like the others;
* the numpy types nerfstudio checkpoints hold are registered with torch's weights-only unpickler
  explicitly, here, not as a side effect of importing a config module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from sahs_nerfstudio.compat.checkpoints import allow_nerfstudio_checkpoints
from sahs_nerfstudio.errors import FormatError

TestMode = Literal["test", "val", "inference"]

DDP_PREFIX = "_model.module."
"""State-dict prefix of the model in runs trained with several processes (the model wrapped in DDP)."""


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first[:limit]}" if first else type(err).__name__


def is_sahs_config(config: TrainerConfig) -> bool:
    """Whether the run's model is one of this plugin's (``sahs``, ``sahs-fast`` and their presets)."""
    return type(config.pipeline.model).__module__.startswith("sahs_nerfstudio.")


def read_run_config(config_path: Path, any_method: bool = False) -> TrainerConfig:
    """A run's ``config.yml`` as a :class:`TrainerConfig`; a SAHS run's unless ``any_method``."""
    config_path = Path(config_path)
    if not config_path.is_file():
        what = "no such file" if not config_path.exists() else "a folder"
        raise FormatError(config_path, "<file>", "a run's config.yml (outputs/<name>/<method>/<time>/config.yml)", what)
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except UnicodeDecodeError:
        raise FormatError(config_path, "<file>", "a nerfstudio config.yml (YAML text)", "binary data") from None
    except Exception as err:  # noqa: BLE001  (YAML and the objects it names fail in many ways)
        raise FormatError(config_path, "<file>", "a nerfstudio config.yml", _first_line(err)) from None
    if not isinstance(config, TrainerConfig):
        raise FormatError(config_path, "<file>", "a nerfstudio TrainerConfig", type(config).__name__)
    if not any_method and not is_sahs_config(config):
        raise FormatError(
            config_path,
            "method_name",
            "a SAHS run ('sahs' or 'sahs-fast')",
            f"'{config.method_name}' ({type(config.pipeline.model).__name__})",
        )
    return config


def _saved_state_shapes(path: Path) -> dict[str, tuple[int, ...] | None]:
    """Key -> shape of the pipeline state in a checkpoint that just loaded, memory-mapped (no tensor is read)."""
    loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return state_shapes(model_state_keys(loaded["pipeline"]))


def model_state_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline state dict with one key spelling: ``_model.*`` whether or not it was trained with DDP."""
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key.startswith(DDP_PREFIX):
            key = "_model." + key[len(DDP_PREFIX) :]
        out[key] = value
    return out


def state_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Key -> tensor shape of a state dict; None for a non-tensor entry (a module's extra state)."""
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}


def check_state(
    path: Path, method: str, saved: Mapping[str, tuple[int, ...] | None], own: Mapping[str, tuple[int, ...] | None]
) -> None:
    """The checkpoint (key -> shape) holds exactly the model's keys with its shapes, or a FormatError."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    wrong = [k for k in own if k in saved and saved[k] != own[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. '{k}' {saved[k]} vs {own[k]})")
    raise FormatError(path, "pipeline", f"the weights of the model in {method} config.yml", "; ".join(parts) + " keys")


def load_run(
    config_path: Path,
    test_mode: TestMode = "test",
    data: Path | None = None,
    *,
    any_method: bool = False,
    eval_num_rays_per_chunk: int | None = None,
) -> tuple[TrainerConfig, Pipeline, Path, int]:
    """nerfstudio's ``eval_setup`` with one-line :class:`FormatError` messages; same return value.

    Args:
        config_path: the run's ``config.yml``.
        test_mode: which datasets to load (``eval_setup``'s argument).
        data: dataset path replacing the one stored in the config (a moved dataset).
        any_method: accept another method's run (default: SAHS runs only).
        eval_num_rays_per_chunk: rays per forward pass when rendering (None: the config's).

    Returns:
        ``(config, pipeline, checkpoint_path, step)``, the pipeline in eval mode.
    """
    from nerfstudio.utils.eval_utils import eval_setup

    from sahs_nerfstudio.checkpoint_io import list_checkpoints

    allow_nerfstudio_checkpoints()
    config_path = Path(config_path)
    probe = read_run_config(config_path, any_method=any_method)
    # A SAHS config routes eval_setup's checkpoint loading through checkpoint_io (verified, newest
    # intact checkpoint: compat/eval_checkpoint.py) when asked for this folder, eval_utils imported.
    checkpoints = Path(probe.get_checkpoint_dir())
    if not list_checkpoints(checkpoints):
        # nerfstudio would print a banner and exit 1, or fail on an empty folder.
        raise FormatError(checkpoints, "step-*.ckpt", "a checkpoint of this run", "no checkpoint files")

    def update(config: TrainerConfig) -> TrainerConfig:
        if data is not None:
            datamanager: Any = config.pipeline.datamanager
            datamanager.data = Path(data)
            datamanager.dataparser.data = Path(data)
        return config

    try:
        config, pipeline, path, step = eval_setup(
            config_path,
            eval_num_rays_per_chunk=eval_num_rays_per_chunk,
            test_mode=test_mode,
            update_config_callback=update,
        )
    except RuntimeError as err:
        # A shape mismatch fails inside torch's load_state_dict (missing keys do not: nerfstudio loads
        # non-strictly); the pipeline is gone by then, so torch's first mismatch line is the message.
        mismatch = re.search(r"size mismatch for ([^:]+): (.*)", str(err))
        if mismatch is None:
            raise
        raise FormatError(
            checkpoints,
            "pipeline",
            f"the weights of the model in {probe.method_name} config.yml",
            f"'{mismatch.group(1)}' of another shape ({mismatch.group(2).strip()[:200]})",
        ) from None
    check_state(
        Path(path), config.method_name or "this", _saved_state_shapes(Path(path)), state_shapes(pipeline.state_dict())
    )
    return config, pipeline, Path(path), int(step)
