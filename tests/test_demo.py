"""The demo: its configuration trains well above an untrained model (held-out and mouth PSNR), the time
budget, the input-video route, the open / closed mouth split and the class-share ray sampler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from sahs_nerfstudio.data.semantics import LIPS, MOUTH_INTERIOR, NUM_CLASSES, SKIN
from sahs_nerfstudio.utils.metrics import mouth_state, mouth_state_means


def _train(config) -> Path:
    from nerfstudio.scripts.train import main as train_main

    config.set_timestamp()
    train_main(config)
    return config.get_base_dir() / "config.yml"


# The 40x40 subject (6 held-out frames, all with the mouth open), the demo preset trained 600 steps of 512 rays
# (conftest's small_fast_runs) against the same model untrained: gains in held-out and mouth PSNR. The bounds sit
# below the worst of 3 seeds x 1 and 2 threads (tests/README.md, benchmarks/learned_bounds.py).
PSNR_GAIN = 1.5
MOUTH_GAIN = 0.3
"""The held-out mouth (open, in expression combinations never seen) is what the avatar generalises worst (issue 27):
its gain swings between seeds (tests/README.md). The bound proves the mouth improved over the untrained model's
background-only render, not how well it generalises; the benchmark measures that."""


@pytest.mark.learning
def test_demo_configuration_trains_well_above_an_untrained_model(small_fast_runs, learned):
    """The demo's sahs-fast preset, trained briefly, beats the same model untrained on the held-out split
    (novel expressions) in full-frame PSNR and in mouth PSNR; the open / closed split is reported."""
    from sahs_nerfstudio.rendering.split_eval import render_split_video

    before = render_split_video(small_fast_runs["untrained"], None, split="test")
    after = render_split_video(small_fast_runs["trained"], None, split="test")
    assert math.isfinite(after["psnr"]) and math.isfinite(after["mouth_psnr"])
    both = (after, before)
    learned.above("held-out PSNR gain (dB)", after["psnr"] - before["psnr"], PSNR_GAIN, both)
    learned.above("held-out mouth PSNR gain (dB)", after["mouth_psnr"] - before["mouth_psnr"], MOUTH_GAIN, both)
    assert after["frames_mouth_open"] + after["frames_mouth_closed"] == after["num_frames"]
    assert after["frames_mouth_open"] >= 1 and "mouth_psnr_open" in after


def test_time_budget_stops_training_and_saves_the_last_step(tiny_subject, tmp_path):
    from sahs_nerfstudio.checkpoint_io import list_checkpoints
    from sahs_nerfstudio.presets import fast_demo_trainer_config

    config = fast_demo_trainer_config(
        tiny_subject / "nerface", steps=100_000, rays=64, output_dir=tmp_path, train_seconds=1.0
    )
    config.steps_per_save = 100_000
    _train(config)
    newest = list_checkpoints(config.get_checkpoint_dir())
    assert newest, "no checkpoint saved at the budget"
    step = newest[0][0]
    assert 1 <= step < 100_000  # stopped by the budget, not by the step count
    state = torch.load(newest[0][1], map_location="cpu", weights_only=False)
    # the checkpoint holds the last step that ran (the loop had not started the next one)
    assert int(state["step"]) == step and int(state["pipeline"]["_model.trained_steps"]) == step


def test_budget_steps_follow_the_measured_rate():
    from sahs_nerfstudio.schedule import budget_steps

    assert budget_steps(60.0, elapsed_s=2.0, steps_done=20, per_step_s=0.1) == 600  # 0.1 s a step
    # a machine 4x slower: a 4x shorter schedule
    assert budget_steps(60.0, elapsed_s=8.0, steps_done=20, per_step_s=0.4) == 150
    # a first step that took 45 s (a kernel build) shortens the budget by 45 s, not the rate to 2.4 s a step
    assert budget_steps(600.0, elapsed_s=47.85, steps_done=20, per_step_s=0.15) == 20 + 3681
    assert budget_steps(1.0, elapsed_s=5.0, steps_done=20, per_step_s=0.25) == 20  # never fewer than already run


def test_schedules_are_fitted_to_the_steps_the_budget_allows(tiny_subject, tmp_path, capsys, monkeypatch):
    """After the timed steps the learning-rate decay, the proposal warm-up and annealing and the AudioAttNet start
    all follow one step count, the one the measured rate fits into the budget (not the preset's estimate). A slow
    first step (here 2 s of sleep, standing for a kernel build) costs the budget its 2 s but does not count as the
    rate: the demo once fitted a 3,500-step run's schedules to 248 steps that way. Steps that get cheaper after the
    fit (here the timed steps 2-3 are 0.3 s slower than the rest) still end the learning-rate decay with the
    budget, not at the fitted count."""
    import re
    import time

    from nerfstudio.engine.trainer import Trainer

    from sahs_nerfstudio.checkpoint_io import list_checkpoints
    from sahs_nerfstudio.presets import fast_demo_trainer_config

    first = Trainer.train_iteration
    calls = []

    def slow_first_step(self, step):
        if len(calls) < 3:  # a 2 s first step, then two steps slower than the rest (a warm-up)
            time.sleep(2.0 if not calls else 0.3)
        calls.append(step)
        return first(self, step)

    monkeypatch.setattr(Trainer, "train_iteration", slow_first_step)
    budget = 6.0
    config = fast_demo_trainer_config(
        tiny_subject / "nerface", steps=100_000, rays=64, output_dir=tmp_path, train_seconds=budget, fit=True
    )
    config.fit_schedule_after = 3  # type: ignore[attr-defined]
    config.steps_per_save = 1_000_000
    _train(config)
    line = re.search(r"measured ([0-9.]+) s a step over steps 2-3: schedules fitted to (\d+) steps in the 6 s budget",
                     capsys.readouterr().out)  # fmt: skip
    assert line, "no schedule line"
    rate, steps = float(line.group(1)), int(line.group(2))
    # the rest of the budget (less the first 2.6 s) at the rate of steps 2-3, after the 3 steps run
    assert rate >= 0.3 and steps <= 3 + (budget - 2.6) / max(rate - 0.0005, 1e-4) + 1  # the rate is rounded
    # far more than the rate of all 3 steps (2 s of sleep in it) would allow
    assert steps > budget / ((2.0 + 2 * rate) / 3)
    assert len(calls) > steps  # the later, cheaper steps: more of them than fitted
    assert steps < 100_000  # the preset's estimate (100,000 steps here) is gone
    # the learning-rate decays follow the budget's clock: they end at their final rates when the budget ends,
    # however many steps that was (the first 2 s step included)
    newest = list_checkpoints(config.get_checkpoint_dir())
    last_step = newest[0][0]
    state = torch.load(newest[0][1], map_location="cpu", weights_only=False)
    assert {"fields", "proposal_networks"} <= state["schedulers"].keys()
    for name, saved in state["schedulers"].items():  # the groups this layout trains (no audio ones here)
        group = config.optimizers[name]
        scheduler = group["scheduler"]
        assert last_step + 1 <= scheduler.max_steps <= 1.1 * (last_step + 1) + 2
        reached = saved["_last_lr"][0] / saved["base_lrs"][0]
        final = scheduler.lr_final / group["optimizer"].lr
        assert final <= reached < final * 1.5, (name, reached, final)
    model = config.pipeline.model
    assert model.audio_attention_start_step == steps // 2  # type: ignore[attr-defined]
    assert model.proposal_warmup == steps // 4 and model.proposal_weights_anneal_max_num_iters == steps // 10  # type: ignore[attr-defined]


def test_a_resumed_budget_run_continues_the_decay_instead_of_raising_the_rate(tiny_subject, tmp_path, monkeypatch):
    """``--load-dir`` with a time budget: the resumed process's learning rates go on from where the checkpoint's
    decay stood (here: finished, at the final rate) and never climb back. Before, the budget's clock was applied to
    the global step (steps of both processes over this process's elapsed fraction), which right after the fit put
    the rate back near its start."""
    from nerfstudio.engine.trainer import Trainer

    from sahs_nerfstudio.checkpoint_io import list_checkpoints
    from sahs_nerfstudio.presets import fast_demo_trainer_config

    def run(out: Path, load_dir: Path | None, rates: list[float]) -> Path:
        config = fast_demo_trainer_config(
            tiny_subject / "nerface", steps=100_000, rays=64, output_dir=out, train_seconds=3.0, fit=True
        )
        config.fit_schedule_after = 3  # type: ignore[attr-defined]
        config.steps_per_save = 1_000_000
        config.load_dir = load_dir
        original = Trainer.train_iteration

        def recording(self, step):
            result = original(self, step)
            rates.append(self.optimizers.schedulers["fields"].get_last_lr()[0])
            return result

        monkeypatch.setattr(Trainer, "train_iteration", recording)
        _train(config)
        monkeypatch.setattr(Trainer, "train_iteration", original)
        return config.get_checkpoint_dir()

    first: list[float] = []
    checkpoints = run(tmp_path / "first", None, first)
    lr, lr_final = 1e-2, 1e-2 / 30  # fast_optimizers' fields group
    assert first[-1] < 1.5 * lr_final, first[-1]  # the first budget ended its decay
    saved = torch.load(list_checkpoints(checkpoints)[0][1], map_location="cpu", weights_only=False)
    assert saved["decay_steps"] >= int(saved["step"]) + 1  # where the decay stood travels with the checkpoint
    resumed: list[float] = []
    run(tmp_path / "resumed", checkpoints, resumed)
    assert len(resumed) > 3
    # never above the rate the first run ended at (a little slack for the clock's rounding)
    assert max(resumed) <= first[-1] * 1.05, (first[-1], max(resumed), lr)


def test_demo_from_a_video_processes_trains_and_renders(tmp_path):
    """``sahs-demo --video``: sahs-process on a moving-photo video (the sahs-process tests' construction),
    then sahs-fast on its NeRFace layout, then the held-out render and its metrics."""
    import moving_photo as mp

    from sahs_nerfstudio.scripts.demo import DemoConfig, run

    truth = mp.make_motion(40, size=256, seed=0)
    video = tmp_path / "astronaut.mp4"
    mp.write_moving_photo(video, truth)  # no audio track: the expression (NeRFace) layout only
    render = tmp_path / "renders" / "demo.mp4"
    metrics = run(
        DemoConfig(
            video=video,
            data=tmp_path / "processed",
            process_size=256,
            steps=3,
            rays=64,
            refine=False,
            output_dir=tmp_path / "outputs",
            render_path=render,
            max_frames=1,
        )
    )
    assert (tmp_path / "processed" / "nerface" / "transforms_train.json").is_file()
    assert render.is_file() and render.with_suffix(".json").is_file()
    assert metrics["num_frames"] == 1 and math.isfinite(metrics["psnr"])


# ----------------------------------------------------------------------------------------------
# The mouth: open / closed split and the class-share sampler


def test_mouth_state_follows_the_ground_truth_interior():
    labels = torch.full((10, 10), SKIN)
    assert mouth_state(labels) is None  # no mouth in the frame
    labels[4, 2:8] = LIPS
    assert mouth_state(labels) == "closed"
    labels[5, 3:6] = MOUTH_INTERIOR  # 3 of 9 mouth pixels: open
    assert mouth_state(labels) == "open"
    means = mouth_state_means(
        [{"mouth_psnr": 20.0}, {"mouth_psnr": 24.0}, {"mouth_psnr": 10.0}, {"psnr": 1.0}],
        ["open", "open", "closed", None],
    )
    assert means == {
        "frames_mouth_open": 2.0,
        "mouth_psnr_open": 22.0,
        "frames_mouth_closed": 1.0,
        "mouth_psnr_closed": 10.0,
    }
    with pytest.raises(ValueError, match="mouth states"):
        mouth_state_means([{"mouth_psnr": 1.0}], [])


def test_class_area_exponent_gives_each_class_its_probability_share_of_rays():
    from sahs_nerfstudio.samplers.semantic_sampler import SemanticPixelSampler, SemanticPixelSamplerConfig

    torch.manual_seed(0)
    counts = {SKIN: 500, MOUTH_INTERIOR: 6, LIPS: 14}  # the rest (200) background
    flat = torch.zeros(720, dtype=torch.long)
    pos = 0
    for cls, n in counts.items():
        flat[pos : pos + n] = cls
        pos += n
    batch = {
        "image": torch.rand(2, 18, 20, 3),
        "image_idx": torch.arange(2),
        "semantics": flat[torch.randperm(720)].view(2, 18, 20, 1),
    }
    probs = torch.full((NUM_CLASSES,), 0.05)
    probs[MOUTH_INTERIOR] = probs[LIPS] = 0.2
    for exponent in (0.0, 1.0):
        sampler = SemanticPixelSamplerConfig(class_area_exponent=exponent).setup(num_rays_per_batch=4096)
        assert isinstance(sampler, SemanticPixelSampler)
        sampler.set_class_probabilities(probs)
        drawn = torch.cat([sampler.sample(batch)["semantics"].view(-1) for _ in range(10)])
        observed = torch.bincount(drawn, minlength=NUM_CLASSES).numpy().astype(np.float64)
        present = [0, SKIN, MOUTH_INTERIOR, LIPS]
        area = np.array([200, 500, 6, 14], dtype=np.float64)
        mass = probs.numpy()[present].astype(np.float64) * area ** (1.0 - exponent)
        expected = mass / mass.sum() * observed.sum()
        assert observed.sum() == observed[present].sum()
        assert chisquare(observed[present], expected).pvalue > 1e-3
    # with exponent 1 the mouth gets its classes' share (0.4 of 0.5 in all), not its ~3 % of the pixels
    mouth_share = (observed[MOUTH_INTERIOR] + observed[LIPS]) / observed.sum()
    assert 0.75 < mouth_share < 0.85
    with pytest.raises(ValueError, match="class_area_exponent"):
        SemanticPixelSamplerConfig(class_area_exponent=1.5).setup(num_rays_per_batch=8)
