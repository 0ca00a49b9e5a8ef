"""``sahs-refine``: train, apply and evaluate the Stage II texture refiner.

Examples::

    # train on existing Stage-I renders (pairs matched by file stem)
    sahs-refine train --renders renders/train --ground-truth data/subject/ori_imgs --output outputs/refine --epochs 3
    # render the training frames with a trained Stage-I run first, then train
    sahs-refine train --load-config outputs/subject/sahs/2024-01-01_000000/config.yml --output outputs/refine
    # the published network (no skip connection, published sizes and schedule) instead of the residual default
    sahs-refine train --renders renders/train --ground-truth data/subject/ori_imgs --output outputs/refine-pub \
        --network.architecture published --network.channels 64 128 256 --network.spade-hidden 128 \
        --epochs 100 --decay-epochs None --lr 1e-4
    # refine a folder of frames or an mp4 with the best-on-validation checkpoint, optionally writing an mp4
    sahs-refine render --checkpoint outputs/refine/checkpoints/best.ckpt --input renders/test \\
        --output outputs/refined --video outputs/refined.mp4 --fps 25
    # PSNR / SSIM (/ LPIPS) before and after refinement
    sahs-refine eval --checkpoint outputs/refine/checkpoints/best.ckpt --renders renders/test \\
        --ground-truth data/subject/ori_imgs --output outputs/refine/metrics.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from sahs_nerfstudio.errors import flag_error, run_cli
from sahs_nerfstudio.refinement.evaluation import evaluate_refiner
from sahs_nerfstudio.refinement.inference import refine_frames
from sahs_nerfstudio.refinement.stage_one import release_stage_one_pipeline, render_stage_one
from sahs_nerfstudio.refinement.training import RefinerTrainConfig, train_refiner


@dataclass(kw_only=True)
class Train(RefinerTrainConfig):
    """Train the refiner on (Stage-I render, ground-truth frame) pairs; resumes from the latest checkpoint."""

    output: Path
    """Output folder: checkpoints/, train_log.jsonl, config.json (and stage1/ with --load-config)."""
    renders: Path | None = None
    """Folder of Stage-I renders of the training frames."""
    ground_truth: Path | None = None
    """Folder of ground-truth frames with the same file names (stems) as the renders."""
    load_config: Path | None = None
    """Stage-I nerfstudio run (config.yml): render its train (and eval) frames into <output>/stage1/ first, or reuse renders already there. Replaces --renders/--ground-truth."""
    render_eval: bool = True
    """With --load-config, also render the eval split into <output>/stage1/eval for 'sahs-refine eval'."""
    identity: Path | None = None
    """Identity photo of the person; default the first ground-truth training frame (sorted by name)."""
    audio: Path | None = None
    """Audio features .npy (windows [N,16,C] or per-frame [N,C]) for the audio variant (--network.audio)."""
    progress: bool = True
    """Show a progress bar."""

    def main(self) -> None:
        if self.load_config is not None:
            if self.renders is not None or self.ground_truth is not None:
                raise flag_error("--load-config", "either --load-config or --renders/--ground-truth", "both")
            stage1 = self.output / "stage1"
            renders, gt = render_stage_one(self.load_config, "train", stage1 / "train")
            if self.render_eval:
                render_stage_one(self.load_config, "eval", stage1 / "eval")
            release_stage_one_pipeline()
        else:
            if self.renders is None or self.ground_truth is None:
                raise flag_error(
                    "--renders", "--renders DIR and --ground-truth DIR (or --load-config CONFIG)", "not both"
                )
            renders, gt = self.renders, self.ground_truth
        try:
            train_refiner(
                renders,
                gt,
                self.output,
                config=self,
                identity=self.identity,
                audio=self.audio,
                show_progress=self.progress,
            )
        except KeyboardInterrupt:
            CONSOLE.print(
                "[yellow]Interrupted. Checkpoints are written atomically: rerun the same command to resume "
                "from the last completed epoch."
            )
            raise


@dataclass(kw_only=True)
class Render:
    """Refine every frame of a folder (or a video) and write PNG frames and optionally an mp4."""

    checkpoint: Path
    """Refiner checkpoint (<output>/checkpoints/best.ckpt, or a per-epoch epoch-NNNN.ckpt)."""
    input: Path
    """Folder of Stage-I frames, or a video file (.mp4, ...)."""
    output: Path
    """Folder receiving the refined PNG frames."""
    video: Path | None = None
    """Also write the refined frames as this mp4 (H.264)."""
    fps: float | None = None
    """Frame rate of --video; default the input video's rate, else 25."""
    audio: Path | None = None
    """Audio features .npy driving an audio-variant refiner."""
    device: str = "auto"
    """Torch device (auto, cpu, cuda, ...)."""
    progress: bool = True
    """Show a progress bar."""

    def main(self) -> None:
        refine_frames(
            self.checkpoint,
            self.input,
            self.output,
            video=self.video,
            fps=self.fps,
            audio=self.audio,
            device=self.device,
            show_progress=self.progress,
        )


@dataclass(kw_only=True)
class Eval:
    """PSNR / SSIM / LPIPS of renders before and after refinement (full frame), written as JSON."""

    checkpoint: Path
    """Refiner checkpoint."""
    renders: Path
    """Folder of Stage-I renders of held-out frames."""
    ground_truth: Path
    """Folder of ground-truth frames with the same file names (stems)."""
    output: Path
    """JSON file receiving the metrics (ns-eval layout)."""
    audio: Path | None = None
    """Audio features .npy for an audio-variant refiner."""
    lpips: bool = True
    """Compute LPIPS (AlexNet) when its weights are on disk; never downloads."""
    device: str = "auto"
    """Torch device (auto, cpu, cuda, ...)."""
    progress: bool = True
    """Show a progress bar."""

    def main(self) -> None:
        report = evaluate_refiner(
            self.checkpoint,
            self.renders,
            self.ground_truth,
            output_json=self.output,
            audio=self.audio,
            device=self.device,
            lpips=self.lpips,
            show_progress=self.progress,
        )
        CONSOLE.print(escape(json.dumps(report["results"], indent=2)))
        CONSOLE.print(f"Saved {escape(str(self.output))}")


COMMANDS = {"train": Train, "render": Render, "eval": Eval}


def main(args: list | None = None) -> int:
    """Parses ``args`` (default ``sys.argv``) and runs the subcommand; returns the exit code.

    Bad input ends with one line on stderr and status 2 (the traceback only with ``SAHS_DEBUG=1``).
    """
    command = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="sahs-refine", args=args)
    return run_cli(command.main, "sahs-refine")


def entrypoint() -> None:
    """Console-script entry point of ``sahs-refine``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
