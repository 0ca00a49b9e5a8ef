"""Training the refiner on (Stage-I render, ground truth) pairs: schedule, data, loop, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sahs_nerfstudio.checkpoint_io import write_checkpoint
from sahs_nerfstudio.errors import FormatError, flag_error
from sahs_nerfstudio.refinement.audio import assign_audio_rows, load_audio_windows
from sahs_nerfstudio.refinement.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    best_checkpoint_path,
    checkpoint_path,
    find_latest_checkpoint,
    jsonable,
    network_config_from_dict,
    network_differences,
    prune_checkpoints,
    read_checkpoint,
    remove_stale_temporaries,
)
from sahs_nerfstudio.refinement.io import FramePair, load_image, pair_frames
from sahs_nerfstudio.refinement.networks import RefinerNetwork, RefinerNetworkConfig
from sahs_nerfstudio.refinement.runtime import progress_bar, resolve_device
from sahs_nerfstudio.utils import metrics


@dataclass
class RefinerTrainConfig:
    """Stage II training schedule. Defaults suit a CPU and the residual refiner (synthetic subject, 64x64,
    60 frames: held-out PSNR 18.4 -> 19.3 dB on a 150-step ``sahs-fast``, 17.0 -> 17.8 dB on a 50-step
    ``sahs``, in about a minute of one core); the published schedule is ``epochs=100, decay_epochs=None,
    lr=1e-4`` with the published network."""

    network: RefinerNetworkConfig = field(default_factory=RefinerNetworkConfig)
    """Refiner architecture."""
    epochs: int = 6
    """Epochs at constant learning rate (published 80-100)."""
    decay_epochs: int | None = 2
    """Epochs with the learning rate decayed linearly towards 0 after ``epochs``; ``None`` means as many as ``epochs`` (the published schedule)."""
    lr: float = 1e-3
    """Adam learning rate (published 1e-4: the residual refiner starts at the identity and tolerates a larger step)."""
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
    validation_fraction: float = 0.1
    """Fraction of the training pairs held out of training (the last ones by name: a contiguous stretch of the video, at least one frame) and scored after every epoch. The epoch with the best validation PSNR is kept as ``checkpoints/best.ckpt`` and is what training returns; for the residual refiner the untrained identity (epoch 0) competes too, so the result is never worse than the Stage-I renders on these frames. 0: train on every pair and return the last epoch."""
    patience: int | None = 3
    """Stop once this many epochs in a row have not raised the best validation PSNR (None: run every epoch)."""
    time_budget_s: float | None = None
    """Stop after the first epoch that ends past this many seconds of training in this call (None: no limit); with validation the best epoch so far is still what is returned."""

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.epochs if self.decay_epochs is None else self.decay_epochs)


def check_train_config(config: RefinerTrainConfig) -> None:
    """Refuses values the schedule cannot run with (a FormatError naming the flag) before any work."""
    checks: list[tuple[str, bool, str, Any]] = [
        ("--epochs", config.epochs >= 0, "an integer >= 0", config.epochs),
        (
            "--decay-epochs",
            config.decay_epochs is None or config.decay_epochs >= 0,
            "None or >= 0",
            config.decay_epochs,
        ),
        ("--lr", math.isfinite(config.lr) and config.lr > 0, "a positive learning rate", config.lr),
        ("--betas", all(0.0 <= b < 1.0 for b in config.betas), "two values in [0, 1)", config.betas),
        ("--batch-size", config.batch_size >= 1, "an integer >= 1", config.batch_size),
        ("--num-workers", config.num_workers >= 0, "an integer >= 0", config.num_workers),
        ("--keep-checkpoints", config.keep_checkpoints >= 1, "an integer >= 1", config.keep_checkpoints),
        (
            "--validation-fraction",
            0.0 <= config.validation_fraction < 1.0,
            "a fraction in [0, 1)",
            config.validation_fraction,
        ),
        ("--patience", config.patience is None or config.patience >= 1, "None or an integer >= 1", config.patience),
        (
            "--time-budget-s",
            config.time_budget_s is None or config.time_budget_s > 0,
            "None or a positive number of seconds",
            config.time_budget_s,
        ),
    ]
    for flag, ok, expected, found in checks:
        if not ok:
            raise flag_error(flag, expected, found)
    net = config.network
    if net.architecture not in ("residual", "published"):
        raise flag_error("--network.architecture", "residual or published", net.architecture)
    if net.residual_output and net.architecture != "published":
        raise flag_error("--network.residual-output", "only with --network.architecture published", True)
    if net.blend_mask and net.architecture != "residual":
        raise flag_error("--network.blend-mask", "only with --network.architecture residual", True)
    if len(net.channels) != 3 or min(net.channels) < 1:
        raise flag_error("--network.channels", "three positive channel counts", net.channels)
    for flag, value in (("--network.spade-hidden", net.spade_hidden), ("--network.audio-dim", net.audio_dim)):
        if value < 1:
            raise flag_error(flag, "a positive integer", value)
    if net.audio and (net.audio_window < 1 or net.audio_code_dim < 1 or not net.audio_conv_channels):
        raise flag_error(
            "--network.audio-*",
            "a positive window and code size and at least one conv layer",
            f"window {net.audio_window}, code {net.audio_code_dim}, conv {net.audio_conv_channels}",
        )


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: 1 for ``epochs`` epochs, then linear towards 0.

    Epoch ``epochs + k`` (k = 0 .. decay_epochs-1) gets ``1 - (k + 1) / (decay_epochs + 1)``.
    """
    if epoch < epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs + 1) / (decay_epochs + 1))


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
        found = ", ".join(f"{s[2]}x{s[1]}" for s in sorted(sizes))
        raise flag_error("--batch-size", "1 for frames of different sizes", found)
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass
class TrainResult:
    """What :func:`train_refiner` did."""

    checkpoint: Path | None
    """The checkpoint to use: ``checkpoints/best.ckpt`` with validation, else the latest."""
    epoch_losses: list[float]
    """Mean training MSE of every epoch so far (including epochs of earlier, resumed runs)."""
    start_epoch: int
    """Epoch training (re)started from (0 for a fresh run)."""
    epochs_run: int
    """Epochs run by this call."""
    latest_checkpoint: Path | None = None
    """The checkpoint of the last epoch run (what a rerun resumes from)."""
    best_epoch: int | None = None
    """Epoch of ``checkpoint`` by validation PSNR (0: the untrained residual refiner, the identity); None without validation."""
    val_psnrs: list[float] = field(default_factory=list)
    """Validation PSNR after every epoch so far (with validation; the residual refiner's list starts with epoch 0)."""


