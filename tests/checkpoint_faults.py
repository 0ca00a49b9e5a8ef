"""Fault driver for tests/test_checkpoints.py: kill ``ns-train`` with SIGKILL at many points, resume, evaluate.

Run as ``python tests/checkpoint_faults.py DATA OUT REPORT.json``. It imports nerfstudio once and
forks each ``ns-train`` / ``ns-eval`` run from that clean parent (the child runs nerfstudio's own
console-script entry point with its ``sys.argv``, exactly what the installed command runs), which
saves the 10+ seconds of imports per run on a 2-core machine. The parent never computes with torch,
so the children fork from a single-threaded process.

Kill points, one training run each, every run resuming (``--load-dir``) from the newest folder
that has a checkpoint: between steps; inside a checkpoint write (the child is stopped with SIGSTOP
the moment its temporary file appears and killed only if that file is still there); just after a
rename; during start-up, before its first checkpoint. After each kill the newest checkpoint must
load without a warning and ``ns-eval`` must load the run. Last, a run is interrupted with SIGINT.
The report lists what happened; the test asserts on it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

torch.set_num_threads(1)

from nerfstudio.scripts.eval import entrypoint as eval_entrypoint  # noqa: E402
from nerfstudio.scripts.train import entrypoint as train_entrypoint  # noqa: E402

from sahs_nerfstudio.checkpoint_io import PARTIAL_SUFFIX, list_checkpoints, load_newest_checkpoint  # noqa: E402
from sahs_nerfstudio.presets import cpu_model_config, model_flags, tiny_field  # noqa: E402

FLAGS = model_flags(
    cpu_model_config(tiny_field, num_coarse_samples=8, num_importance_samples=8), fields=("expression-field",)
)


def fork(entry: Callable[[], Any], argv: List[str], log: Path) -> int:
    pid = os.fork()
    if pid == 0:  # child: become the command, never return into the parent's code
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = argv
            entry()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def poll(cond: Callable[[], bool], timeout: float, step: float = 0.0005) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def partials(folder: Path) -> List[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX)] if folder.is_dir() else []


def train_argv(data: Path, out: Path, name: str, load_dir: Optional[Path], save_every: int = 1) -> List[str]:
    argv = ["ns-train", "sahs", "--data", str(data), "--output-dir", str(out), "--experiment-name", "fault"]
    argv += ["--timestamp", name, "--machine.device-type", "cpu", "--vis", "tensorboard"]
    argv += ["--steps-per-save", str(save_every), "--max-num-iterations", "100000"]
    argv += ["--steps-per-eval-batch", "1000000", "--steps-per-eval-image", "1000000"]
    argv += ["--steps-per-eval-all-images", "1000000", "--logging.local-writer.enable", "False"]
    argv += ["--pipeline.datamanager.train-num-rays-per-batch", "32"]
    argv += FLAGS
    if load_dir is not None:
        argv += ["--load-dir", str(load_dir)]
    return argv


def main(data: Path, out: Path, report_path: Path) -> None:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {"cycles": []}
    kinds = ["between steps", "inside a write", "after a rename", "inside a write", "during start-up", "inside a write"]
    last_dir: Optional[Path] = None  # newest checkpoint folder so far
    last_step: Optional[int] = None
    for i, kind in enumerate(kinds):
        run_dir = out / "fault" / "sahs" / f"c{i}"
        ckpts = run_dir / "nerfstudio_models"
        log = out / f"train-c{i}.log"
        pid = fork(train_entrypoint, train_argv(data, out, f"c{i}", last_dir), log)
        entry: Dict[str, Any] = {"kind": kind, "resumed_from": None if last_dir is None else str(last_dir)}
        entry["expected_load"] = None if last_dir is None else str(last_dir / f"step-{last_step:09d}.ckpt")
        in_write = False
        if kind == "during start-up":
            poll(lambda d=run_dir: (d / "config.yml").is_file(), 120)
            os.kill(pid, signal.SIGKILL)
        else:
            # let it train and save a few steps first (its first step is its loaded step + 1)
            poll(lambda c=ckpts: len(list_checkpoints(c)) >= 2, 180, 0.01)
            if kind == "between steps":
                time.sleep(0.15)
                os.kill(pid, signal.SIGKILL)
            elif kind == "after a rename":
                before = list_checkpoints(ckpts)[0][0]
                poll(lambda c=ckpts, b=before: list_checkpoints(c)[0][0] > b, 60)
                os.kill(pid, signal.SIGKILL)
            else:
                for _ in range(200):
                    if not poll(lambda c=ckpts: bool(partials(c)), 30):
                        break
                    os.kill(pid, signal.SIGSTOP)
                    if partials(ckpts):  # stopped mid-write: the temporary file is still there
                        in_write = True
                        os.kill(pid, signal.SIGKILL)
                        os.kill(pid, signal.SIGCONT)
                        break
                    os.kill(pid, signal.SIGCONT)
                if not in_write:
                    os.kill(pid, signal.SIGKILL)
        entry["status"] = wait(pid)
        entry["killed_inside_write"] = in_write
        entry["partials_left"] = len(partials(ckpts))
        text = log.read_text()
        entry["loaded_line"] = next((ln for ln in text.splitlines() if "Done loading Nerfstudio checkpoint" in ln), "")
        entry["warnings"] = [ln for ln in text.splitlines() if "skipping checkpoint" in ln]
        found = list_checkpoints(ckpts)
        entry["checkpoints"] = [s for s, _ in found]
        if found:
            path, state = load_newest_checkpoint(ckpts)
            entry["newest_loads"] = path.name
            entry["first_saved_step"] = min(s for s, _ in found)
            last_dir, last_step = ckpts, int(state["step"])
            elog = out / f"eval-c{i}.log"
            eval_argv = [
                "ns-eval",
                "--load-config",
                str(run_dir / "config.yml"),
                "--output-path",
                str(out / f"e{i}.json"),
            ]
            entry["eval_status"] = wait(fork(eval_entrypoint, eval_argv, elog))
            entry["eval_loaded"] = next(
                (ln for ln in elog.read_text().splitlines() if "Done loading checkpoint" in ln), ""
            )
            entry["eval_warnings"] = [ln for ln in elog.read_text().splitlines() if "skipping" in ln]
        report["cycles"].append(entry)
    # Ctrl-C: no periodic saves, so the only checkpoint is the one the interrupt writes.
    run_dir = out / "fault" / "sahs" / "sigint"
    log = out / "train-sigint.log"
    pid = fork(train_entrypoint, train_argv(data, out, "sigint", last_dir, save_every=1_000_000), log)
    poll(lambda: (run_dir / "dataparser_transforms.json").is_file(), 180, 0.01)  # written when training starts
    time.sleep(2.0)
    os.kill(pid, signal.SIGINT)
    report["sigint"] = {"status": wait(pid), "log": log.read_text()[-3000:]}
    found = list_checkpoints(run_dir / "nerfstudio_models")
    report["sigint"]["checkpoints"] = [s for s, _ in found]
    if found:
        _, state = load_newest_checkpoint(run_dir / "nerfstudio_models")
        report["sigint"]["saved_step"] = int(state["step"])
    report["start_step"] = None if last_step is None else last_step + 1
    report["seconds"] = time.time() - t0
    report_path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
