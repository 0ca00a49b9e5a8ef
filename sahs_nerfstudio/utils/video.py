"""Writing and reading mp4 video in-process with PyAV (no ``ffmpeg`` executable needed).

:func:`write_video` encodes H.264 (``libx264``, ``yuv420p``) from any iterable of frames, so a
driven renderer can stream frames into it one by one, and optionally muxes a mono audio track
(AAC). H.264 in ``yuv420p`` needs an even width and height: odd sizes are padded by one
replicated row/column at the bottom/right (never resized), and the padding is reported in the
returned :class:`VideoInfo`.

:func:`read_video_frames` decodes an mp4 (or any container PyAV reads) into ``uint8`` RGB frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["VideoInfo", "write_video", "read_video_frames", "video_fps"]


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`write_video` wrote."""

    path: Path
    """The mp4 file."""
    num_frames: int
    """Number of video frames encoded."""
    width: int
    """Encoded width (even; the input width plus ``pad_right``)."""
    height: int
    """Encoded height (even; the input height plus ``pad_bottom``)."""
    pad_right: int
    """Columns replicated on the right to make the width even (0 or 1)."""
    pad_bottom: int
    """Rows replicated at the bottom to make the height even (0 or 1)."""
    fps: Fraction
    """Frame rate written into the stream."""
    audio_seconds: float | None
    """Duration of the muxed audio in seconds, or ``None`` when no audio was written."""


def _as_uint8_rgb(frame: np.ndarray, index: int) -> np.ndarray:
    """Validates one frame and returns it as contiguous ``uint8`` ``HxWx3``."""
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"write_video: frame {index}: expected an HxWx3 array, found shape {tuple(arr.shape)}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"write_video: frame {index}: expected dtype uint8 (or float in [0, 1]), found {arr.dtype}")
    return np.ascontiguousarray(arr)


def _as_mono_float(audio: np.ndarray) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"write_video: audio: expected a mono 1-D array of samples, found shape {tuple(arr.shape)}")
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    else:
        raise ValueError(f"write_video: audio: expected float samples in [-1, 1] (or int16), found {arr.dtype}")
    return np.clip(arr, -1.0, 1.0)


