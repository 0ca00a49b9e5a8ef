"""Stage-I renders of a trained SAHS run, with their ground truth, as the refiner's PNG folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.refinement.io import save_png
from sahs_nerfstudio.refinement.runtime import progress_bar
from sahs_nerfstudio.utils.images import to_uint8

# One run at a time: rendering the train and the eval split loads the pipeline once.
_STAGE_ONE_CACHE: dict[str, Any] = {}


def _stage_one_pipeline(config_path: Path) -> Any:
    """The run's pipeline (evaluation splits loaded), cached by config path."""
    key = str(Path(config_path).resolve())
    if key not in _STAGE_ONE_CACHE:
        from sahs_nerfstudio.utils.run_loader import load_run  # imports all of nerfstudio: only when rendering

        _, pipeline, _, _ = load_run(Path(config_path), test_mode="test")
        _STAGE_ONE_CACHE.clear()
        _STAGE_ONE_CACHE[key] = pipeline
    return _STAGE_ONE_CACHE[key]


def release_stage_one_pipeline() -> None:
    """Frees the Stage-I pipeline cached by :func:`render_stage_one` (and its GPU memory)."""
    _STAGE_ONE_CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reusable_names(out_dir: Path) -> list[str] | None:
    """The frames of a previous render of this split, when its manifest lists only frames on disk."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        names = json.loads(manifest.read_text())["names"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not names:
        return None
    on_disk = all(
        (out_dir / "renders" / f"{n}.png").is_file() and (out_dir / "gt" / f"{n}.png").is_file() for n in names
    )
    return names if on_disk else None


def render_stage_one(config_path: Path, split: Literal["train", "eval"], out_dir: Path) -> tuple[Path, Path]:
    """Renders a split of a trained Stage-I SAHS run, with its ground truth, as PNG folders.

    Writes ``<out_dir>/renders/<name>.png`` and ``<out_dir>/gt/<name>.png`` (``name`` = the
    dataset image stem, prefixed by its index if stems repeat) and ``<out_dir>/manifest.json``.
    Frames already on disk are reused; when the manifest lists only frames present on disk,
    the pipeline is not even loaded; a loaded pipeline is cached for the next split (free it with
    :func:`release_stage_one_pipeline`). Another method's run is refused before anything is
    built (nerfstudio's own models would fetch LPIPS weights from the internet).

    Returns:
        ``(renders_dir, gt_dir)``.
    """
    out_dir = Path(out_dir)
    renders_dir, gt_dir = out_dir / "renders", out_dir / "gt"
    names = _reusable_names(out_dir)
    if names is not None:
        CONSOLE.print(f"Reusing {len(names)} Stage-I {split} renders in {out_dir}")
        return renders_dir, gt_dir

    pipeline = _stage_one_pipeline(Path(config_path))
    datamanager = pipeline.datamanager
    dataset = datamanager.train_dataset if split == "train" else getattr(datamanager, "eval_dataset", None)
    if dataset is None:
        raise FormatError(config_path, "--load-config", f"a run whose data manager has a {split} split", "none")
    cameras = dataset.cameras
    stems = [Path(p).stem for p in dataset.image_filenames]
    names = stems if len(set(stems)) == len(stems) else [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    device = pipeline.device
    with progress_bar(True) as progress:
        task = progress.add_task(f"Stage-I {split} renders", total=len(names), loss="-")
        for i, name in enumerate(names):
            r_path, g_path = renders_dir / f"{name}.png", gt_dir / f"{name}.png"
            if not r_path.is_file():
                with torch.no_grad():
                    outputs = pipeline.model.get_outputs_for_camera(cameras[i : i + 1].to(device))
                save_png(r_path, to_uint8(outputs["rgb"][..., :3]))
            if not g_path.is_file():
                save_png(g_path, to_uint8(dataset.get_data(i)["image"][..., :3]))
            progress.update(task, advance=1)
    (out_dir / "manifest.json").write_text(
        json.dumps({"config": str(config_path), "split": split, "names": names}, indent=2)
    )
    return renders_dir, gt_dir
