"""Refining frames with a trained refiner: a folder of images or a video in, PNGs (and an mp4) out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from sahs_nerfstudio.errors import FormatError, flag_error
from sahs_nerfstudio.refinement.audio import assign_audio_rows, check_audio_row, load_audio_windows
from sahs_nerfstudio.refinement.checkpoints import network_config_from_dict, read_checkpoint
from sahs_nerfstudio.refinement.io import VIDEO_SUFFIXES, list_images, load_image, save_png
from sahs_nerfstudio.refinement.networks import RefinerNetwork
from sahs_nerfstudio.refinement.runtime import progress_bar, resolve_device
from sahs_nerfstudio.utils.images import to_uint8


@dataclass
class LoadedRefiner:
    """A refiner ready for inference."""

    model: RefinerNetwork
    """The network, in eval mode on ``device``."""
    identity_features: list[Tensor]
    """The identity photo's features, encoded once."""
    checkpoint: dict[str, Any]
    """The checkpoint it was loaded from."""
    device: torch.device
    """Where the network runs."""
    path: Path
    """The checkpoint file."""

    @property
    def is_audio(self) -> bool:
        return self.model.config.audio

    @torch.no_grad()
    def refine(
        self, render: Float[Tensor, "*batch 3 H W"], audio: Float[Tensor, "*batch window C"] | None = None
    ) -> Float[Tensor, "*batch 3 H W"]:
        """Render(s) in [0, 1] -> refined, same shape, clamped."""
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
        first = str(exc).strip().splitlines()[0]
        raise FormatError(checkpoint, "model", "weights matching its network_config", first[:160]) from None
    model.to(dev).eval()
    identity = state["identity"].float().div(255.0).to(dev)
    with torch.no_grad():
        feats = model.encode_identity(identity[None])
    return LoadedRefiner(model=model, identity_features=feats, checkpoint=state, device=dev, path=Path(checkpoint))


def audio_windows_for(refiner: LoadedRefiner, audio: Path | None) -> np.ndarray | None:
    """The audio windows an audio-variant refiner needs (``None`` for the identity-only variant)."""
    if not refiner.is_audio:
        if audio is not None:
            raise FormatError(audio, "--audio", f"no audio: {refiner.path} is not an audio-variant refiner", "a file")
        return None
    if audio is None:
        raise FormatError(refiner.path, "--audio", "FEATURES.npy (this is an audio-variant refiner)", "none given")
    cfg = refiner.model.config
    return load_audio_windows(audio, cfg.audio_window, cfg.audio_dim)


def _check_video(source: Path) -> None:
    """Opens the video once, so a broken file fails before anything is written."""
    import av

    try:
        with av.open(str(source)) as container:
            if not container.streams.video:
                raise FormatError(source, "--input", "a video with a video stream", "no video stream")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise FormatError(source, "--input", "a readable video", f"{type(exc).__name__}: {exc}") from None


def iter_input_frames(source: Path) -> Iterator[tuple[str, int, Float[Tensor, "3 H W"]]]:
    """Yields ``(name, audio_row, frame)`` for a folder of images or a video file."""
    source = Path(source)
    if source.is_dir():
        images = list_images(source, "--input")
        rows = assign_audio_rows(list(images), 1 << 62, source)
        for (name, path), row in zip(images.items(), rows, strict=True):
            yield name, row, load_image(path)
    elif source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        import av

        from sahs_nerfstudio.utils.video import read_video_frames

        _check_video(source)
        try:
            for index, frame in read_video_frames(source):
                yield f"{index:05d}", index, torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
        except (av.FFmpegError, OSError) as exc:  # a body that stops decoding after a readable header
            raise FormatError(source, "--input", "a readable video", f"{type(exc).__name__}: {exc}") from None
    elif source.exists():
        raise FormatError(source, "--input", f"a folder of images or a video ({', '.join(VIDEO_SUFFIXES)})", "a file")
    else:
        raise FormatError(source, "--input", "a folder of images or a video", "no such file or folder")


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
    if fps is not None and not fps > 0:
        raise flag_error("--fps", "a positive frame rate", fps)
    if video is not None and Path(video).is_dir():
        raise FormatError(video, "--video", "an mp4 file name", "a folder")
    refiner = load_refiner(checkpoint, device)
    windows = audio_windows_for(refiner, audio)
    source = Path(source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        _check_video(source)
    if video is not None and fps is None:
        fps = 25.0
        if source.is_file():
            from sahs_nerfstudio.utils.video import video_fps

            fps = video_fps(source) or 25.0
    written: list[Path] = []
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FormatError(output_dir, "--output", "a folder for the refined frames", "a file")
    output_dir.mkdir(parents=True, exist_ok=True)

    def frames() -> Iterator[np.ndarray]:
        with progress_bar(show_progress) as progress:
            task = progress.add_task("refining", total=None, loss="-")
            for name, row, image in iter_input_frames(source):
                aud = None
                if windows is not None:
                    check_audio_row(audio or "--audio", len(windows), name, row)
                    aud = torch.from_numpy(windows[row])
                out = to_uint8(refiner.refine(image, aud).permute(1, 2, 0))
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