def _resume_state(output_dir: Path, wanted: RefinerNetworkConfig) -> tuple[Path | None, dict[str, Any] | None]:
    """The latest checkpoint of ``output_dir`` (checked against ``wanted``), or ``(None, None)``."""
    remove_stale_temporaries(output_dir)
    latest = find_latest_checkpoint(output_dir)
    if latest is None:
        return None, None
    state = read_checkpoint(latest)
    diffs = network_differences(network_config_from_dict(state["network_config"]), wanted)
    if diffs:
        raise FormatError(
            latest,
            "network_config",
            "the --network.* options of this run (or another --output)",
            f"another network config: {'; '.join(diffs)}",
        )
    return latest, state


def _identity_photo(state: dict[str, Any] | None, identity: Path | None, pairs: list[FramePair]) -> tuple[Tensor, str]:
    """The identity photo as uint8 ``[3, H, W]`` and where it came from (a resumed run keeps its own)."""
    if state is not None:
        return state["identity"], state.get("identity_source", "checkpoint")
    path = Path(identity) if identity is not None else pairs[0].gt
    if not path.is_file():
        raise FormatError(path, "--identity", "an image file", "no such file")
    return (load_image(path) * 255).round().byte(), str(path)


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
    check_train_config(config)
    output_dir = Path(output_dir)
    device = resolve_device(config.device)
    pairs, ignored = pair_frames(renders_dir, gt_dir)
    latest, state = _resume_state(output_dir, config.network)
    net_config = config.network

    audio_windows: np.ndarray | None = None
    if net_config.audio:
        if audio is None:
            raise flag_error("--audio", "FEATURES.npy for --network.audio", "none given")
        audio_windows = load_audio_windows(audio, net_config.audio_window, net_config.audio_dim)
        rows = assign_audio_rows([p.name for p in pairs], len(audio_windows), audio)
        for pair, row in zip(pairs, rows, strict=True):
            pair.audio_row = row
    elif audio is not None:
        raise FormatError(audio, "--audio", "no audio without --network.audio (the identity-only refiner)", "a file")
    identity_u8, identity_source = _identity_photo(state, identity, pairs)
    train_pairs, val_pairs = split_validation(pairs, config.validation_fraction)

    torch.manual_seed(config.seed)
    model = RefinerNetwork(net_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(float(config.betas[0]), float(config.betas[1]))
    )
    epoch_losses: list[float] = []
    val_psnrs: list[float] = []
    best_epoch: int | None = None
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        epoch_losses = [float(x) for x in state.get("epoch_losses", [])]
        val_psnrs = [float(x) for x in state.get("val_psnrs", [])]
        best_epoch = state.get("best_epoch")
    experiment_name = experiment_name or (state or {}).get("experiment_name") or output_dir.resolve().name

    total = config.total_epochs
    decay = total - config.epochs
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(
        json.dumps(
            {
                "train": jsonable(asdict(config)),
                "network": jsonable(asdict(net_config)),
                "renders": str(renders_dir),
                "ground_truth": str(gt_dir),
                "identity": identity_source,
                "audio": None if audio is None else str(audio),
                "validation": [p.name for p in val_pairs],
            },
            indent=2,
        )
    )
    identity_img = identity_u8.float().div(255.0)[None].to(device)
    validate = _Validator(val_pairs, audio_windows, identity_img, device) if val_pairs else None
    best_path = best_checkpoint_path(output_dir)

    def payload(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "experiment_name": experiment_name,
            "network_config": jsonable(asdict(net_config)),
            "train_config": jsonable(asdict(config)),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "total_epochs": total,
            "epoch_losses": epoch_losses,
            "val_psnrs": val_psnrs,
            "best_epoch": best_epoch,
            "identity": identity_u8.cpu(),
            "identity_source": identity_source,
            "num_pairs": len(train_pairs),
        }

    def result(latest_ckpt: Path | None, epochs_run: int) -> TrainResult:
        use = best_path if validate is not None and best_path.is_file() else latest_ckpt
        return TrainResult(
            checkpoint=use,
            epoch_losses=epoch_losses,
            start_epoch=start_epoch,
            epochs_run=epochs_run,
            latest_checkpoint=latest_ckpt,
            best_epoch=best_epoch if validate is not None else None,
            val_psnrs=val_psnrs,
        )

    if validate is not None and start_epoch == 0 and net_config.architecture == "residual":
        # the untrained residual refiner is the identity: the score to beat is the Stage-I renders' own
        val_psnrs.append(validate(model))
        best_epoch = 0
        write_checkpoint(payload(0), best_path)
    if state is not None:
        CONSOLE.print(f"Resuming from {latest} (epoch {start_epoch}/{total})")
    if start_epoch >= total or _out_of_patience(config, val_psnrs, best_epoch, start_epoch):
        CONSOLE.print(f"Already trained for {start_epoch} epochs (schedule {total}); nothing to do.")
        return result(latest, 0)
    CONSOLE.print(
        f"Training the refiner ({net_config.architecture}) on {len(train_pairs)} pairs"
        + (f", validating on {len(val_pairs)}" if val_pairs else "")
        + (f" ({ignored} ground-truth frames without a render ignored)" if ignored else "")
        + f", {total} epochs ({config.epochs} constant + {decay} decayed), device {device}"
    )

    dataset = _PairDataset(train_pairs, audio_windows)
    log_path = output_dir / "train_log.jsonl"
    latest_ckpt = latest
    epoch = start_epoch
    started = time.time()
    model.train()
    with progress_bar(show_progress) as progress:
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
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": mean_loss, "lr": lr}
            if validate is not None:
                val_psnrs.append(validate(model))
                record["val_psnr"] = val_psnrs[-1]
                if best_epoch is None or val_psnrs[-1] > max(val_psnrs[:-1], default=-math.inf):
                    best_epoch = epoch + 1
                    write_checkpoint(payload(epoch + 1), best_path)
            latest_ckpt = checkpoint_path(output_dir, epoch + 1)
            write_checkpoint(payload(epoch + 1), latest_ckpt)
            prune_checkpoints(output_dir, config.keep_checkpoints)
            record["seconds"] = round(time.time() - t0, 3)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            val = f"  val PSNR {record['val_psnr']:.2f} (best epoch {best_epoch})" if "val_psnr" in record else ""
            CONSOLE.print(
                f"epoch {epoch + 1:4d}/{total}  loss {mean_loss:.6f}  lr {lr:.2e}{val}  {time.time() - t0:.1f}s"
            )
            if _out_of_patience(config, val_psnrs, best_epoch, epoch + 1):
                CONSOLE.print(f"No validation gain for {config.patience} epochs: stopping (best epoch {best_epoch}).")
                break
            if config.time_budget_s is not None and time.time() - started > config.time_budget_s:
                CONSOLE.print(f"Time budget of {config.time_budget_s:g} s spent: stopping after epoch {epoch + 1}.")
                break
    final = result(latest_ckpt, epoch + 1 - start_epoch)
    CONSOLE.print(f"Saved {final.checkpoint}")
    return final


