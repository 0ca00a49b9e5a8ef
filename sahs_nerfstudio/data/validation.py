"""Up-front checks of a subject that the readers of single files cannot make: across frames and splits.

Run by the dataparser before anything is cached or trained, from file headers and the JSON files
only (cheap at any number of frames); the full decode of every image and mask happens once, when
the frame cache reads them (:func:`sahs_nerfstudio.data.formats.read_rgb` refuses a truncated or
corrupt file there), so nothing is decoded twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.errors import FormatError

FRAME_MODES = {("R", "G", "B"): "RGB", ("L",): "greyscale", ("P",): "palette colour"}
"""Image kinds a frame may be (all frames alike): what Pillow decodes losslessly to R, G, B without an alpha
channel. An alpha channel would be dropped silently, so RGBA frames are refused."""


def _describe(bands: Tuple[str, ...]) -> str:
    return f"{len(bands)} channel(s) {''.join(bands)}"


def check_frame_files(
    images: Sequence[Path], masks: Sequence[Optional[Path]], size: Tuple[int, int], load_semantics: bool
) -> None:
    """Every frame of one kind and size, and a mask (of its size) for every frame or for none."""
    first_bands: Optional[Tuple[str, ...]] = None
    for k, image in enumerate(images):
        isize, bands = formats.image_info(image, f"frames[{k}] image")
        if bands not in FRAME_MODES:
            raise FormatError(
                image, "<channels>", "3 channels R, G, B (no alpha: composite it first)", _describe(bands)
            )
        if first_bands is None:
            first_bands = bands
        elif bands != first_bands:
            raise FormatError(image, "<channels>", f"{_describe(first_bands)} like frame 0", _describe(bands))
        if isize != tuple(size):
            raise FormatError(image, "<image size>", f"{size[0]}x{size[1]} like frame 0", f"{isize[0]}x{isize[1]}")
    have = [k for k, m in enumerate(masks) if m is not None]
    if load_semantics and 0 < len(have) < len(masks):
        missing = next(k for k, m in enumerate(masks) if m is None)
        raise FormatError(
            images[missing],
            "<mask>",
            f"a mask for every frame or for none ({len(have)} of {len(masks)} frames have one)",
            f"no mask for frame {missing}",
        )
    for k in have:
        mask = masks[k]
        assert mask is not None
        msize, _ = formats.image_info(mask, f"frames[{k}] mask")
        if msize != tuple(size):
            raise FormatError(mask, "<mask size>", f"{size[0]}x{size[1]} like its image", f"{msize[0]}x{msize[1]}")


def check_nerface_code_widths(root: Path) -> None:
    """Every NeRFace split present has the expression width of ``transforms_train.json`` (else training
    would fail at its first evaluation, thousands of steps later)."""
    train = formats.read_nerface_split(root, "train")
    width = int(train.frames[0].expression.shape[0])
    for split in formats.NERFACE_SPLITS[1:]:
        path = formats.nerface_transforms_path(root, split)
        if not path.is_file():
            continue
        other = formats.read_nerface_split(root, split)
        found = int(other.frames[0].expression.shape[0])
        if found != width:
            raise FormatError(path, "frames[0].expression", f"{width} values like transforms_train.json", f"{found}")


def check_pixel_principal_point(path: Path, cx: float, cy: float, size: Tuple[int, int]) -> None:
    """AD-NeRF's ``cx``, ``cy`` are pixels inside the image; fractions (both <= 1) are refused as such."""
    width, height = size
    if max(abs(cx), abs(cy)) <= 1.0 < min(width, height):
        raise FormatError(path, "cx/cy", f"pixels (the image is {width}x{height})", f"cx={cx:g}, cy={cy:g} (fractions)")
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        raise FormatError(
            path, "cx/cy", f"pixels inside the {width}x{height} image", f"cx={cx:g}, cy={cy:g} (outside the image)"
        )


def report_clamped_audio(path: Path, table: Path, num_clamped: int, num_windows: int) -> None:
    """The one warning for trailing frames whose ``aud_id`` was clamped to the last window."""
    if num_clamped:
        CONSOLE.print(
            f"warning: {num_clamped} trailing frame(s) of {path} have an aud_id past the last of the {num_windows} "
            f"windows of {table.name}: clamped to window {num_windows - 1}, as AD-NeRF does",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
