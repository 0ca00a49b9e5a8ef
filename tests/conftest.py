"""Shared fixtures: small synthetic subjects written by the real generator in the real formats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Test-sized networks gain nothing from a second thread, and OpenMP threads that spin while another
# process holds a core slow a step down 30x on a 2-core machine: one thread per test process.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

# nerfstudio 1.1.5's utils.writer imports configs.base_config, which imports utils.writer back: importing the
# configs first (as nerfstudio's own entry points do) is the order that resolves.
import nerfstudio.configs.base_config  # noqa: E402, F401

from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_nerfstudio_writers():
    """nerfstudio keeps its event writers in module globals that every in-process training appends to;
    one test's writer (say, on a tmpfs unmounted after a full-disk test) must not be flushed by the next."""
    from nerfstudio.utils import writer

    saved = list(writer.EVENT_WRITERS), list(writer.EVENT_STORAGE)
    yield
    writer.EVENT_WRITERS[:] = saved[0]
    writer.EVENT_STORAGE[:] = saved[1]


@pytest.fixture(scope="session")
def subject_nonsquare(tmp_path_factory) -> Path:
    """A 48x40 subject (non-square, negative fx in the NeRFace layout), both layouts."""
    root = tmp_path_factory.mktemp("subject_nonsquare")
    generate_subject(SyntheticConfig(output=root, width=48, height=40, num_train=22, num_val=2, seed=3))
    return root


@pytest.fixture(scope="session")
def subject_train(tmp_path_factory) -> Path:
    """The subject used by training tests: 40x40, enough frames to learn the expression space."""
    root = tmp_path_factory.mktemp("subject_train")
    generate_subject(SyntheticConfig(output=root, resolution=40, num_train=60, num_val=3, seed=0))
    return root


@pytest.fixture
def subject_copy(subject_nonsquare, tmp_path) -> Path:
    """A private copy to corrupt in bad-input tests."""
    dst = tmp_path / "subject"
    shutil.copytree(subject_nonsquare, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# Tiny trained runs (driving, rendering and viewer tests): plumbing, not quality.


def _train_tiny_run(root: Path, layout: str, steps: int = 40) -> Path:
    """Train ``sahs`` for a few steps on ``root/layout`` with test-sized fields; return its config.yml."""
    from nerfstudio.scripts.train import train_loop

    from sahs_nerfstudio.presets import tiny_trainer_config

    config = tiny_trainer_config(root / layout, steps=steps, rays=128, output_dir=root / "outputs")
    config.experiment_name = f"tiny-{layout}"
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config.get_base_dir() / "config.yml"


@pytest.fixture(scope="session")
def tiny_subject(tmp_path_factory) -> Path:
    """A 32x32 subject with 30 training frames, both layouts (NeRFace: 3 test frames)."""
    root = tmp_path_factory.mktemp("tiny_subject")
    generate_subject(SyntheticConfig(output=root, resolution=32, num_train=30, num_val=2, seed=1))
    return root


@pytest.fixture(scope="session")
def tiny_run_expression(tiny_subject) -> Path:
    """config.yml of an expression-driven (NeRFace layout) run trained for 40 steps on ``tiny_subject``."""
    return _train_tiny_run(tiny_subject, "nerface")


@pytest.fixture(scope="session")
def tiny_run_audio(tiny_subject) -> Path:
    """config.yml of an audio-driven (AD-NeRF layout) run trained for 40 steps on ``tiny_subject``."""
    return _train_tiny_run(tiny_subject, "adnerf")


@pytest.fixture
def tiny_sahs_fast_cli():
    """``ns-train sahs-fast`` parsed from a CPU-sized command line, exactly as a user would type it."""

    def build(data: Path, output_dir: Path, steps: int):
        import tyro
        from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

        args = ["sahs-fast", "--data", str(data), "--output-dir", str(output_dir), "--vis", "tensorboard"]
        args += ["--machine.device-type", "cpu", "--max-num-iterations", str(steps)]
        args += ["--viewer.quit-on-train-completion", "True", "--pipeline.datamanager.train-num-rays-per-batch", "64"]
        args += ["--pipeline.model.implementation", "torch", "--pipeline.model.num-proposal-samples-per-ray", "8", "8"]
        args += ["--pipeline.model.num-nerf-samples-per-ray", "8"]
        for driver in ("audio-field", "expression-field"):
            args += [f"--pipeline.model.{driver}.implementation", "torch"]
            args += [f"--pipeline.model.{driver}.log2-hashmap-size", "12"]
        return tyro.cli(AnnotatedBaseConfigUnion, args=args)

    return build
