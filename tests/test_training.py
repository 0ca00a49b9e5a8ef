"""``sahs`` end to end on the synthetic subject: learning, driving, checkpoints, nerfstudio CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from nerfstudio.scripts.train import train_loop

import sahs_nerfstudio.sahs_config  # noqa: F401  (the sahs methods; pipelines register checkpoint types)
from sahs_nerfstudio.presets import cpu_model_config, model_flags, tiny_field, tiny_model_config, tiny_trainer_config
from sahs_nerfstudio.utils.metrics import mouth_mask
from sahs_nerfstudio.utils.run_loader import load_run

STEPS = 400
# Bounds on learned quantities: each sits below the worst of 3 seeds x 1 and 2 threads (tests/README.md).
PSNR_GAIN = 1.5
MIOU_GAIN = 0.15
MOUTH_CHANGE = 0.03
BACKGROUND_SHARE = 0.45


def _train(data: Path, out: Path, steps: int, name: str, seed: int = 0, **kw):
    config = tiny_trainer_config(data, steps=steps, output_dir=out, **kw)
    config.machine.seed = seed
    config.experiment_name = name
    config.set_timestamp()
    config.logging.local_writer.enable = False
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config.get_base_dir() / "config.yml"


def _held_out_metrics(pipeline) -> dict:
    model = pipeline.model
    model.eval()
    dataset = pipeline.datamanager.eval_dataset
    sums: dict = {}
    for i in range(len(dataset)):
        outputs = model.get_outputs_for_camera(dataset.cameras[i : i + 1])
        metrics, _ = model.get_image_metrics_and_images(outputs, dataset[i])
        for k, v in metrics.items():
            sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


@pytest.fixture(scope="module")
def trained_expression_run(subject_train, tmp_path_factory, learning_seed):
    out = tmp_path_factory.mktemp("runs")
    config_path = _train(subject_train / "nerface", out, STEPS, "expr", seed=learning_seed)
    return config_path


@pytest.mark.learning
def test_training_raises_held_out_psnr_and_learns_semantics(
    trained_expression_run, subject_train, tmp_path, learning_seed, learned
):
    _, pipeline, _, _ = load_run(trained_expression_run, test_mode="test")
    trained = _held_out_metrics(pipeline)
    untrained_config = _train(subject_train / "nerface", tmp_path, 1, "untrained", seed=learning_seed)
    _, untrained_pipeline, _, _ = load_run(untrained_config, test_mode="test")
    untrained = _held_out_metrics(untrained_pipeline)
    # Held-out frames carry novel expression combinations; the untrained model of the same seed is the baseline
    # (it renders the background image). Gains, not absolute figures: the absolute mIoU after 400 steps moved
    # from 0.36 on one machine to 0.24 on another (issue 26). Measured values and margins: tests/README.md.
    both = (trained, untrained)
    learned.above("held-out PSNR gain (dB)", trained["psnr"] - untrained["psnr"], PSNR_GAIN, both)
    learned.above("held-out mIoU gain", trained["miou"] - untrained["miou"], MIOU_GAIN, both)


@pytest.mark.learning
def test_driving_code_moves_the_mouth_not_the_background(trained_expression_run, learned):
    _, pipeline, _, _ = load_run(trained_expression_run, test_mode="test")
    model = pipeline.model
    model.eval()
    dataset = pipeline.datamanager.train_dataset
    drivers = dataset.cameras.metadata["driver"]
    # the two training frames whose expressions differ most
    dist = torch.cdist(drivers, drivers)
    a, b = divmod(int(dist.argmax()), dist.shape[1])
    cam = dataset.cameras[a : a + 1]
    renders = []
    for k in (a, b):
        cam.metadata = {**cam.metadata, "driver": drivers[k : k + 1]}  # type: ignore[dict-item]
        renders.append(model.get_outputs_for_camera(cam)["rgb"])
    diff = (renders[0] - renders[1]).abs().mean(-1)
    labels = dataset[a]["semantics"][..., 0]
    mouth = mouth_mask(labels)
    # dilate the mouth a little: an opening jaw moves the lips' surroundings too
    mouth = torch.nn.functional.max_pool2d(mouth[None, None].float(), 5, 1, 2)[0, 0].bool()
    background = labels == 0
    assert mouth.any() and background.any()
    learned.above("mouth change (mean abs rgb diff)", float(diff[mouth].mean()), MOUTH_CHANGE)
    learned.below("background / mouth change", float(diff[background].mean() / diff[mouth].mean()), BACKGROUND_SHARE)


def test_audio_driver_trains_and_checkpoint_resumes(subject_train, tmp_path):
    config_path = _train(subject_train / "adnerf", tmp_path, 30, "audio")
    _, pipeline, ckpt, step = load_run(config_path, test_mode="test")
    assert pipeline.model.driver_kind == "audio" and step == 29
    # resume: a second run loading the first one's checkpoints continues from its step (nerfstudio runs
    # max_num_iterations more steps after the loaded one: 30..39)
    config = tiny_trainer_config(subject_train / "adnerf", steps=10, output_dir=tmp_path)
    config.experiment_name = "audio-resumed"
    config.set_timestamp()
    config.load_dir = ckpt.parent
    config.logging.local_writer.enable = False
    train_loop(local_rank=0, world_size=1, config=config)
    saved = sorted((config.get_base_dir() / "nerfstudio_models").glob("*.ckpt"))
    assert saved and saved[-1].name == "step-000000039.ckpt"
    state = torch.load(saved[-1], map_location="cpu", weights_only=False)
    assert int(state["pipeline"]["_model.trained_steps"]) == 39


def _ns(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd, env=env)


def _ns_train_sahs(data: Path, tmp_path: Path, name: str, extra: list[str]) -> subprocess.CompletedProcess:
    """``ns-train sahs`` on CPU into ``tmp_path/outputs/<name>/sahs/t``, 64 rays, a checkpoint every 2 steps."""
    args = ["--data", str(data), "--output-dir", str(tmp_path / "outputs"), "--experiment-name", name]
    args += ["--timestamp", "t", "--machine.device-type", "cpu", "--steps-per-save", "2", "--vis", "tensorboard"]
    args += ["--pipeline.datamanager.train-num-rays-per-batch", "64", *extra]
    return _ns([str(Path(sys.executable).parent / "ns-train"), "sahs", *args], tmp_path)


def test_ns_train_cli_then_ns_eval_and_ns_render(subject_train, tmp_path):
    bindir = Path(sys.executable).parent
    flags = model_flags(tiny_model_config(), fields=("expression-field",))
    train = _ns_train_sahs(subject_train / "nerface", tmp_path, "cli", ["--max-num-iterations", "3", *flags])
    assert train.returncode == 0, train.stderr[-3000:]
    config = tmp_path / "outputs" / "cli" / "sahs" / "t" / "config.yml"
    assert config.is_file()
    # the default dataparser of sahs is sahs-data, and it read the NeRFace layout
    assert "SAHSDataParserConfig" in config.read_text()

    evaluated = _ns([str(bindir / "ns-eval"), "--load-config", str(config), "--output-path", "eval.json"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    for key in ("psnr", "ssim", "mouth_psnr", "miou"):
        assert key in results

    render = _ns(
        [
            str(bindir / "ns-render"),
            "dataset",
            "--load-config",
            str(config),
            "--split",
            "test",
            "--output-path",
            "renders",
            "--rendered-output-names",
            "rgb",
            "semantics",
        ],
        tmp_path,
    )
    assert render.returncode == 0, render.stderr[-3000:]
    frames = sorted((tmp_path / "renders").rglob("*.jpg")) + sorted((tmp_path / "renders").rglob("*.png"))
    n_test = len(json.loads((subject_train / "nerface" / "transforms_test.json").read_text())["frames"])
    assert len([f for f in frames if "rgb" in str(f)]) == n_test


def test_two_cpu_processes_train_with_gloo(subject_train, tmp_path):
    """`--machine.num-devices 2` on the CPU: two DDP processes (gloo) train and rank 0 checkpoints."""
    model = cpu_model_config(tiny_field, num_coarse_samples=8, num_importance_samples=8)
    flags = model_flags(model, fields=("expression-field",))
    run = _ns_train_sahs(
        subject_train / "nerface", tmp_path, "ddp", ["--machine.num-devices", "2", "--max-num-iterations", "4", *flags]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = sorted((tmp_path / "outputs" / "ddp" / "sahs" / "t" / "nerfstudio_models").glob("*.ckpt"))
    assert ckpts and ckpts[-1].name == "step-000000003.ckpt"
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["pipeline"]
    # DDP prefixes parameters with "module."; the semantic sampler's statistics were updated every step
    assert any(k.startswith("_model.module.") for k in state)
    # (a pipeline buffer: the pipeline feeds the sampler, outside the DDP-wrapped model)
    assert int(state["sampler_stats.num_updates"].max()) == 4


def test_budget_decisions_are_rank_zeros_on_every_rank(tmp_path):
    """Two gloo processes whose clocks disagree: ``rank0_values`` gives both rank 0's numbers, so the fitted schedule,
    the decay's clock and the stop at the budget agree (a rank stopping a step early would hang the all-reduce)."""
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            import torch.distributed as dist
            import torch.multiprocessing as mp
            from sahs_nerfstudio.schedule import rank0_values

            def worker(rank, out):
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
                dist.init_process_group("gloo", rank=rank, world_size=2)
                got = rank0_values([10.0 + rank, 0.5 * (rank + 1)])
                with open(f"{out}.{rank}", "w") as f:
                    f.write(repr(got))
                dist.destroy_process_group()

            if __name__ == "__main__":
                mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
            """
        )
    )
    port = str(29500 + os.getpid() % 1000)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), port], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"out.{rank}").read_text() == "[10.0, 0.5]"
    from sahs_nerfstudio.schedule import rank0_values

    assert rank0_values([3.0, 4.0]) == [3.0, 4.0]  # one process: unchanged
