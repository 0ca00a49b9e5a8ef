"""``sahs-synth``: write the procedural talking subject in the NeRFace and AD-NeRF layouts.

Examples::

    sahs-synth --output data/synthetic                       # 128x128, 150 train + 15 held-out frames
    sahs-synth --output data/synthetic512 --resolution 512 --preview docs/synthetic_preview.png
    python -m sahs_nerfstudio.scripts.synth --help
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import (
    adnerf_image_path,
    adnerf_mask_path,
    nerface_image_path,
    nerface_mask_path,
    read_adnerf_split,
    read_nerface_split,
    read_rgb,
    write_rgb,
)
from sahs_nerfstudio.data.synthetic import SubjectSummary, SyntheticConfig, generate_subject
from sahs_nerfstudio.errors import run_cli


@dataclass
class SynthCommand(SyntheticConfig):
    """Generate the synthetic talking subject (every field of SyntheticConfig, plus a preview)."""

    preview: Path | None = None
    """Also write a preview PNG (a few frames above their 12-class masks) to this path."""


def save_preview(output: Path, path: Path, num_frames: int = 4, min_tile: int = 256) -> Path:
    """Tile ``num_frames`` evenly spaced frames of a generated subject: images above, masks below.

    Reads ``<output>/nerface`` (or ``<output>/adnerf`` when only that layout exists) through the
    format readers; tiles are enlarged (nearest neighbour) to at least ``min_tile`` pixels high.
    """
    output = Path(output)
    images, masks = [], []
    nerface, adnerf = output / "nerface", output / "adnerf"
    if (nerface / "transforms_train.json").is_file():
        frames = []
        for split in ("train", "test"):
            frames += [fr.file_path for fr in read_nerface_split(nerface, split).frames]
        for k in np.linspace(0, len(frames) - 1, num_frames).round().astype(int):
            images.append(read_rgb(nerface_image_path(nerface, frames[k])))
            masks.append(read_rgb(nerface_mask_path(nerface, frames[k])))
    elif (adnerf / "transforms_train.json").is_file():
        ids = [fr.img_id for split in ("train", "val") for fr in read_adnerf_split(adnerf, split).frames]
        for k in np.linspace(0, len(ids) - 1, num_frames).round().astype(int):
            images.append(read_rgb(adnerf_image_path(adnerf, ids[k])))
            masks.append(read_rgb(adnerf_mask_path(adnerf, ids[k])))
    else:
        raise FileNotFoundError(f"no generated subject under {output} (expected nerface/ or adnerf/)")
    grid = np.concatenate([np.concatenate(images, axis=1), np.concatenate(masks, axis=1)], axis=0)
    scale = max(1, int(np.ceil(min_tile / images[0].shape[0])))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    write_rgb(path, grid)
    return path


def print_summary(summary: SubjectSummary) -> None:
    from rich.table import Table

    console = CONSOLE
    table = Table(title=f"Synthetic subject in {summary.output}", show_header=True)
    table.add_column("layout")
    table.add_column("split")
    table.add_column("frames", justify="right")
    for layout, splits in summary.splits.items():
        for split, count in splits.items():
            table.add_row(layout, split, str(count))
    console.print(table)
    classes = Table(title="Classes (fraction of all pixels)", show_header=True)
    classes.add_column("idx", justify="right")
    classes.add_column("class")
    classes.add_column("fraction", justify="right")
    for k, name in enumerate(sem.CLASS_NAMES):
        frac = summary.class_fractions.get(name, 0.0)
        classes.add_row(str(k), name, f"{frac:.4f}" if frac > 0 else "[red]absent[/red]")
    console.print(classes)
    console.print(
        f"{summary.width}x{summary.height} pixels, {summary.num_frames} frames "
        f"({summary.num_train} train + {summary.num_test} held-out: "
        f"frames {summary.held_out[0]}..{summary.held_out[-1]}, "
        f"{summary.novel_fraction:.0%} of them novel expression combinations), {summary.seconds:.1f} s"
    )
    for note in summary.notes():
        console.print(f"[yellow]note:[/yellow] {note}")


def main(command: SynthCommand) -> SubjectSummary:
    summary = generate_subject(command)
    print_summary(summary)
    if command.preview is not None:
        path = save_preview(summary.output, command.preview)
        CONSOLE.print(f"preview written to {path}")
    return summary


def entrypoint() -> None:
    """The ``sahs-synth`` console script; bad flags end with one line and status 2."""
    tyro.extras.set_accent_color("bright_yellow")
    command = tyro.cli(SynthCommand, description=__doc__)

    def run() -> None:
        main(command)

    sys.exit(run_cli(run, "sahs-synth"))


if __name__ == "__main__":
    entrypoint()
