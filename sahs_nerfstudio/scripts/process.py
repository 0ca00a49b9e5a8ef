"""``sahs-process VIDEO --output DIR [--layout nerface|adnerf|both]``: a video to a dataset, offline, on a CPU.

Stages (each skipped when its outputs exist, unless ``--force``): decode, landmarks, pose,
expression, background, segmentation, audio features, layouts, report. Bad input ends with one
line ``sahs-process: error: <file>: field '<f>': expected <e>, found <x>`` and exit status 2
(:mod:`sahs_nerfstudio.errors`; the traceback only with ``SAHS_DEBUG=1``).
"""

from __future__ import annotations

from typing import Dict, Optional

import tyro
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sahs_nerfstudio.errors import cli_entrypoint, run_cli
from sahs_nerfstudio.process.pipeline import PROG, ProcessConfig
from sahs_nerfstudio.process.pipeline import run as run_pipeline


def main(config: ProcessConfig) -> None:
    """Run every stage with a rich progress bar per stage, then print where things went."""
    tasks: Dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done)

        report = run_pipeline(config, progress)
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in report["stage_seconds"].items() if not k.endswith("_cpu"))
    print(f"{PROG}: {report['frames_kept']} of {report['frames_decoded']} frames kept; {seconds}")
    for layout in report["layouts"]:
        print(f"{PROG}: wrote {config.output / layout}")
    print(f"{PROG}: check {config.output / 'contact_sheet.png'}; report {config.output / 'report.json'}")


def run(argv: Optional[list] = None) -> int:
    """Parse ``argv`` and process; bad input becomes one line on stderr and status 2."""
    config = tyro.cli(ProcessConfig, args=argv)
    return run_cli(lambda: main(config), PROG)


@cli_entrypoint(PROG)
def entrypoint() -> None:
    main(tyro.cli(ProcessConfig))


if __name__ == "__main__":
    entrypoint()
