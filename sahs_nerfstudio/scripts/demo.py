"""``sahs-demo``: the README's main job on the built-in synthetic subject, on a CPU.

Generates the synthetic talking head (if absent), trains ``sahs`` with the CPU preset, evaluates
the held-out split (novel expressions) and renders it to a video with ground truth and semantics
side by side. Every step is an ordinary nerfstudio step; the equivalent commands are printed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject


@dataclass
class DemoConfig:
    """Train and render SAHS on the synthetic subject with CPU-sized settings."""

    data: Path = Path("data/synthetic")
    """Where the synthetic subject is (or will be) written."""
    layout: Literal["nerface", "adnerf"] = "nerface"
    """Which layout to train on: expression-driven (NeRFace) or audio-driven (AD-NeRF)."""
    steps: int = 1500
    """Training steps (about 0.4 s each on one CPU core with the default sizes)."""
    rays: int = 1024
    """Rays per training step."""
    output_dir: Path = Path("outputs")
    """nerfstudio's output folder."""
    video: Path = Path("renders/demo_test.mp4")
    """Where the rendered held-out video goes."""
    seed: int = 0
    """Seed of the synthetic subject."""
    max_frames: Optional[int] = None
    """Render at most this many held-out frames (None: all)."""


def run(config: DemoConfig) -> dict:
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.presets import tiny_trainer_config
    from sahs_nerfstudio.rendering.split_eval import render_split_video

    if not (config.data / config.layout / "transforms_train.json").is_file():
        CONSOLE.rule("1/3 synthetic subject")
        generate_subject(SyntheticConfig(output=config.data, seed=config.seed))
    data = config.data / config.layout
    CONSOLE.rule(f"2/3 ns-train sahs --data {data} (CPU preset, {config.steps} steps)")
    trainer_config = tiny_trainer_config(data, steps=config.steps, rays=config.rays, output_dir=config.output_dir)
    trainer_config.experiment_name = f"demo-{config.layout}"
    trainer_config.set_timestamp()
    train_main(trainer_config)
    config_path = trainer_config.get_base_dir() / "config.yml"

    CONSOLE.rule("3/3 evaluate and render the held-out split")
    metrics = render_split_video(
        config_path, config.video, split="test", side_by_side=True, max_frames=config.max_frames
    )
    out_json = config.video.with_suffix(".json")
    out_json.write_text(json.dumps(metrics, indent=2))
    table = Table(title=f"held-out metrics ({config.layout}, {config.steps} steps)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    CONSOLE.print(table)
    CONSOLE.print(f"config: {config_path}\nvideo: {config.video}\nmetrics: {out_json}")
    return metrics


def entrypoint() -> None:
    from sahs_nerfstudio.errors import run_cli

    config = tyro.cli(DemoConfig)

    def main() -> None:
        run(config)

    sys.exit(run_cli(main, "sahs-demo"))


if __name__ == "__main__":
    entrypoint()
