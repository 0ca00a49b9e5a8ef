"""Shared fixtures: small synthetic subjects written by the real generator in the real formats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from learned import LearnedBounds, test_seed, test_threads  # noqa: E402  (tests/learned.py)

# Test-sized networks gain nothing from a second thread, and OpenMP threads that spin while another
# process holds a core slow a step down 30x on a 2-core machine: one thread per test process, unless
# SAHS_TEST_THREADS asks for more (the learned-bounds audit measures both 1 and 2).
torch.set_num_threads(test_threads())
os.environ["OMP_NUM_THREADS"] = str(test_threads())

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
def learning_seed() -> int:
    """The seed of every training in the suite (nerfstudio's ``machine.seed``, the refiner's ``seed``):
    ``SAHS_TEST_SEED``, 0 when unset. The subjects' data do not depend on it."""
    return test_seed()


@pytest.fixture
def learned(request) -> LearnedBounds:
    """Asserts a learned quantity against its bound and, when ``SAHS_TEST_RECORD`` names a file, appends the
    measured value to it first (``benchmarks/learned_bounds.py`` collects them over seeds and thread counts)."""
    return LearnedBounds(request.node.nodeid)


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
    config.machine.seed = test_seed()
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


# ------------------------------------------------------------------------------------------------
# One small sahs-fast training shared by the learning tests of the demo preset (test_demo: split video and mouth
# PSNR; test_fast: the ns-eval load path and mIoU), beside the same model untrained.

SMALL_FAST_STEPS = 600
SMALL_FAST_RAYS = 512


@pytest.fixture(scope="session")
def small_fast_runs(subject_train, tmp_path_factory, learning_seed) -> dict[str, Path]:
    """config.yml of the demo's ``sahs-fast`` preset on ``subject_train`` (NeRFace layout): ``trained`` for
    600 steps of 512 rays (a step count, not the time budget: bounds must not depend on the machine's load; at 300
    steps the mouth was not learned yet on one seed of three, issue 26) and
    ``untrained`` (one step at a learning rate of 1e-12, which changes nothing), both seeded by the suite's seed."""
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.presets import fast_demo_trainer_config
    from sahs_nerfstudio.sahs_config import fast_optimizers

    root = tmp_path_factory.mktemp("small_fast")
    data = subject_train / "nerface"
    untrained = fast_demo_trainer_config(data, steps=1, rays=SMALL_FAST_RAYS, output_dir=root / "untrained")
    untrained.optimizers = fast_optimizers(lr=1e-12, steps=1, audio_lr=1e-12)
    trained = fast_demo_trainer_config(data, steps=SMALL_FAST_STEPS, rays=SMALL_FAST_RAYS, output_dir=root / "trained")
    runs = {}
    for name, config in (("untrained", untrained), ("trained", trained)):
        config.machine.seed = learning_seed
        config.set_timestamp()
        train_main(config)
        runs[name] = config.get_base_dir() / "config.yml"
    return runs
