"""Stage II library: training, checkpoints, refining frames, evaluation and Stage-I rendering.

Data: pairs (Stage-I render, ground-truth frame) from two folders, matched by file *stem*
(``renders/0001.png`` pairs with ``gt/0001.jpg``). Every render needs a ground-truth frame;
extra ground-truth frames are ignored (a GT folder may hold the whole video). Each pair must
have one size; different pairs may differ (batch 1, the published setting).

Checkpoints (``<output>/checkpoints/epoch-NNNN.ckpt``) are written every epoch to a temporary
file and renamed, so an interruption never leaves a broken one; training resumes from the
latest. A checkpoint holds the network config and the identity photo, so refining needs only
the checkpoint.

Audio variant: audio features come from a ``.npy`` holding either windows ``[N, window, C]``
(AD-NeRF ``aud.npy``) or per-frame features ``[N, C]`` / ``[N, k, C]`` (flattened to ``k*C``),
windowed here (centred, edge-padded). Frame -> row: the integer value of the frame's file stem
when every stem is an integer (AD-NeRF names frames by their index), else the frame's position
in sorted order; video input: the frame index.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from sahs_nerfstudio.refinement.networks import RefinerNetwork, RefinerNetworkConfig
from sahs_nerfstudio.utils.checkpoints import numpy_safe_globals

CONSOLE = Console(width=120)

CHECKPOINT_FORMAT = "sahs-refiner"
CHECKPOINT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class RefinementError(ValueError):
    """A user-facing problem with the refiner's inputs (one line, naming the file or field)."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class RefinerTrainConfig:
    """Stage II training schedule (published values as defaults)."""

    network: RefinerNetworkConfig = field(default_factory=RefinerNetworkConfig)
    """Refiner architecture."""
    epochs: int = 100
    """Epochs at constant learning rate (published 80-100). Small values (e.g. 3) suit a CPU run on the synthetic subject."""
    decay_epochs: int | None = None
    """Epochs with the learning rate decayed linearly towards 0 after ``epochs``; ``None`` means as many as ``epochs`` (the published schedule)."""
    lr: float = 1e-4
    """Adam learning rate."""
    betas: tuple[float, float] = (0.0, 0.999)
    """Adam betas."""
    batch_size: int = 1
    """Frames per step (published 1; >1 needs every frame to have one size)."""
    seed: int = 0
    """Seed of the weight initialisation and of the per-epoch shuffling (resuming reproduces the same order)."""
    num_workers: int = 2
    """DataLoader worker processes that decode images (0 = in the main process)."""
    device: str = "auto"
    """Torch device: ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    keep_checkpoints: int = 1
    """How many of the most recent per-epoch checkpoints to keep (at least 1)."""

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.epochs if self.decay_epochs is None else self.decay_epochs)


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: 1 for ``epochs`` epochs, then linear towards 0.

    Epoch ``epochs + k`` (k = 0 .. decay_epochs-1) gets ``1 - (k + 1) / (decay_epochs + 1)``.
    """
    if epoch < epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs + 1) / (decay_epochs + 1))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RefinementError(f"device: '{device}' requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------------
# Images and folders


def list_images(folder: Path, what: str) -> dict[str, Path]:
    """Maps stem -> path for the images in ``folder``; errors name the folder and ``what`` it is."""
    folder = Path(folder)
    if not folder.exists():
        raise RefinementError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise RefinementError(f"{what}: {folder} is not a folder")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in images:
                raise RefinementError(
                    f"{what}: {folder} holds two images named '{path.stem}' ({images[path.stem].name}, {path.name})"
                )
            images[path.stem] = path
    if not images:
        raise RefinementError(f"{what}: folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return dict(sorted(images.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(stem: str) -> tuple[int, Any]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decode)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001 - PIL raises several types
        raise RefinementError(f"{path}: not a readable image ({exc})") from None


def load_image(path: Path) -> Tensor:
    """Image file -> float tensor ``[3, H, W]`` in [0, 1] (greyscale expanded, alpha dropped)."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise RefinementError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def to_uint8(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``HxWx3`` uint8 (rounded)."""
    return (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()).copy()


def save_png(path: Path, image: np.ndarray) -> None:
    """Writes a PNG atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


@dataclass
class FramePair:
    """One training/evaluation pair."""

    name: str
    """File stem shared by the render and the ground truth."""
    render: Path
    gt: Path
    audio_row: int | None = None
    """Row of the audio feature array for this frame (audio variant)."""


def pair_frames(renders_dir: Path, gt_dir: Path) -> tuple[list[FramePair], int]:
    """Matches renders to ground-truth frames by stem and checks sizes.

    Returns the pairs (sorted by name) and the number of ground-truth frames without a render.
    """
    renders = list_images(renders_dir, "renders")
    gts = list_images(gt_dir, "ground-truth")
    missing = [name for name in renders if name not in gts]
    if missing:
        example = ", ".join(renders[n].name for n in missing[:3])
        raise RefinementError(
            f"render/ground-truth name mismatch: {len(missing)} of {len(renders)} renders in {renders_dir} have no "
            f"ground-truth frame with the same name in {gt_dir} (e.g. {example})"
        )
    pairs = []
    for name, render_path in renders.items():
        rs, gs = image_size(render_path), image_size(gts[name])
        if rs != gs:
            raise RefinementError(
                f"image size mismatch: {render_path} is {rs[0]}x{rs[1]} but {gts[name]} is {gs[0]}x{gs[1]}"
            )
        pairs.append(FramePair(name=name, render=render_path, gt=gts[name]))
    return pairs, len(gts) - len(pairs)


# ----------------------------------------------------------------------------------------------
# Audio features


def load_audio_windows(path: Path, window: int, audio_dim: int) -> np.ndarray:
    """Loads audio features as windows ``[N, window, audio_dim]`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise RefinementError(f"audio: file {path} does not exist")
    try:
        arr = np.load(path)
    except Exception as exc:  # noqa: BLE001
        raise RefinementError(f"audio: {path} is not a .npy array ({exc})") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[1] == window:
        windows = arr
    else:
        if arr.ndim == 3:
            arr = arr.reshape(arr.shape[0], -1)
        if arr.ndim != 2:
            raise RefinementError(f"audio: {path}: expected [N, {window}, C], [N, C] or [N, k, C], found {arr.shape}")
        half = window // 2
        padded = np.concatenate([np.repeat(arr[:1], half, 0), arr, np.repeat(arr[-1:], window - half, 0)], 0)
        idx = np.arange(arr.shape[0])[:, None] + np.arange(window)[None, :]
        windows = padded[idx]
    if windows.shape[2] != audio_dim:
        raise RefinementError(
            f"audio: {path}: features have {windows.shape[2]} channels but the refiner's audio_dim is {audio_dim}"
        )
    return windows


def assign_audio_rows(names: Sequence[str], num_rows: int, source: str) -> list[int]:
    """Audio row per frame: integer stems when all stems are integers, else sorted position."""
    rows = [int(n) for n in names] if names and all(n.isdigit() for n in names) else list(range(len(names)))
    bad = [(n, r) for n, r in zip(names, rows, strict=True) if r >= num_rows]
    if bad:
        raise RefinementError(
            f"audio: {source} has {num_rows} rows but frame '{bad[0][0]}' needs row {bad[0][1]} "
            f"({len(bad)} frames out of range)"
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    """Latest ``epoch-NNNN.ckpt`` in ``<output_dir>/checkpoints`` (``None`` if there is none)."""
    ckpts = sorted(checkpoint_dir(output_dir).glob("epoch-*.ckpt"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Loads and validates a refiner checkpoint (clear error if it is something else)."""
    path = Path(path)
    if not path.is_file():
        raise RefinementError(f"checkpoint: file {path} does not exist")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise RefinementError(f"checkpoint: {path} is not a refiner checkpoint (not a torch.save file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        reason = reason or next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RefinementError(f"checkpoint: {path} is not a refiner checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format", "no 'format' key") if isinstance(state, dict) else type(state).__name__
        raise RefinementError(f"checkpoint: {path} is not a refiner checkpoint (format: {found})")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise RefinementError(f"checkpoint: {path} has version {state.get('version')}, newer than supported")
    return state


def network_config_from_dict(values: dict[str, Any]) -> RefinerNetworkConfig:
    known = set(RefinerNetworkConfig.__dataclass_fields__)
    kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    return RefinerNetworkConfig(**kwargs)


@dataclass
class LoadedRefiner:
    """A refiner ready for inference."""

    model: RefinerNetwork
    identity_features: list[Tensor]
    checkpoint: dict[str, Any]
    device: torch.device
    path: Path

    @property
    def is_audio(self) -> bool:
        return self.model.config.audio

    @torch.no_grad()
    def refine(self, render: Tensor, audio: Tensor | None = None) -> Tensor:
        """``[3, H, W]`` or ``[B, 3, H, W]`` render in [0, 1] -> refined, same shape, clamped."""
        single = render.ndim == 3
        x = render[None] if single else render
        a = None if audio is None else (audio[None] if audio.ndim == 2 else audio).to(self.device)
        out = self.model(x.to(self.device), self.identity_features, a)
        return out[0] if single else out


def load_refiner(checkpoint: Path, device: str = "auto") -> LoadedRefiner:
    """Builds the network of a checkpoint, loads its weights and encodes its identity photo once."""
    state = read_checkpoint(checkpoint)
    dev = resolve_device(device)
    config = network_config_from_dict(state["network_config"])
    model = RefinerNetwork(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RefinementError(f"checkpoint: {checkpoint}: weights do not match its network config ({exc})") from None
    model.to(dev).eval()
    identity = state["identity"].float().div(255.0).to(dev)
    with torch.no_grad():
        feats = model.encode_identity(identity[None])
    return LoadedRefiner(model=model, identity_features=feats, checkpoint=state, device=dev, path=Path(checkpoint))


# ----------------------------------------------------------------------------------------------
# Training


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: Sequence[FramePair], audio: np.ndarray | None) -> None:
        self.pairs = list(pairs)
        self.audio = audio

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        pair = self.pairs[index]
        item = {"render": load_image(pair.render), "gt": load_image(pair.gt), "index": torch.tensor(index)}
        if self.audio is not None:
            assert pair.audio_row is not None
            item["audio"] = torch.from_numpy(self.audio[pair.audio_row])
        return item


def _collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    sizes = {tuple(it["render"].shape) for it in items}
    if len(sizes) > 1:
        raise RefinementError(f"batch_size: frames of different sizes {sorted(sizes)} cannot share a batch; use 1")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass
class TrainResult:
    """What :func:`train_refiner` did."""

    checkpoint: Path | None
    """Latest checkpoint after training."""
    epoch_losses: list[float]
    """Mean training MSE of every epoch so far (including epochs of earlier, resumed runs)."""
    start_epoch: int
    """Epoch training (re)started from (0 for a fresh run)."""
    epochs_run: int
    """Epochs run by this call."""


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        disable=not enabled,
        transient=True,
    )


def _network_differences(a: RefinerNetworkConfig, b: RefinerNetworkConfig) -> list[str]:
    da, db = asdict(a), asdict(b)
    return [f"{k}={db[k]!r} (checkpoint: {da[k]!r})" for k in da if tuple_or(da[k]) != tuple_or(db[k])]


def tuple_or(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def train_refiner(
    renders_dir: Path,
    gt_dir: Path,
    output_dir: Path,
    config: RefinerTrainConfig | None = None,
    identity: Path | None = None,
    audio: Path | None = None,
    show_progress: bool = True,
    experiment_name: str | None = None,
) -> TrainResult:
    """Trains (or resumes training of) the refiner on (render, ground truth) pairs.

    Args:
        renders_dir: Folder of Stage-I renders.
        gt_dir: Folder of ground-truth frames with the same file stems (extras ignored).
        output_dir: Receives ``checkpoints/``, ``train_log.jsonl`` and ``config.json``.
        config: Training schedule and network; published values by default.
        identity: Identity photo; default the first ground-truth frame of the pairs (sorted
            by name). Stored in the checkpoint. On resume the stored photo is used.
        audio: Audio features ``.npy`` (audio variant only).
        show_progress: Show a rich progress bar.
        experiment_name: Stored in checkpoints and eval JSON; default the output folder name.

    Returns:
        A :class:`TrainResult`.
    """
    config = config or RefinerTrainConfig()
    output_dir = Path(output_dir)
    if config.epochs < 0 or (config.decay_epochs is not None and config.decay_epochs < 0):
        raise RefinementError(f"epochs: must be >= 0, found epochs={config.epochs} decay_epochs={config.decay_epochs}")
    if config.batch_size < 1:
        raise RefinementError(f"batch_size: must be >= 1, found {config.batch_size}")
    device = resolve_device(config.device)
    pairs, ignored = pair_frames(renders_dir, gt_dir)

    for stale in checkpoint_dir(output_dir).glob(".epoch-*.ckpt.tmp"):  # left by an interrupted save
        stale.unlink(missing_ok=True)
    latest = find_latest_checkpoint(output_dir)
    state: dict[str, Any] | None = read_checkpoint(latest) if latest is not None else None
    net_config = config.network
    if state is not None:
        saved = network_config_from_dict(state["network_config"])
        diffs = _network_differences(saved, net_config)
        if diffs:
            raise RefinementError(
                f"resume: {latest} was trained with another network config ({'; '.join(diffs)}); "
                f"use the same --network.* options or another --output"
            )
        net_config = saved

    audio_windows: np.ndarray | None = None
    if net_config.audio:
        if audio is None:
            raise RefinementError("audio: the audio variant (--network.audio) needs --audio FEATURES.npy")
        audio_windows = load_audio_windows(audio, net_config.audio_window, net_config.audio_dim)
        rows = assign_audio_rows([p.name for p in pairs], len(audio_windows), str(audio))
        for pair, row in zip(pairs, rows, strict=True):
            pair.audio_row = row
    elif audio is not None:
        raise RefinementError("audio: --audio given but the refiner is not the audio variant (add --network.audio)")

    if state is not None:
        identity_u8: Tensor = state["identity"]
        identity_source = state.get("identity_source", "checkpoint")
    else:
        identity_path = Path(identity) if identity is not None else pairs[0].gt
        if not identity_path.is_file():
            raise RefinementError(f"identity: file {identity_path} does not exist")
        identity_u8 = (load_image(identity_path) * 255).round().byte()
        identity_source = str(identity_path)

    torch.manual_seed(config.seed)
    model = RefinerNetwork(net_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(float(config.betas[0]), float(config.betas[1]))
    )
    epoch_losses: list[float] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        epoch_losses = [float(x) for x in state.get("epoch_losses", [])]
    experiment_name = experiment_name or (state or {}).get("experiment_name") or output_dir.resolve().name

    total = config.total_epochs
    decay = total - config.epochs
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(
        json.dumps(
            {
                "train": _jsonable(asdict(config)),
                "network": _jsonable(asdict(net_config)),
                "renders": str(renders_dir),
                "ground_truth": str(gt_dir),
                "identity": identity_source,
                "audio": None if audio is None else str(audio),
            },
            indent=2,
        )
    )
    if state is not None:
        CONSOLE.print(f"Resuming from {latest} (epoch {start_epoch}/{total})")
    if start_epoch >= total:
        CONSOLE.print(f"Already trained for {start_epoch} epochs (>= {total}); nothing to do.")
        return TrainResult(checkpoint=latest, epoch_losses=epoch_losses, start_epoch=start_epoch, epochs_run=0)
    CONSOLE.print(
        f"Training the refiner on {len(pairs)} pairs"
        + (f" ({ignored} ground-truth frames without a render ignored)" if ignored else "")
        + f", {total} epochs ({config.epochs} constant + {decay} decayed), device {device}"
    )

    dataset = _PairDataset(pairs, audio_windows)
    identity_img = identity_u8.float().div(255.0)[None].to(device)
    log_path = output_dir / "train_log.jsonl"
    latest_ckpt = latest
    model.train()
    with _progress(show_progress) as progress:
        for epoch in range(start_epoch, total):
            lr = config.lr * lr_factor(epoch, config.epochs, decay)
            for group in optimizer.param_groups:
                group["lr"] = lr
            gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
            order = torch.randperm(len(dataset), generator=gen).tolist()
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=config.batch_size,
                sampler=order,
                num_workers=config.num_workers,
                collate_fn=_collate,
                persistent_workers=False,
            )
            task = progress.add_task(f"epoch {epoch + 1}/{total}", total=len(loader), loss="-")
            running, count, t0 = 0.0, 0, time.time()
            for batch in loader:
                render = batch["render"].to(device, non_blocking=True)
                gt = batch["gt"].to(device, non_blocking=True)
                aud = batch["audio"].to(device) if "audio" in batch else None
                out = model(render, identity_img, aud, clamp=False)
                loss = F.mse_loss(out, gt)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise RuntimeError(f"training diverged at epoch {epoch + 1}: loss {value}")
                running += value * render.shape[0]
                count += render.shape[0]
                progress.update(task, advance=1, loss=f"{running / count:.5f}")
            progress.remove_task(task)
            mean_loss = running / max(count, 1)
            epoch_losses.append(mean_loss)
            latest_ckpt = checkpoint_dir(output_dir) / f"epoch-{epoch + 1:04d}.ckpt"
            save_checkpoint(
                latest_ckpt,
                {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "experiment_name": experiment_name,
                    "network_config": _jsonable(asdict(net_config)),
                    "train_config": _jsonable(asdict(config)),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "total_epochs": total,
                    "epoch_losses": epoch_losses,
                    "identity": identity_u8.cpu(),
                    "identity_source": identity_source,
                    "num_pairs": len(pairs),
                },
            )
            _prune_checkpoints(output_dir, config.keep_checkpoints)
            record = {"epoch": epoch + 1, "loss": mean_loss, "lr": lr, "seconds": round(time.time() - t0, 3)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            CONSOLE.print(f"epoch {epoch + 1:4d}/{total}  loss {mean_loss:.6f}  lr {lr:.2e}  {time.time() - t0:.1f}s")
    CONSOLE.print(f"Saved {latest_ckpt}")
    return TrainResult(
        checkpoint=latest_ckpt, epoch_losses=epoch_losses, start_epoch=start_epoch, epochs_run=total - start_epoch
    )


def _prune_checkpoints(output_dir: Path, keep: int) -> None:
    ckpts = sorted(checkpoint_dir(output_dir).glob("epoch-*.ckpt"))
    for old in ckpts[: max(0, len(ckpts) - max(1, keep))]:
        old.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------
# Refining frames


def iter_input_frames(source: Path) -> Iterator[tuple[str, int, Tensor]]:
    """Yields ``(name, audio_row, [3, H, W] float)`` for a folder of images or a video file."""
    source = Path(source)
    if source.is_dir():
        images = list_images(source, "input")
        rows = assign_audio_rows(list(images), 1 << 62, str(source))
        for (name, path), row in zip(images.items(), rows, strict=True):
            yield name, row, load_image(path)
    elif source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        from sahs_nerfstudio.utils.video import read_video_frames

        for index, frame in read_video_frames(source):
            yield f"{index:05d}", index, torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
    elif source.exists():
        raise RefinementError(
            f"input: {source} is neither a folder of images nor a video ({', '.join(VIDEO_SUFFIXES)})"
        )
    else:
        raise RefinementError(f"input: {source} does not exist")


def refine_frames(
    checkpoint: Path,
    source: Path,
    output_dir: Path,
    video: Path | None = None,
    fps: float | None = None,
    audio: Path | None = None,
    device: str = "auto",
    show_progress: bool = True,
) -> list[Path]:
    """Refines every frame of a folder or video; writes ``<output_dir>/<name>.png`` (and an mp4).

    Args:
        checkpoint: Refiner checkpoint.
        source: Folder of images or a video file.
        output_dir: Receives one PNG per frame (folder input: same stems; video: ``00000.png``...).
        video: Optional mp4 of the refined frames.
        fps: Frame rate of ``video``; default the input video's rate, else 25.
        audio: Audio features ``.npy`` (audio variant only).
        device: Torch device.
        show_progress: Show a rich progress bar.

    Returns:
        The written PNG paths, in order.
    """
    refiner = load_refiner(checkpoint, device)
    cfg = refiner.model.config
    windows = None
    if refiner.is_audio:
        if audio is None:
            raise RefinementError(f"audio: {checkpoint} is an audio-variant refiner; pass --audio FEATURES.npy")
        windows = load_audio_windows(audio, cfg.audio_window, cfg.audio_dim)
    source = Path(source)
    if video is not None and fps is None:
        fps = 25.0
        if source.is_file():
            from sahs_nerfstudio.utils.video import video_fps

            fps = video_fps(source) or 25.0
    written: list[Path] = []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    def frames() -> Iterator[np.ndarray]:
        with _progress(show_progress) as progress:
            task = progress.add_task("refining", total=None, loss="-")
            for name, row, image in iter_input_frames(source):
                aud = None
                if windows is not None:
                    if row >= len(windows):
                        raise RefinementError(
                            f"audio: {audio} has {len(windows)} rows but frame '{name}' needs row {row}"
                        )
                    aud = torch.from_numpy(windows[row])
                out = to_uint8(refiner.refine(image, aud))
                path = output_dir / f"{name}.png"
                save_png(path, out)
                written.append(path)
                progress.update(task, advance=1)
                yield out

    if video is not None:
        from sahs_nerfstudio.utils.video import write_video

        write_video(video, frames(), fps=float(fps or 25.0))
    else:
        for _ in frames():
            pass
    CONSOLE.print(f"Wrote {len(written)} refined frames to {output_dir}" + (f" and {video}" if video else ""))
    return written


# ----------------------------------------------------------------------------------------------
# Evaluation


def _lpips_metric(device: torch.device) -> tuple[torch.nn.Module | None, str | None]:
    """LPIPS (AlexNet) only if every weight file is already on disk; else ``(None, reason)``."""
    import torchmetrics.functional.image.lpips as tm_lpips

    from sahs_nerfstudio.utils.lpips import alexnet_weights_path, make_lpips

    backbone = alexnet_weights_path()
    head = Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"
    if not head.is_file():
        return None, f"LPIPS skipped: the LPIPS AlexNet head {head} is missing (offline; nothing is downloaded)"
    if not backbone.is_file():
        return None, f"LPIPS skipped: AlexNet weights not found at {backbone} (offline; nothing is downloaded)"
    metric = make_lpips()
    if metric is None:
        return None, f"LPIPS skipped: AlexNet weights not found at {backbone}"
    return metric.to(device).eval(), None


def evaluate_refiner(
    checkpoint: Path,
    renders_dir: Path,
    gt_dir: Path,
    output_json: Path | None = None,
    audio: Path | None = None,
    device: str = "auto",
    lpips: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """PSNR / SSIM / LPIPS of the renders and of the refined renders against the ground truth.

    Refined frames are scored after rounding to 8 bit, i.e. exactly as :func:`refine_frames`
    writes them. Metrics are per-image means (like ``ns-eval``); full frame, nothing pasted.

    Returns (and writes to ``output_json`` if given) ``{"experiment_name", "method_name":
    "sahs-refine", "checkpoint", "results": {"psnr_before", "psnr_after", "ssim_before",
    "ssim_after", ["lpips_before", "lpips_after",] "num_images"}}``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    refiner = load_refiner(checkpoint, device)
    pairs, _ = pair_frames(renders_dir, gt_dir)
    windows = None
    if refiner.is_audio:
        if audio is None:
            raise RefinementError(f"audio: {checkpoint} is an audio-variant refiner; pass --audio FEATURES.npy")
        cfg = refiner.model.config
        windows = load_audio_windows(audio, cfg.audio_window, cfg.audio_dim)
        for pair, row in zip(pairs, assign_audio_rows([p.name for p in pairs], len(windows), str(audio)), strict=True):
            pair.audio_row = row
    lpips_metric, skip_reason = _lpips_metric(refiner.device) if lpips else (None, "LPIPS disabled")
    if skip_reason and lpips:
        CONSOLE.print(f"[yellow]{escape(skip_reason)}", soft_wrap=True)
    sums: dict[str, float] = {}
    with _progress(show_progress) as progress:
        task = progress.add_task("evaluating", total=len(pairs), loss="-")
        for pair in pairs:
            render = load_image(pair.render).to(refiner.device)[None]
            gt = load_image(pair.gt).to(refiner.device)[None]
            aud = None if windows is None else torch.from_numpy(windows[pair.audio_row])
            refined = refiner.refine(render, aud).mul(255).round().div(255)
            for tag, pred in (("before", render), ("after", refined)):
                scores = {
                    "psnr": float(peak_signal_noise_ratio(pred, gt, data_range=1.0)),
                    "ssim": float(structural_similarity_index_measure(pred, gt, data_range=1.0)),  # type: ignore[arg-type]
                }
                if lpips_metric is not None:
                    with torch.no_grad():
                        scores["lpips"] = float(lpips_metric(pred, gt))
                for key, value in scores.items():
                    sums[f"{key}_{tag}"] = sums.get(f"{key}_{tag}", 0.0) + value
            progress.update(task, advance=1)
    order = ["psnr_before", "psnr_after", "ssim_before", "ssim_after", "lpips_before", "lpips_after"]
    results: dict[str, Any] = {k: sums[k] / len(pairs) for k in order if k in sums}
    results["num_images"] = len(pairs)
    report: dict[str, Any] = {
        "experiment_name": refiner.checkpoint.get("experiment_name", Path(checkpoint).parent.parent.name),
        "method_name": "sahs-refine",
        "checkpoint": str(checkpoint),
        "results": results,
    }
    if skip_reason and lpips:
        report["lpips_skipped"] = skip_reason
    if output_json is not None:
        output_json = Path(output_json)
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------------------------
# Stage-I renders from a trained nerfstudio run


_STAGE_ONE_CACHE: dict[str, Any] = {}


def _load_stage_one_pipeline(config_path: Path) -> Any:
    """``eval_setup`` of a nerfstudio run, cached so rendering several splits loads it once."""
    key = str(Path(config_path).resolve())
    if key in _STAGE_ONE_CACHE:
        return _STAGE_ONE_CACHE[key]
    import pickle

    from nerfstudio.utils.eval_utils import eval_setup

    # nerfstudio 1.1.5 checkpoints hold numpy scalars, which torch >= 2.6's weights-only torch.load
    # refuses (ns-eval / ns-render fail the same way): allow exactly those numpy types.
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            _, pipeline, _, _ = eval_setup(Path(config_path), test_mode="test")
    except pickle.UnpicklingError as exc:
        first = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise RefinementError(
            f"load-config: the checkpoint of {config_path} needs an unsafe unpickling ({first}); if you trust it, "
            f"rerun with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"
        ) from None
    _STAGE_ONE_CACHE.clear()
    _STAGE_ONE_CACHE[key] = pipeline
    return pipeline


def release_stage_one_pipeline() -> None:
    """Frees the Stage-I pipeline cached by :func:`render_stage_one` (and its GPU memory)."""
    _STAGE_ONE_CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def render_stage_one(config_path: Path, split: Literal["train", "eval"], out_dir: Path) -> tuple[Path, Path]:
    """Renders a split of a trained Stage-I nerfstudio run, with its ground truth, as PNG folders.

    Writes ``<out_dir>/renders/<name>.png`` and ``<out_dir>/gt/<name>.png`` (``name`` = the
    dataset image stem, prefixed by its index if stems repeat) and ``<out_dir>/manifest.json``.
    Frames already on disk are reused; when the manifest lists only frames present on disk,
    the pipeline is not even loaded; a loaded pipeline is cached for the next split (free it with
    :func:`release_stage_one_pipeline`). Written generically against the nerfstudio API (works for
    any ray-based method whose model outputs ``"rgb"``).

    Returns:
        ``(renders_dir, gt_dir)``.
    """
    out_dir = Path(out_dir)
    renders_dir, gt_dir = out_dir / "renders", out_dir / "gt"
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text())["names"]
        except (ValueError, KeyError):
            names = None
        if names and all((renders_dir / f"{n}.png").is_file() and (gt_dir / f"{n}.png").is_file() for n in names):
            CONSOLE.print(f"Reusing {len(names)} Stage-I {split} renders in {out_dir}")
            return renders_dir, gt_dir
    config_path = Path(config_path)
    if not config_path.is_file():
        raise RefinementError(f"load-config: file {config_path} does not exist")

    pipeline = _load_stage_one_pipeline(config_path)
    datamanager = pipeline.datamanager
    dataset = datamanager.train_dataset if split == "train" else getattr(datamanager, "eval_dataset", None)
    if dataset is None:
        raise RefinementError(f"load-config: {config_path}: the data manager has no {split} dataset")
    cameras = dataset.cameras
    stems = [Path(p).stem for p in dataset.image_filenames]
    names = stems if len(set(stems)) == len(stems) else [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    device = pipeline.device
    with _progress(True) as progress:
        task = progress.add_task(f"Stage-I {split} renders", total=len(names), loss="-")
        for i, name in enumerate(names):
            r_path, g_path = renders_dir / f"{name}.png", gt_dir / f"{name}.png"
            if not r_path.is_file():
                with torch.no_grad():
                    outputs = pipeline.model.get_outputs_for_camera(cameras[i : i + 1].to(device))
                save_png(r_path, to_uint8(outputs["rgb"][..., :3].permute(2, 0, 1)))
            if not g_path.is_file():
                gt = dataset.get_data(i)["image"][..., :3]
                save_png(g_path, to_uint8(gt.permute(2, 0, 1)))
            progress.update(task, advance=1)
    manifest.write_text(json.dumps({"config": str(config_path), "split": split, "names": names}, indent=2))
    return renders_dir, gt_dir