def split_validation(pairs: list[FramePair], fraction: float) -> tuple[list[FramePair], list[FramePair]]:
    """``(train, validation)``: the last ``fraction`` of the pairs (at least one) when there are two or more.

    The last frames rather than a sample of them: neighbouring video frames are nearly identical, so
    a contiguous stretch is the closer stand-in for frames the refiner has not seen.
    """
    if fraction <= 0 or len(pairs) < 2:
        return list(pairs), []
    n_val = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    return list(pairs[:-n_val]), list(pairs[-n_val:])


def _out_of_patience(config: RefinerTrainConfig, val_psnrs: list[float], best_epoch: int | None, epoch: int) -> bool:
    """Whether ``config.patience`` epochs in a row up to ``epoch`` brought no new best validation PSNR."""
    if config.patience is None or best_epoch is None or not val_psnrs:
        return False
    return epoch - best_epoch >= config.patience


class _Validator:
    """Mean PSNR of the refined validation frames, clamped and rounded to 8 bit as they are written."""

    def __init__(
        self, pairs: list[FramePair], audio: np.ndarray | None, identity: Tensor, device: torch.device
    ) -> None:
        self.items = [(load_image(p.render)[None].to(device), load_image(p.gt)[None].to(device)) for p in pairs]
        self.audio = [
            None if audio is None or p.audio_row is None else torch.from_numpy(audio[p.audio_row]) for p in pairs
        ]
        self.identity = identity
        self.device = device

    @torch.no_grad()
    def __call__(self, model: RefinerNetwork) -> float:
        model.eval()
        scores = []
        for (render, gt), aud in zip(self.items, self.audio, strict=True):
            a = None if aud is None else aud[None].to(self.device)
            refined = model(render, self.identity, a).mul(255).round().div(255)
            scores.append(float(metrics.psnr(refined, gt)))
        model.train()
        return float(np.mean(scores))