def write_video(
    path: Union[str, Path],
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    crf: int = 18,
    preset: str = "medium",
    audio_bit_rate: int = 128_000,
) -> VideoInfo:
    """Encodes frames (and optionally a mono audio track) into an mp4.

    Args:
        path: Output file; parent folders are created. Written to a temporary name and renamed
            at the end, so an interrupted call never leaves a truncated file at ``path``.
        frames: Iterable (list, generator, ...) of ``HxWx3`` ``uint8`` frames (``float`` in
            [0, 1], greyscale ``HxW`` and ``HxWx4`` (alpha dropped) are accepted too). All frames
            must have the size of the first one. Consumed lazily, one frame at a time.
        fps: Frame rate (may be fractional, e.g. 29.97).
        audio: Optional mono samples (float in [-1, 1], or int16), muxed as AAC. Written in full,
            interleaved with the video by timestamp; not trimmed to the video length.
        sample_rate: Sample rate of ``audio`` in Hz; required when ``audio`` is given.
        crf: libx264 constant rate factor (lower = better quality, 18 is visually lossless).
        preset: libx264 speed preset.
        audio_bit_rate: AAC bit rate in bit/s.

    Returns:
        A :class:`VideoInfo` describing what was written.

    Raises:
        ValueError: no frames, frames of different sizes, bad dtype/shape, bad fps, or audio
            without a sample rate.
        IsADirectoryError: ``path`` is an existing folder (checked before any frame is encoded).
    """
    import av

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"write_video: {path} is a folder, not the path of a video file")
    if not fps or fps <= 0:
        raise ValueError(f"write_video: fps must be positive, found {fps}")
    rate = _frame_rate(float(fps))
    audio_arr: np.ndarray | None = None
    if audio is not None:
        if sample_rate is None or int(sample_rate) <= 0:
            raise ValueError("write_video: sample_rate (Hz) is required when audio is given")
        audio_arr = _as_mono_float(audio)
        sample_rate = int(sample_rate)

    iterator = iter(frames)
    try:
        first = _as_uint8_rgb(next(iterator), 0)
    except StopIteration:
        raise ValueError(f"write_video: {path}: no frames to write") from None
    height, width = first.shape[:2]
    pad_bottom, pad_right = height % 2, width % 2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.tmp{path.suffix or '.mp4'}")
    container = av.open(str(tmp_path), mode="w", format="mp4" if path.suffix.lower() in ("", ".mp4") else None)
    num_frames = 0
    audio_seconds: float | None = None
    try:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width = width + pad_right
        vstream.height = height + pad_bottom
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": str(crf), "preset": preset}

        astream = None
        fifo = None
        audio_pos = 0  # next sample index of audio_arr to hand to the encoder
        if audio_arr is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
            astream.bit_rate = audio_bit_rate
            fifo = av.AudioFifo()

        def push_audio_until(seconds: float | None) -> None:
            """Encodes audio up to ``seconds`` (all remaining audio when ``None``)."""
            nonlocal audio_pos
            if astream is None or fifo is None or audio_arr is None:
                return
            assert sample_rate is not None
            end = len(audio_arr) if seconds is None else min(len(audio_arr), int(round(seconds * sample_rate)))
            if end > audio_pos:
                chunk = audio_arr[audio_pos:end][None, :]
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = audio_pos
                aframe.time_base = Fraction(1, sample_rate)
                fifo.write(aframe)
                audio_pos = end
            frame_size = astream.codec_context.frame_size or 1024
            final = seconds is None
            while fifo.samples >= frame_size or (final and fifo.samples > 0):
                out = fifo.read(min(frame_size, fifo.samples) if final else frame_size)
                if out is None:
                    break
                if out.format.name != "fltp":
                    out = _to_fltp(out)
                for packet in astream.encode(out):
                    container.mux(packet)

        def encode_frame(arr: np.ndarray) -> None:
            nonlocal num_frames
            if pad_bottom or pad_right:
                arr = np.pad(arr, ((0, pad_bottom), (0, pad_right), (0, 0)), mode="edge")
            vframe = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vframe.pts = num_frames
            vframe.time_base = 1 / rate
            for packet in vstream.encode(vframe):
                container.mux(packet)
            num_frames += 1
            push_audio_until(num_frames / float(rate))

        encode_frame(first)
        for index, raw in enumerate(iterator, start=1):
            arr = _as_uint8_rgb(raw, index)
            if arr.shape[:2] != (height, width):
                raise ValueError(
                    f"write_video: frame {index}: size {arr.shape[1]}x{arr.shape[0]} differs from the first "
                    f"frame's {width}x{height}"
                )
            encode_frame(arr)
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None and audio_arr is not None:
            push_audio_until(None)
            for packet in astream.encode(None):
                container.mux(packet)
            assert sample_rate is not None
            audio_seconds = len(audio_arr) / sample_rate
        container.close()
        tmp_path.replace(path)
    except BaseException:
        container.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return VideoInfo(
        path=path,
        num_frames=num_frames,
        width=width + pad_right,
        height=height + pad_bottom,
        pad_right=pad_right,
        pad_bottom=pad_bottom,
        fps=rate,
        audio_seconds=audio_seconds,
    )


def _frame_rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction; NTSC rates given as decimals (29.97, 59.94, 23.976) snap to n*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(float(fps) * 1.001)
    if abs(float(fps) - ntsc * 1000 / 1001) < 5e-3 and abs(float(fps) - round(float(fps))) > 1e-6:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(float(fps)).limit_denominator(1001)


def _to_fltp(frame):
    """Converts a packed-float audio frame to the planar float layout the AAC encoder wants."""
    import av

    arr = frame.to_ndarray().reshape(1, -1).astype(np.float32)
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format="fltp", layout="mono")
    out.sample_rate = frame.sample_rate
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


def video_fps(path: Union[str, Path]) -> float | None:
    """Returns the average frame rate of the first video stream, or ``None`` if unknown."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def read_video_frames(path: Union[str, Path]) -> Iterator[tuple[int, np.ndarray]]:
    """Decodes the first video stream of ``path`` into ``(index, HxWx3 uint8 RGB)`` pairs."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            yield index, frame.to_ndarray(format="rgb24")
