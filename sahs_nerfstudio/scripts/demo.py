"""``sahs-demo``: the README's main job on a CPU: train, refine (Stage II) and render a talking head.

By default on the built-in synthetic subject (generated if absent); with ``--video FILE`` on a video of
a person, through ``sahs-process`` first. Trains ``sahs-fast`` with the demo preset for a wall-clock
budget (``--method sahs``: the faithful MLP method with its CPU preset), evaluates the held-out split
(novel expressions; mouth PSNR also split by open / closed mouth), refines it with Stage II and writes
the held-out video with ground truth and semantics side by side. Every step is an ordinary nerfstudio
or ``sahs-*`` step; the equivalent commands are printed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject


@dataclass
class DemoConfig:
    """Train, refine and render SAHS on a CPU: the synthetic subject, or a video with ``--video``."""

    data: Optional[Path] = None
    """Where the dataset is (or will be) written: the synthetic subject (None: ``data/synthetic``), or with
    ``--video`` what ``sahs-process`` writes (None: ``data/<video name>``)."""
    video: Optional[Path] = None
    """Input video of one talking person: processed with ``sahs-process`` into ``--data`` first (None: the
    synthetic subject)."""
    process_size: int = 128
    """With ``--video``: side of the square frames ``sahs-process`` writes (the demo preset is sized for 128)."""
    layout: Literal["nerface", "adnerf"] = "nerface"
    """Which layout to train on: expression-driven (NeRFace) or audio-driven (AD-NeRF)."""
    method: Literal["sahs-fast", "sahs"] = "sahs-fast"
    """``sahs-fast`` (hash grids, the sharp one on a CPU) or ``sahs`` (the faithful MLP method, CPU preset)."""
    train_minutes: float = 10.0
    """Wall-clock budget of the training steps (start-up, evaluation and rendering come on top)."""
    steps: Optional[int] = None
    """Training steps (the learning-rate schedule's length); None: what ``--train-minutes`` allows at the
    preset's expected seconds per step. Training stops at the budget in any case."""
    rays: Optional[int] = None
    """Rays per training step (None: the preset's)."""
    refine: bool = True
    """Train the Stage II refiner on the training renders and apply it to the held-out renders."""
    refine_epochs: Optional[int] = None
    """Stage II epochs (None: the refiner's CPU-sized default schedule)."""
    output_dir: Path = Path("outputs")
    """nerfstudio's output folder (the Stage II run goes to ``<run>/refine``)."""
    render_path: Path = Path("renders/demo_test.mp4")
    """Where the rendered held-out video goes (its metrics: the same name with ``.json``)."""
    seed: int = 0
    """Seed of the synthetic subject."""
    max_frames: Optional[int] = None
    """Render at most this many held-out frames (None: all)."""


def prepare_data(config: DemoConfig) -> Path:
    """The dataset folder to train on: the processed video, or the synthetic subject (generated if absent)."""
    if config.video is not None:
        from sahs_nerfstudio.process import pipeline as process_pipeline

        root = config.data if config.data is not None else Path("data") / config.video.stem
        CONSOLE.rule(f"sahs-process {config.video} --output {root} --layout {config.layout}")
        process_pipeline.run(
            process_pipeline.ProcessConfig(
                video=config.video, output=root, layout=config.layout, size=config.process_size
            )
        )
    else:
        root = config.data if config.data is not None else Path("data/synthetic")
        if not (root / config.layout / "transforms_train.json").is_file():
            CONSOLE.rule("sahs-synth: synthetic subject")
            generate_subject(SyntheticConfig(output=root, seed=config.seed))
    return root / config.layout


def train(config: DemoConfig, data: Path) -> Path:
    """Train the chosen method with the demo preset; returns the run's config.yml."""
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.presets import demo_trainer_config

    trainer_config = demo_trainer_config(
        data,
        method=config.method,
        train_seconds=config.train_minutes * 60.0,
        steps=config.steps,
        rays=config.rays,
        output_dir=config.output_dir,
    )
    trainer_config.experiment_name = f"demo-{config.layout}"
    trainer_config.set_timestamp()
    CONSOLE.rule(
        f"ns-train {config.method} --data {data} (demo preset: up to {trainer_config.max_num_iterations} steps, "
        f"{config.train_minutes:g} min)"
    )
    train_main(trainer_config)
    return trainer_config.get_base_dir() / "config.yml"


def stage_two(config_path: Path, epochs: Optional[int]) -> dict[str, Any]:
    """Stage II (:func:`~sahs_nerfstudio.refinement.run_stage_two`): the refiner trained on the run's training
    renders, scored and applied to the held-out renders (``<run>/refine``)."""
    from sahs_nerfstudio.refinement import run_stage_two
    from sahs_nerfstudio.refinement.training import RefinerTrainConfig

    out = config_path.parent / "refine"
    CONSOLE.rule(f"Stage II: sahs-refine on {config_path} into {out}")
    train_config = None if epochs is None else RefinerTrainConfig(epochs=epochs)
    report = run_stage_two(config_path, out, train_config=train_config, video=out / "refined.mp4")
    return {f"stage2_{k}": v for k, v in report.items() if isinstance(v, (int, float))}


def run(config: DemoConfig) -> dict:
    from sahs_nerfstudio.rendering.split_eval import render_split_video

    data = prepare_data(config)
    config_path = train(config, data)
    CONSOLE.rule(f"sahs-render: evaluate and render the held-out split to {config.render_path}")
    metrics: dict[str, Any] = render_split_video(
        config_path, config.render_path, split="test", side_by_side=True, max_frames=config.max_frames
    )
    if config.refine:
        metrics.update(stage_two(config_path, config.refine_epochs))
    out_json = config.render_path.with_suffix(".json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(metrics, indent=2))
    table = Table(title=f"held-out metrics ({config.method}, {config.layout})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    CONSOLE.print(table)
    CONSOLE.print(f"config: {config_path}\nvideo: {config.render_path}\nmetrics: {out_json}")
    return metrics


def entrypoint() -> None:
    from sahs_nerfstudio.errors import run_cli

    config = tyro.cli(DemoConfig)

    def main() -> None:
        run(config)

    sys.exit(run_cli(main, "sahs-demo"))


if __name__ == "__main__":
    entrypoint()
