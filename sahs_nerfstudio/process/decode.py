"""Stage 1: decode a video with PyAV into square frames at a constant rate and a 16 kHz mono wav.

Variable frame rates are resampled to the target rate by nearest source frame: output frame ``k``
(time ``k / fps`` from the first frame) shows the source frame nearest in time. The audio track is
aligned to the first video frame (padded with silence or trimmed) so audio window ``k`` and frame
``k`` describe the same instant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
from jaxtyping import UInt8

from sahs_nerfstudio.data.audio import FEATURE_SAMPLE_RATE
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.process.images import write_jpeg


@dataclass
class DecodeInfo:
    """What the decode stage wrote (stored as ``decode.json`` in the work folder)."""

    num_frames: int
    fps: float
    width: int
    height: int
    source_width: int
    source_height: int
    source_frames: int
    """Frames decoded from the file (before resampling to ``fps``)."""
    has_audio: bool
    audio_seconds: float
    crop: str = "centre"
    """How frames were cut: ``face`` (``crop_box``), ``centre`` or ``none``."""
    crop_box: Optional[List[int]] = None
    """``[x, y, side]`` of the face crop in source pixels."""
    decode_errors: List[str] = field(default_factory=list)
    """Where a damaged file stopped decoding (video or sound) and what was kept: one line each, said once."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def load(path: Path) -> "DecodeInfo":
        return DecodeInfo(**json.loads(path.read_text()))


@dataclass
class CropBox:
    """A square ``[y, y + side) x [x, x + side)`` of the source frame, pixels (see :mod:`.framing`)."""

    x: int
    y: int
    side: int

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[self.y : self.y + self.side, self.x : self.x + self.side]


def frame_path(frames_dir: Path, index: int) -> Path:
    """The work folder's copy of decoded frame ``index``."""
    return frames_dir / f"{index:06d}.jpg"


def square_crop_resize(
    rgb: UInt8[np.ndarray, "H W 3"], size: int, crop: bool, box: Optional[CropBox] = None
) -> UInt8[np.ndarray, "h w 3"]:
    """Cut ``box`` out, or centre-crop to a square (``crop``), then scale the shorter side to ``size``
    (0 keeps the size)."""
    import cv2

    if box is not None:
        rgb = box.apply(rgb)
    h, w = rgb.shape[:2]
    if crop and h != w:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        rgb = rgb[y0 : y0 + side, x0 : x0 + side]
        h, w = side, side
    if size <= 0 or min(h, w) == size:
        return np.ascontiguousarray(rgb)
    scale = size / min(h, w)
    new = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, new, interpolation=interp)


def open_video(path: Path):
    import av

    if not path.is_file():
        raise FormatError(path, "<file>", "a video file", "no such file")
    if path.stat().st_size == 0:
        raise FormatError(path, "<file>", "a video file", "an empty file (0 bytes)")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as err:  # type: ignore[attr-defined]
        raise FormatError(path, "<file>", "a video PyAV can read", f"{type(err).__name__}: {err}") from None


