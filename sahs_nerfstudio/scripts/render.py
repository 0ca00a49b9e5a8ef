"""``sahs-render``: drive a trained SAHS avatar with an expression sequence, audio features or a wav.

Examples::

    # the held-out split driving itself, render | ground truth | semantics
    sahs-render --load-config outputs/.../config.yml --side-by-side
    # another subject's expressions (cross-reenactment), fixed camera of frame 3
    sahs-render --load-config A/config.yml --driver B/transforms_test.json --cameras frame --frame 3
    # a speech recording (any sample rate), orbiting camera, audio muxed into the mp4
    sahs-render --load-config outputs/.../config.yml --driver speech.wav --cameras orbit
    # a video of anyone talking: their expressions on this avatar, their voice muxed in
    sahs-render --load-config outputs/.../config.yml --driver someone.mp4 --cameras frame
    # an audio model trained with an eye track (au.csv): its blinks from an OpenFace au.csv instead of
    # natural ones (--blink natural|open|auto; auto: the split's own track, else natural blinks)
    sahs-render --load-config outputs/.../config.yml --driver speech.wav --eyes other/au.csv

Bad input (a driving file of the wrong code width, an empty audio file, another method's run, a
flag out of range) ends with one line naming the file or flag and the field, and exit status 2
(:mod:`sahs_nerfstudio.errors`; the traceback only with ``SAHS_DEBUG=1``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.errors import cli_entrypoint, run_cli

PROG = "sahs-render"


@dataclass
class RenderDriven:
    """Render a driven video of a trained SAHS run (mp4, with the audio when driven by audio)."""

    load_config: Path
    """The run's config.yml (outputs/<experiment>/sahs/<timestamp>/config.yml)."""
    output: Path = Path("renders/driven.mp4")
    """The mp4 to write."""
    driver: Path | None = None
    """Driving file: a NeRFace transforms JSON or a [T, 76] .npy (expression models); an aud.npy [T, 16, 29],
    an AD-NeRF transforms JSON or a .wav (audio models); or a video of anyone's face (.mp4, .mov, ...):
    tracked, its expressions mapped into this subject's (expression models) or its sound and blinks
    (audio models), its sound muxed in. Another subject's file cross-reenacts. None: the split's own frames."""
    audio: Path | None = None
    """An audio file to mux into the video (default: the .wav driver, or the aud.wav next to an aud.npy)."""
    cameras: Literal["dataset", "frame", "orbit", "driver"] = "dataset"
    """Camera path: the split's cameras (cycled), one fixed camera (--frame), an orbit around it, or (with a
    driver video) that camera turned about the head as the driver's head turns."""
    split: Literal["train", "val", "test"] = "test"
    """Split whose cameras (and, without --driver, codes and ground truth) are used."""
    frame: int = 0
    """Camera index in the split for --cameras frame / orbit."""
    orbit_degrees: float = 15.0
    """Orbit amplitude: the camera swings +-this many degrees about the head over the video."""
    pose: Literal["follow", "frozen"] = "follow"
    """Pose code (audio models): each camera's own, or frozen at the first camera's."""
    side_by_side: bool = False
    """Each frame shows render | ground truth | semantics (ground truth only for the split's own frames)."""
    max_frames: int | None = None
    """Render at most this many frames."""
    fps: float = 25.0
    """Video frame rate; audio files are cut into windows at this rate."""
    resolution_scale: float = 1.0
    """Output resolution relative to the dataset's."""
    data: Path | None = None
    """Dataset path, when it moved since training (default: the one in config.yml)."""
    eyes: Path | None = None
    """Eye track for models with an eye channel: an OpenFace au.csv (AU45_r), row k for video frame k."""
    blink: Literal["auto", "natural", "open"] = "auto"
    """Eyes without --eyes: auto (the split's own track when it drives itself, else natural blinks), natural
    (15-20 blinks a minute, 0.1-0.3 s each, seeded) or open."""
    blink_seed: int = 0
    """Seed of the natural blinks."""
    skip_missing: bool = False
    """A driver video's frames without a face are left out, with their sound (default: an error naming them)."""
    driver_neutral_frame: int | None = None
    """A driver video's frame whose face is its resting face (default: the median face over the clip)."""

    def main(self) -> None:
        from sahs_nerfstudio.rendering.driven import render_driven_video

        result = render_driven_video(
            self.load_config,
            self.output,
            driver=self.driver,
            audio=self.audio,
            cameras=self.cameras,
            split=self.split,
            frame=self.frame,
            orbit_degrees=self.orbit_degrees,
            pose=self.pose,
            side_by_side=self.side_by_side,
            max_frames=self.max_frames,
            fps=self.fps,
            resolution_scale=self.resolution_scale,
            data=self.data,
            eyes=self.eyes,
            blink=self.blink,
            blink_seed=self.blink_seed,
            skip_missing=self.skip_missing,
            driver_neutral_frame=self.driver_neutral_frame,
        )
        # Frames/s of the model's rendering alone (no loading, no video encoding), next to the mp4; the console
        # already has render_driven_video's "Rendered N frames at WxH in S s: F frames/s" line.
        summary = {
            "num_frames": result.num_frames,
            "width": result.width,
            "height": result.height,
            "render_seconds": result.render_seconds,
            "render_fps": result.render_fps,
            "render_seconds_per_frame": 1.0 / result.render_fps if result.render_fps > 0 else None,
            "total_fps": result.total_fps,
            "device": result.device,
            "threads": result.threads,
        }
        metrics_path = self.output.with_suffix(".json")
        metrics_path.write_text(json.dumps(summary, indent=2))
        CONSOLE.print(f"frames/s and timings: {metrics_path}", markup=False, soft_wrap=True)


def run(argv: list | None = None) -> int:
    """Parse ``argv``, render, and turn bad input into one line on stderr (status 2)."""
    config = tyro.cli(RenderDriven, args=argv)
    return run_cli(config.main, PROG)


@cli_entrypoint(PROG)
def entrypoint() -> None:
    tyro.cli(RenderDriven).main()


if __name__ == "__main__":
    entrypoint()
