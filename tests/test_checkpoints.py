"""Checkpoints of SAHS runs: atomic writes, verified loads with fallback, full disks, SIGKILL and Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from sahs_nerfstudio.checkpoint_io import (
    PARTIAL_SUFFIX,
    CheckpointNotSaved,
    checkpoint_name,
    digest_path,
    list_checkpoints,
    load_newest_checkpoint,
    write_checkpoint,
)
from sahs_nerfstudio.errors import FormatError


def _state(step: int, scale: float = 1.0) -> dict:
    return {"step": step, "pipeline": {"_model.w": torch.full((64, 64), scale)}, "optimizers": {}, "scalers": {}}


def _write(folder: Path, step: int) -> Path:
    path = folder / checkpoint_name(step)
    write_checkpoint(_state(step, float(step)), path)
    return path


# ---------------------------------------------------------------------------------------------
# Writing


def test_write_is_atomic_and_checksummed(tmp_path):
    path = _write(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, digest_path(path).name]
    assert digest_path(path).read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    _, state = load_newest_checkpoint(tmp_path)
    assert state["step"] == 3 and torch.equal(state["pipeline"]["_model.w"], torch.full((64, 64), 3.0))


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_alone(tmp_path):
    previous = _write(tmp_path, 1)
    before = previous.read_bytes()
    bad = {**_state(2), "unpicklable": lambda: None}  # torch.save fails after writing part of the file
    with pytest.raises(Exception):  # noqa: B017  (pickle's error type is not ours to fix)
        write_checkpoint(bad, tmp_path / checkpoint_name(2))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert previous.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Loading: a broken newest checkpoint is skipped with one warning naming it


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # in the tensor data: torch itself would load this silently
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _empty, _flip], ids=["truncated", "empty", "bit-flip"])
def test_a_broken_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damage):
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    damage(newest)
    path, state = load_newest_checkpoint(tmp_path)
    assert path.name == checkpoint_name(1) and state["step"] == 1
    out = capsys.readouterr().out
    assert out.count("warning: skipping checkpoint") == 1 and str(newest) in out


def test_a_checkpoint_torch_cannot_read_is_skipped_too(tmp_path, capsys):
    # nerfstudio's own checkpoints have no checksum file: a truncated one fails in torch.load
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    digest_path(newest).unlink()
    _truncate(newest)
    path, _ = load_newest_checkpoint(tmp_path)
    assert path.name == checkpoint_name(1) and "does not load" in capsys.readouterr().out


def test_an_explicit_step_that_does_not_load_is_an_error(tmp_path):
    _write(tmp_path, 1)
    _empty(_write(tmp_path, 2))
    with pytest.raises(FormatError, match="empty file"):
        load_newest_checkpoint(tmp_path, step=2)
    with pytest.raises(FormatError, match=r"load_step.*saved: 2, 1"):
        load_newest_checkpoint(tmp_path, step=7)


def _train(data: Path, out: Path, name: str, steps: int, **overrides):
    from nerfstudio.scripts.train import train_loop

    from sahs_nerfstudio.presets import tiny_trainer_config

    config = tiny_trainer_config(data, steps=steps, rays=32, output_dir=out)
    config.experiment_name, config.timestamp, config.steps_per_save = "ck", name, 1
    config.logging.local_writer.enable = False
    for key, value in overrides.items():
        setattr(config, key, value)
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config


def test_ns_train_load_dir_resumes_from_the_previous_intact_checkpoint(subject_nonsquare, tmp_path, capsys):
    first = _train(subject_nonsquare / "nerface", tmp_path, "a", steps=3)
    ckpts = first.get_checkpoint_dir()
    assert [s for s, _ in list_checkpoints(ckpts)] == [2, 1]  # only-latest keeps one intact fallback
    _truncate(ckpts / checkpoint_name(2))
    capsys.readouterr()
    second = _train(subject_nonsquare / "nerface", tmp_path, "b", steps=2, load_dir=ckpts)
    out = capsys.readouterr().out
    assert (
        "skipping checkpoint" in out and f"Done loading Nerfstudio checkpoint from {ckpts / checkpoint_name(1)}" in out
    )
    # resumed at step 2 (= 1 + 1) and trained 2 steps: 2, 3
    assert [s for s, _ in list_checkpoints(second.get_checkpoint_dir())] == [3, 2]


# ---------------------------------------------------------------------------------------------
# A full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MiB tmpfs: room for two test-sized checkpoints (1.9 MB each) but not a third."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(small_disk):
    folder = small_disk / "ckpts"
    big = {"step": 1, "pipeline": {"w": torch.zeros(2**20 // 2)}}  # 2 MiB
    write_checkpoint(big, folder / checkpoint_name(1))
    write_checkpoint({**big, "step": 2}, folder / checkpoint_name(2))
    with pytest.raises(CheckpointNotSaved, match=r"no space left on device .* free\); kept step-000000002.ckpt"):
        write_checkpoint({**big, "step": 3}, folder / checkpoint_name(3))
    assert [s for s, _ in list_checkpoints(folder)] == [2, 1]
    assert not [p for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert load_newest_checkpoint(folder)[1]["step"] == 2


def test_training_on_a_full_disk_warns_goes_on_and_fails_the_final_save(subject_nonsquare, small_disk, capsys):
    with pytest.raises(CheckpointNotSaved, match="no space left on device"):
        _train(subject_nonsquare / "nerface", small_disk, "full", steps=4)
    out = capsys.readouterr().out
    assert "warning: checkpoint not saved" in out and "training goes on" in out
    ckpts = small_disk / "ck" / "sahs" / "full" / "nerfstudio_models"
    kept = [s for s, _ in list_checkpoints(ckpts)]
    assert kept and max(kept) < 3  # the last step's save did not fit: the earlier ones are intact
    assert load_newest_checkpoint(ckpts)[1]["step"] == max(kept)


# ---------------------------------------------------------------------------------------------
# SIGKILL at many points, and Ctrl-C (tests/checkpoint_faults.py drives real ns-train / ns-eval runs)


@pytest.fixture(scope="module")
def fault_report(subject_nonsquare, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("faults")
    report = out / "report.json"
    driver = Path(__file__).with_name("checkpoint_faults.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(driver), str(subject_nonsquare / "nerface"), str(out), str(report)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def test_sigkill_at_many_points_always_resumes_and_evaluates(fault_report):
    cycles = fault_report["cycles"]
    assert sum(c["killed_inside_write"] for c in cycles) >= 2, cycles
    previous_step = None
    for c in cycles:
        assert c["status"] == -9, c
        # a kill inside a write leaves only a temporary file; no step-N.ckpt is ever half written
        if c["checkpoints"]:
            assert c["newest_loads"] == f"step-{max(c['checkpoints']):09d}.ckpt", c
            assert c["eval_status"] == 0 and c["eval_loaded"], c
            assert not c["eval_warnings"], c
        if c["expected_load"] is not None and c["checkpoints"]:
            # resumed from the newest checkpoint of the previous runs, and continued after it
            assert c["loaded_line"].endswith(c["expected_load"]), c
            assert not c["warnings"], c
            assert c["first_saved_step"] > previous_step, c
        if c["checkpoints"]:
            previous_step = max(c["checkpoints"])
    assert any(c["partials_left"] for c in cycles if c["killed_inside_write"])
    assert any(c["kind"] == "during start-up" and not c["checkpoints"] for c in cycles)


def test_ctrl_c_saves_a_checkpoint_at_the_interrupted_step_and_exits_non_zero(fault_report):
    sig = fault_report["sigint"]
    assert sig["status"] == 130, sig["log"]
    assert len(sig["checkpoints"]) == 1, sig  # periodic saves were off: this one is the interrupt's
    step = sig["saved_step"]
    assert sig["checkpoints"] == [step] and step >= fault_report["start_step"], sig
    assert f"interrupted at step {step}: saved" in sig["log"]
    assert "Traceback" not in sig["log"]


# ---------------------------------------------------------------------------------------------
# The nerfstudio internals sahs_nerfstudio.compat.eval_checkpoint relies on


def test_compat_eval_checkpoint_matches_installed_nerfstudio():
    import inspect
    from importlib.metadata import version

    import nerfstudio.scripts.viewer.run_viewer as run_viewer
    import nerfstudio.utils.eval_utils as eval_utils

    from sahs_nerfstudio.compat import eval_checkpoint

    assert version("nerfstudio") == eval_checkpoint.NERFSTUDIO_VERSION
    setup = inspect.getsource(eval_utils.eval_setup)
    # eval_setup asks the config for its checkpoint folder (our hook) before it loads through the
    # module attribute we replace
    assert setup.index("config.get_checkpoint_dir()") < setup.index("eval_load_checkpoint(config, pipeline)")
    assert list(inspect.signature(eval_utils.eval_load_checkpoint).parameters) == ["config", "pipeline"]
    main = inspect.getsource(run_viewer.RunViewer.main)
    assert main.index("config.viewer = self.viewer.as_viewer_config()") < main.index("_start_viewer(config")
    assert list(inspect.signature(run_viewer._start_viewer).parameters) == ["config", "pipeline", "step"]
    from sahs_nerfstudio.checkpoint_io import load_newest_checkpoint
    from sahs_nerfstudio.utils.run_loader import is_sahs_config

    eval_checkpoint.install(load_newest_checkpoint, is_sahs_config)
    assert eval_utils.eval_load_checkpoint is eval_checkpoint.load_sahs_checkpoint
    assert run_viewer._start_viewer is eval_checkpoint._start_viewer_locally