def resampled_frames(
    path: Path, fps: float, errors: Optional[List[str]] = None
) -> Iterator[Tuple[UInt8[np.ndarray, "H W 3"], int]]:
    """Source frames at a constant ``fps`` (nearest in time), with the count of source frames so far. A decode
    error after the first frame ends the stream there: what decoded is kept and one line saying where goes to
    ``errors``."""
    import av

    container = open_video(path)
    try:
        if not container.streams.video:
            kinds = [s.type for s in container.streams] or ["none"]
            raise FormatError(path, "<video stream>", "a video stream", f"streams: {', '.join(kinds)}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else fps
        prev: Optional[np.ndarray] = None
        prev_t = t0 = 0.0
        k = count = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else count / rate
                rgb = frame.to_ndarray(format="rgb24")
                if prev is None:
                    t0 = t
                else:
                    mid = 0.5 * (prev_t + t) - t0
                    while k / fps < mid:
                        yield prev, count + 1  # the frame just decoded counts too
                        k += 1
                prev, prev_t = rgb, t
                count += 1
        except av.error.FFmpegError as err:  # type: ignore[attr-defined]
            if prev is None:
                raise FormatError(path, "<frames>", "decodable video frames", f"{type(err).__name__}: {err}") from None
            if errors is not None:
                errors.append(
                    f"{path.name}: the video stopped decoding after {prev_t - t0 + 1.0 / rate:.2f} s ({count} frames; "
                    f"{type(err).__name__}: {err}); the frames before it are kept"
                )
        if prev is not None:
            end = prev_t - t0 + 1.0 / rate
            while k / fps < end - 1e-6:
                yield prev, count
                k += 1
    finally:
        container.close()


def decode_audio(path: Path, video_start: float = 0.0, errors: Optional[List[str]] = None) -> Optional[np.ndarray]:
    """The first audio track as mono float32 at 16 kHz aligned to ``video_start``; None without one. A decode error
    ends the track there: what decoded is kept and one line saying where goes to ``errors``."""
    import av

    container = open_video(path)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=FEATURE_SAMPLE_RATE)
        chunks = []
        start: Optional[float] = None
        try:
            for frame in container.decode(stream):
                if start is None and frame.time is not None:
                    start = float(frame.time)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:  # type: ignore[attr-defined]
            if errors is not None:  # a damaged tail: keep what decoded, and say so
                kept = sum(c.shape[0] for c in chunks) / FEATURE_SAMPLE_RATE
                errors.append(
                    f"{path.name}: the sound stopped decoding after {kept:.2f} s ({type(err).__name__}: {err}); "
                    "the sound before it is kept"
                )
        if not chunks:
            return None
        samples = np.concatenate(chunks).astype(np.float32)
        offset = int(round(((start or 0.0) - video_start) * FEATURE_SAMPLE_RATE))
        if offset > 0:
            samples = np.concatenate([np.zeros(offset, np.float32), samples])
        elif offset < 0:
            samples = samples[-offset:]
        return samples if samples.size else None
    finally:
        container.close()


def video_start(path: Path) -> float:
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        if stream.start_time is None or stream.time_base is None:
            return 0.0
        return float(stream.start_time * stream.time_base)
    finally:
        container.close()


def decode(
    video: Path,
    frames_dir: Path,
    audio_path: Path,
    size: int = 512,
    crop: bool = True,
    fps: float = 25.0,
    min_seconds: float = 1.0,
    on_frame: Optional[Callable[[int], None]] = None,
    box: Optional[CropBox] = None,
) -> DecodeInfo:
    """Write ``frames_dir/<k>.jpg`` at ``fps`` and, when the video has sound, ``audio_path`` (16 kHz wav);
    frames are cut to ``box`` when given, else centre-cropped to a square when ``crop``."""
    import soundfile

    if fps <= 0:
        raise FormatError(video, "--fps", "a positive frame rate", repr(fps))
    frames_dir.mkdir(parents=True, exist_ok=True)
    num = source = 0
    src_shape = (0, 0)
    out_shape = (0, 0)
    errors: List[str] = []
    for rgb, count in resampled_frames(video, fps, errors):
        source = count
        src_shape = rgb.shape[:2]
        small = square_crop_resize(rgb, size, crop, box)
        out_shape = small.shape[:2]
        # Replaced, not overwritten: a layout may hold a hard link to the previous run's frame.
        write_jpeg(frame_path(frames_dir, num), small)
        num += 1
        if on_frame is not None:
            on_frame(num)
    if num == 0:
        raise FormatError(video, "<frames>", "at least one video frame", "0 frames (a zero-length video)")
    min_frames = int(np.ceil(min_seconds * fps))
    if num < min_frames:
        raise FormatError(
            video,
            "<duration>",
            f"at least {min_seconds:g} s ({min_frames} frames at {fps:g} fps, --min-seconds)",
            f"{num / fps:.2f} s ({num} frames)",
        )
    samples = decode_audio(video, video_start(video), errors)
    if samples is not None:
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(audio_path), samples, FEATURE_SAMPLE_RATE, subtype="PCM_16")
    return DecodeInfo(
        num_frames=num,
        fps=float(fps),
        width=int(out_shape[1]),
        height=int(out_shape[0]),
        source_width=int(src_shape[1]),
        source_height=int(src_shape[0]),
        source_frames=int(source),
        has_audio=samples is not None,
        audio_seconds=0.0 if samples is None else samples.shape[0] / FEATURE_SAMPLE_RATE,
        crop="face" if box is not None else ("centre" if crop else "none"),
        crop_box=None if box is None else [box.x, box.y, box.side],
        decode_errors=errors,
    )
