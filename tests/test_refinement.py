"""Stage II refiner: shapes, training, resume, refining, evaluation, errors and the CLI (tiny, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from learned import test_seed
from PIL import Image

from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.refinement import (
    RefinerNetwork,
    RefinerNetworkConfig,
    RefinerTrainConfig,
    evaluate_refiner,
    find_latest_checkpoint,
    load_refiner,
    lr_factor,
    pad_to_stride,
    read_checkpoint,
    refine_frames,
    render_stage_one,
    train_refiner,
)
from sahs_nerfstudio.refinement.io import load_image
from sahs_nerfstudio.scripts import refine as refine_cli

SMALL = RefinerNetworkConfig(channels=(8, 16, 32), spade_hidden=16)
H, W = 24, 32


def _config(**kwargs) -> RefinerTrainConfig:
    base = RefinerTrainConfig(
        network=SMALL, epochs=2, decay_epochs=1, lr=2e-3, num_workers=0, device="cpu", patience=None, seed=test_seed()
    )
    return replace(base, **kwargs)


def _default_config() -> RefinerTrainConfig:
    """The defaults on the CPU, seeded by the suite's seed."""
    return RefinerTrainConfig(device="cpu", num_workers=0, seed=test_seed())


def _smooth_image(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((1, 3, 3, 4), dtype=np.float32))
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    yy = torch.linspace(0, 6.28, h)[:, None]
    xx = torch.linspace(0, 6.28, w)[None, :]
    img = img + 0.15 * torch.sin(3 * xx + 2 * yy)[None]
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _degrade(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fake Stage-I render: blurred, darkened, noisy ground truth (something to learn)."""
    x = torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 255
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = 0.8 * x + 0.05 + 0.03 * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def make_pairs(root: Path, n: int = 6, h: int = H, w: int = W, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    renders, gts = root / "renders", root / "gt"
    renders.mkdir(parents=True, exist_ok=True)
    gts.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gt = _smooth_image(rng, h, w)
        Image.fromarray(gt).save(gts / f"{i}.png")
        Image.fromarray(_degrade(gt, rng)).save(renders / f"{i}.png")
    return renders, gts


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


# ----------------------------------------------------------------------------------------------
# Network


@pytest.mark.parametrize("audio", [False, True], ids=["identity", "audio"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 53), (20, 30), (5, 7)])
def test_output_has_input_size(size: tuple[int, int], audio: bool) -> None:
    net = RefinerNetwork(replace(SMALL, audio=audio)).eval()
    render = torch.rand(2, 3, *size)
    identity = torch.rand(1, 3, 29, 41)  # any identity photo size
    windows = torch.randn(2, 16, 29) if audio else None
    with torch.no_grad():
        out = net(render, identity, windows)
    assert out.shape == render.shape
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("mode", ["concat", "replace"])
def test_audio_code_changes_output(mode: str) -> None:
    net = RefinerNetwork(replace(SMALL, audio=True, audio_mode=mode)).eval()
    assert net.delta is not None
    torch.nn.init.normal_(net.delta.weight, std=0.1)  # as after training: the zero-initialised correction ignores audio
    render, identity = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        a = net(render, identity, torch.randn(1, 16, 29), clamp=False)
        b = net(render, identity, torch.randn(1, 16, 29), clamp=False)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="audio"):
        net(render, identity, None)


def test_identity_features_match_block_scales() -> None:
    net = RefinerNetwork(SMALL)
    feats = net.encode_identity(torch.rand(1, 3, 64, 48))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 32, 24), (16, 16, 12), (32, 8, 6)]


def test_pad_to_stride() -> None:
    x, h, w = pad_to_stride(torch.rand(1, 3, 37, 53))
    assert (h, w) == (37, 53) and x.shape[-2:] == (40, 56)
    x, _, _ = pad_to_stride(torch.rand(1, 3, 5, 7))  # too small to reflect: replicate, at least 16
    assert x.shape[-2:] == (16, 16)
    x0 = torch.rand(1, 3, 16, 24)
    assert pad_to_stride(x0)[0] is x0


def test_defaults_and_schedule() -> None:
    cfg = RefinerTrainConfig()
    assert cfg.network.architecture == "residual" and cfg.validation_fraction > 0
    assert cfg.betas == (0.0, 0.999) and cfg.batch_size == 1
    assert cfg.total_epochs == cfg.epochs + 2
    assert replace(cfg, decay_epochs=None).total_epochs == 2 * cfg.epochs  # the published schedule
    assert lr_factor(0, 3, 3) == 1.0 and lr_factor(2, 3, 3) == 1.0
    assert lr_factor(3, 3, 3) == pytest.approx(0.75) and lr_factor(5, 3, 3) == pytest.approx(0.25)


# ----------------------------------------------------------------------------------------------
# Training, resume, refine, eval


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("refine")
    renders, gts = make_pairs(root / "train", n=6)
    result = train_refiner(renders, gts, root / "out", _config(epochs=4, decay_epochs=2), show_progress=False)
    return {"root": root, "renders": renders, "gts": gts, "result": result}


@pytest.mark.learning
def test_training_lowers_loss(trained: dict, learned) -> None:
    losses = trained["result"].epoch_losses
    assert len(losses) == 6
    learned.below("last / first epoch loss", losses[-1] / losses[0], 0.5, losses)
    out = trained["root"] / "out"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["lr"] == pytest.approx(2e-3 / 3)
    # only the latest and the best checkpoint are kept, and no temporary files are left behind
    # each with the SHA-256 the one checkpoint writer records (older epochs pruned with theirs)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.ckpt", "best.ckpt.sha256", "epoch-0006.ckpt", "epoch-0006.ckpt.sha256"]
    result = trained["result"]
    assert result.latest_checkpoint.name == "epoch-0006.ckpt" and result.checkpoint.name == "best.ckpt"
    # validation: the last of the 6 pairs, scored at epoch 0 (the identity) and after every epoch
    assert json.loads((out / "config.json").read_text())["validation"] == ["5"]
    assert len(result.val_psnrs) == 7 and [r["val_psnr"] for r in log] == pytest.approx(result.val_psnrs[1:])
    assert result.best_epoch == int(np.argmax(result.val_psnrs))
    assert read_checkpoint(result.checkpoint)["epoch"] == result.best_epoch


def test_resume_continues_from_saved_epoch(tmp_path: Path) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=3)
    full = train_refiner(renders, gts, tmp_path / "full", _config(), show_progress=False)
    # "interrupted" after the two constant-lr epochs, then resumed with the full schedule
    first = train_refiner(renders, gts, tmp_path / "resumed", _config(decay_epochs=0), show_progress=False)
    assert first.epochs_run == 2 and first.latest_checkpoint == find_latest_checkpoint(tmp_path / "resumed")
    assert first.latest_checkpoint is not None and first.latest_checkpoint.name == "epoch-0002.ckpt"
    second = train_refiner(renders, gts, tmp_path / "resumed", _config(), show_progress=False)
    assert second.start_epoch == 2 and second.epochs_run == 1
    assert second.epoch_losses == pytest.approx(full.epoch_losses, rel=1e-5)
    assert second.val_psnrs == pytest.approx(full.val_psnrs, rel=1e-6) and second.best_epoch == full.best_epoch
    assert full.latest_checkpoint is not None and second.latest_checkpoint is not None
    a, b = read_checkpoint(full.latest_checkpoint)["model"], read_checkpoint(second.latest_checkpoint)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # already done: nothing to run
    again = train_refiner(renders, gts, tmp_path / "resumed", _config(), show_progress=False)
    assert again.epochs_run == 0
    # resuming with another architecture is refused with a clear message
    with pytest.raises(FormatError, match="network_config.*another network config"):
        train_refiner(renders, gts, tmp_path / "resumed", _config(network=RefinerNetworkConfig()), show_progress=False)


def test_refine_writes_frames_and_video(trained: dict, tmp_path: Path) -> None:
    ckpt = trained["result"].checkpoint
    out_dir, video = tmp_path / "refined", tmp_path / "refined.mp4"
    written = refine_frames(ckpt, trained["renders"], out_dir, video=video, fps=10, device="cpu", show_progress=False)
    assert [p.name for p in written] == [f"{i}.png" for i in range(6)]
    for path in written:
        assert np.asarray(Image.open(path)).shape == (H, W, 3)
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (H, W, 3)
    # an mp4 as input (frames named by index)
    from_video = refine_frames(ckpt, video, tmp_path / "from_video", device="cpu", show_progress=False)
    assert [p.name for p in from_video] == [f"{i:05d}.png" for i in range(6)]


def test_eval_json(trained: dict, tmp_path: Path) -> None:
    ckpt = trained["result"].checkpoint
    out_json = tmp_path / "metrics.json"
    report = evaluate_refiner(
        ckpt, trained["renders"], trained["gts"], out_json, device="cpu", lpips=False, show_progress=False
    )
    saved = json.loads(out_json.read_text())
    assert saved == report
    assert saved["method_name"] == "sahs-refine" and saved["checkpoint"] == str(ckpt)
    assert saved["experiment_name"] == "out"
    results = saved["results"]
    assert {"psnr_before", "psnr_after", "ssim_before", "ssim_after", "num_images"} <= set(results)
    assert results["num_images"] == 6
    refined = refine_frames(ckpt, trained["renders"], tmp_path / "refined", device="cpu", show_progress=False)
    before, after = [], []
    for i, path in enumerate(refined):
        gt = np.asarray(Image.open(trained["gts"] / f"{i}.png"))
        before.append(_psnr(np.asarray(Image.open(trained["renders"] / f"{i}.png")), gt))
        after.append(_psnr(np.asarray(Image.open(path)), gt))
    assert results["psnr_before"] == pytest.approx(np.mean(before), abs=1e-3)
    assert results["psnr_after"] == pytest.approx(np.mean(after), abs=1e-3)
    assert -1 <= results["ssim_after"] <= 1


def test_lpips_is_skipped_with_one_message_when_weights_are_absent(trained: dict, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no_hub"))
    report = evaluate_refiner(
        trained["result"].checkpoint, trained["renders"], trained["gts"], device="cpu", show_progress=False
    )
    assert "lpips_before" not in report["results"]
    assert "AlexNet" in report["lpips_skipped"] and "no_hub" in report["lpips_skipped"]


def test_audio_variant_trains_and_refines(tmp_path: Path) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=3)
    aud = tmp_path / "aud.npy"
    np.save(aud, np.random.default_rng(0).standard_normal((5, 16, 29)).astype(np.float32))
    cfg = _config(network=replace(SMALL, audio=True), epochs=1, decay_epochs=0)
    result = train_refiner(renders, gts, tmp_path / "out", cfg, audio=aud, show_progress=False)
    assert result.checkpoint is not None
    written = refine_frames(result.checkpoint, renders, tmp_path / "r", audio=aud, device="cpu", show_progress=False)
    assert len(written) == 3
    with pytest.raises(FormatError, match="'--audio': expected FEATURES.npy .*audio-variant"):
        refine_frames(result.checkpoint, renders, tmp_path / "r2", device="cpu", show_progress=False)
    per_frame = tmp_path / "per_frame.npy"  # per-frame features [N, C] are windowed on the fly
    np.save(per_frame, np.zeros((2, 29), dtype=np.float32))
    with pytest.raises(FormatError, match="needs row 2"):
        refine_frames(result.checkpoint, renders, tmp_path / "r3", audio=per_frame, device="cpu", show_progress=False)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_give_clear_errors(tmp_path: Path, trained: dict) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=2)
    cfg = _config(epochs=1, decay_epochs=0)
    with pytest.raises(
        FormatError, match=r"missing: field '--renders': expected a folder of images, found no such folder"
    ):
        train_refiner(tmp_path / "missing", gts, tmp_path / "o", cfg, show_progress=False)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(renders / "extra.png")
    with pytest.raises(
        FormatError,
        match=r"'--ground-truth': expected a frame with the name of every render .*found 1 of 3 renders without one \(e\.g\. extra\.png\)",
    ):
        train_refiner(renders, gts, tmp_path / "o", cfg, show_progress=False)
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(gts / "extra.png")
    with pytest.raises(
        FormatError,
        match=r"gt/extra\.png: field '--ground-truth': expected the size of .*renders/extra\.png, 32x24, found 32x26",
    ):
        train_refiner(renders, gts, tmp_path / "o", cfg, show_progress=False)
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(
        FormatError,
        match=r"bogus\.ckpt: field 'format': expected 'sahs-refiner' \(a refiner checkpoint\), found no 'format' key",
    ):
        load_refiner(bogus)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(
        FormatError,
        match=r"text\.ckpt: field '--checkpoint': expected a refiner checkpoint, found not a torch\.save file",
    ):
        load_refiner(tmp_path / "text.ckpt")
    with pytest.raises(
        FormatError, match="nothing: field '--input': expected a folder of images or a video, found no such file"
    ):
        refine_frames(trained["result"].checkpoint, tmp_path / "nothing", tmp_path / "o2", show_progress=False)


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_train_render_eval(tmp_path: Path, capsys) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=2)
    out = tmp_path / "run"
    common = ["--network.channels", "8", "16", "32", "--network.spade-hidden", "16", "--num-workers", "0"]
    args = ["train", "--renders", str(renders), "--ground-truth", str(gts), "--output", str(out), "--epochs", "1"]
    assert refine_cli.main([*args, *common, "--decay-epochs", "1", "--device", "cpu", "--no-progress"]) == 0
    ckpt = out / "checkpoints" / "epoch-0002.ckpt"
    assert ckpt.is_file()
    video = tmp_path / "v.mp4"
    args = ["render", "--checkpoint", str(ckpt), "--input", str(renders), "--output", str(tmp_path / "r")]
    assert refine_cli.main([*args, "--video", str(video), "--fps", "25", "--device", "cpu", "--no-progress"]) == 0
    assert video.is_file() and len(list((tmp_path / "r").glob("*.png"))) == 2
    metrics = tmp_path / "m.json"
    args = ["eval", "--checkpoint", str(ckpt), "--renders", str(renders), "--ground-truth", str(gts)]
    assert refine_cli.main([*args, "--output", str(metrics), "--no-lpips", "--device", "cpu", "--no-progress"]) == 0
    assert "psnr_after" in json.loads(metrics.read_text())["results"]
    capsys.readouterr()
    # a bad checkpoint: exit code 2 and one clear line
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    args = ["eval", "--checkpoint", str(tmp_path / "x.ckpt"), "--renders", str(renders), "--ground-truth", str(gts)]
    assert refine_cli.main([*args, "--output", str(metrics), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[0]
    assert (
        err.startswith("sahs-refine: error: ") and "x.ckpt: field '--checkpoint': expected a refiner checkpoint" in err
    )


def test_render_stage_one_reuses_renders_on_disk(tmp_path: Path) -> None:
    renders, gts = make_pairs(tmp_path / "stage1" / "train", n=2)
    (renders.parent / "manifest.json").write_text(json.dumps({"names": ["0", "1"]}))
    # the config file does not even exist: reuse must not load the nerfstudio pipeline
    assert render_stage_one(tmp_path / "no-config.yml", "train", renders.parent) == (renders, gts)
    (renders / "1.png").unlink()
    with pytest.raises(
        FormatError, match=r"no-config\.yml: field '<file>': expected a run's config\.yml .*found no such file"
    ):
        render_stage_one(tmp_path / "no-config.yml", "train", renders.parent)


# ----------------------------------------------------------------------------------------------
# Bad input on the command line: one line on stderr, exit status 2, a traceback only with SAHS_DEBUG=1

TINY = ["--network.channels", "8", "16", "32", "--network.spade-hidden", "16", "--device", "cpu", "--no-progress"]


def _error_line(stderr: str) -> str:
    """The one ``sahs-refine: error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("sahs-refine: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def _cli_subprocess(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environ.pop("SAHS_DEBUG", None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sahs_nerfstudio.scripts.refine", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=600,
    )


def _nerfacto_run(root: Path) -> Path:
    """A nerfacto run's config.yml, as ns-train writes it (no checkpoint needed: it must be refused first)."""
    import yaml
    from nerfstudio.configs.method_configs import method_configs

    config: Any = deepcopy(method_configs["nerfacto"])
    config.output_dir = root / "outputs"
    config.pipeline.datamanager.data = root / "data"
    path = root / "outputs" / "nerfacto-run" / "config.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.dump(config))
    return path


def test_cli_refuses_a_nerfacto_run_without_fetching_alexnet(tmp_path: Path) -> None:
    config = _nerfacto_run(tmp_path)
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    proc = _cli_subprocess(
        ["train", "--load-config", str(config), "--output", str(tmp_path / "refine")],
        tmp_path,
        TORCH_HOME=str(torch_home),
    )
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert f"{config}: field 'method_name': expected a SAHS run" in line and "found 'nerfacto'" in line
    assert list(torch_home.rglob("*")) == []  # nothing was fetched (nor tried: torch.hub makes its folder first)
    assert not (tmp_path / "refine").exists()


def test_cli_render_of_a_garbage_video_is_one_line(tmp_path: Path, trained: dict) -> None:
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    args = ["render", "--checkpoint", str(trained["result"].checkpoint), "--input", str(garbage)]
    proc = _cli_subprocess([*args, "--output", str(tmp_path / "out"), "--device", "cpu"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{garbage}: field '--input': expected a readable video, found " in _error_line(proc.stderr)
    assert not (tmp_path / "out").exists()


def test_cli_traceback_only_with_sahs_debug(tmp_path: Path) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=2)
    args = [
        "train",
        "--renders",
        str(renders),
        "--ground-truth",
        str(gts),
        "--output",
        str(tmp_path / "o"),
        "--lr",
        "-1",
    ]
    proc = _cli_subprocess([*args, *TINY], tmp_path, SAHS_DEBUG="1")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "FormatError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sahs-refine: error: <command line>: field '--lr'")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("lr", "field '--lr': expected a positive learning rate, found -1.0"),
        ("betas", "field '--betas': expected two values in [0, 1), found (1.5, 0.999)"),
        ("num-workers", "field '--num-workers': expected an integer >= 0, found -1"),
        ("keep-checkpoints", "field '--keep-checkpoints': expected an integer >= 1, found 0"),
        ("device", "field '--device': expected auto, cpu, cuda or cuda:N, found gpu0"),
        ("nan-audio", "aud.npy: field '--audio': expected finite numbers, found NaN or infinity"),
        ("render-fps", "field '--fps': expected a positive frame rate, found 0.0"),
        ("render-audio", "aud.npy: field '--audio': expected no audio: "),
        ("render-video-folder", "video: field '--video': expected an mp4 file name, found a folder"),
        ("eval-output-folder", "metrics: field '--output': expected a JSON file name, found a folder"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    case: str, expected: str, tmp_path: Path, trained: dict, capsys
) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=2)
    aud = tmp_path / "aud.npy"
    np.save(aud, np.full((2, 16, 29), np.nan, dtype=np.float32))
    (tmp_path / "video").mkdir()
    (tmp_path / "metrics").mkdir()
    train = ["train", "--renders", str(renders), "--ground-truth", str(gts), "--output", str(tmp_path / "o"), *TINY]
    ckpt = str(trained["result"].checkpoint)
    render = ["render", "--checkpoint", ckpt, "--input", str(renders), "--output", str(tmp_path / "r"), "--no-progress"]
    args = {
        "lr": [*train, "--lr", "-1"],
        "betas": [*train, "--betas", "1.5", "0.999"],
        "num-workers": [*train, "--num-workers", "-1"],
        "keep-checkpoints": [*train, "--keep-checkpoints", "0", "--num-workers", "0"],
        "device": [*train, "--device", "gpu0"],
        "nan-audio": [*train, "--network.audio", "--audio", str(aud), "--num-workers", "0"],
        "render-fps": [*render, "--video", str(tmp_path / "v.mp4"), "--fps", "0"],
        "render-audio": [*render, "--audio", str(aud), "--device", "cpu"],
        "render-video-folder": [*render, "--video", str(tmp_path / "video"), "--device", "cpu"],
        "eval-output-folder": [
            *["eval", "--checkpoint", ckpt, "--renders", str(renders), "--ground-truth", str(gts)],
            *["--output", str(tmp_path / "metrics"), "--no-lpips", "--device", "cpu", "--no-progress"],
        ],
    }[case]
    assert refine_cli.main(args) == 2
    assert expected in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "o" / "checkpoints").exists() and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------------
# The residual refiner (default) against the published one, on real photos


def _photo_frames(root: Path, blur: float | None, n: int = 6, size: int = 40) -> tuple[Path, Path]:
    """Crops of scikit-image's astronaut and cat photos, downscaled: sharp ground truth, renders = GT or blurred."""
    from PIL import ImageFilter
    from skimage import data

    renders, gts = root / "renders", root / "gt"
    renders.mkdir(parents=True)
    gts.mkdir(parents=True)
    photos = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]
    for i in range(n):
        photo = photos[i % 2]
        side = min(photo.size) * 2 // 3
        x0 = (photo.size[0] - side) * (i // 2) // max(1, (n - 1) // 2)
        crop = photo.crop((x0, 0, x0 + side, side)).resize((size, size), Image.Resampling.LANCZOS)
        crop.save(gts / f"{i}.png")
        (crop if blur is None else crop.filter(ImageFilter.GaussianBlur(blur))).save(renders / f"{i}.png")
    return renders, gts


def _mean_psnr(renders: Path, gts: Path, refined: list[Path] | None = None) -> float:
    paths = refined or sorted(renders.glob("*.png"))
    return float(np.mean([_psnr(np.asarray(Image.open(p)), np.asarray(Image.open(gts / p.name))) for p in paths]))


def test_default_refiner_is_the_identity_before_training() -> None:
    net = RefinerNetwork(RefinerNetworkConfig()).eval()
    assert net.config.architecture == "residual"
    render = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(net(render, torch.rand(1, 3, 20, 28)), render)
    published = RefinerNetwork(RefinerNetworkConfig(architecture="published")).eval()
    with torch.no_grad():
        assert (published(render, torch.rand(1, 3, 20, 28)) - render).abs().mean() > 0.05
    # the published network keeps its own parameter names (old checkpoints load), the residual one adds a skip head
    names = set(published.state_dict())
    assert {"out.weight", "out.bias"} <= names and not any(k.startswith(("head.", "delta.")) for k in names)
    assert "delta.weight" in net.state_dict() and "out.weight" not in net.state_dict()


@pytest.mark.learning
def test_default_refiner_keeps_a_sharp_input_sharp(tmp_path: Path, learned) -> None:
    """Trained with the defaults on sharp photos as both render and target, the refiner changes almost nothing."""
    renders, gts = _photo_frames(tmp_path / "data", blur=None, n=8, size=32)
    result = train_refiner(renders, gts, tmp_path / "out", _default_config(), show_progress=False)
    assert result.checkpoint is not None
    refined = refine_frames(result.checkpoint, renders, tmp_path / "refined", device="cpu", show_progress=False)
    # the render is the target: PSNR before is infinite; after must stay at 8-bit rounding level
    learned.above("sharp input, residual refiner PSNR (dB)", _mean_psnr(renders, gts, refined), 45.0)
    # the published network, trained the same way, has to learn to reproduce its input, and does so blurrily
    published = replace(_default_config(), network=RefinerNetworkConfig(architecture="published"))
    result = train_refiner(renders, gts, tmp_path / "published", published, show_progress=False)
    assert result.checkpoint is not None
    refined = refine_frames(result.checkpoint, renders, tmp_path / "refined_pub", device="cpu", show_progress=False)
    learned.below("sharp input, published refiner PSNR (dB)", _mean_psnr(renders, gts, refined), 35.0)


@pytest.mark.learning
def test_default_refiner_sharpens_a_blurred_input(tmp_path: Path, learned) -> None:
    renders, gts = _photo_frames(tmp_path / "data", blur=0.8, n=12, size=32)
    result = train_refiner(renders, gts, tmp_path / "out", _default_config(), show_progress=False)
    assert result.checkpoint is not None and result.best_epoch is not None
    refined = refine_frames(result.checkpoint, renders, tmp_path / "refined", device="cpu", show_progress=False)
    before, after = _mean_psnr(renders, gts), _mean_psnr(renders, gts, refined)
    learned.above("blurred input, PSNR gain (dB)", after - before, 1.0, (before, after))
    # the kept epoch is the best on the validation frame, the identity (epoch 0) included
    assert result.val_psnrs[result.best_epoch] == max(result.val_psnrs) >= result.val_psnrs[0]


def test_published_refiner_is_selectable_from_the_cli_and_loads_old_checkpoints(tmp_path: Path) -> None:
    renders, gts = _photo_frames(tmp_path / "data", blur=0.8, n=2, size=24)
    out = tmp_path / "run"
    args = ["train", "--renders", str(renders), "--ground-truth", str(gts), "--output", str(out), "--epochs", "1"]
    extra = ["--network.architecture", "published", "--num-workers", "0", "--validation-fraction", "0"]
    extra += ["--decay-epochs", "1"]
    assert refine_cli.main([*args, *TINY, *extra]) == 0
    ckpt = out / "checkpoints" / "epoch-0002.ckpt"
    state = read_checkpoint(ckpt)
    assert state["network_config"]["architecture"] == "published" and state["version"] == 2
    assert load_refiner(ckpt, "cpu").model.out is not None
    # a checkpoint written before the architecture field existed (version 1) is the published network
    old = {
        **state,
        "version": 1,
        "network_config": {k: v for k, v in state["network_config"].items() if k != "architecture"},
    }
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_refiner(tmp_path / "old.ckpt", "cpu")
    assert loaded.model.config.architecture == "published"
    image = torch.rand(3, 24, 24)
    assert torch.equal(loaded.refine(image), load_refiner(ckpt, "cpu").refine(image))
    written = refine_frames(tmp_path / "old.ckpt", renders, tmp_path / "r", device="cpu", show_progress=False)
    assert len(written) == 2


def test_checkpoint_round_trip_records_the_architecture(trained: dict) -> None:
    ckpt = trained["result"].checkpoint
    state = read_checkpoint(ckpt)
    assert state["network_config"]["architecture"] == "residual"
    loaded = load_refiner(ckpt, "cpu")
    net = RefinerNetwork(SMALL)
    net.load_state_dict(state["model"])
    net.eval()
    image = load_image(trained["renders"] / "0.png")
    with torch.no_grad():
        assert torch.allclose(loaded.refine(image), net(image[None], state["identity"].float()[None] / 255)[0])


def test_run_stage_two_on_a_trained_run(tiny_run_expression: Path, tmp_path: Path) -> None:
    from sahs_nerfstudio.refinement import run_stage_two

    out = tmp_path / "stage2"
    (out / "refined").mkdir(parents=True)
    (out / "refined" / "stale.png").write_bytes(b"left by an earlier run")
    cfg = _config(epochs=1, decay_epochs=0)
    report = run_stage_two(tiny_run_expression, out, cfg, show_progress=False)
    eval_renders, eval_gt = out / "stage1" / "eval" / "renders", out / "stage1" / "eval" / "gt"
    names = sorted(p.name for p in eval_renders.glob("*.png"))
    assert names and sorted(p.name for p in (out / "refined").iterdir()) == names  # the stale file is gone
    assert len(list((out / "stage1" / "train" / "renders").glob("*.png"))) > len(names)
    assert json.loads((out / "metrics.json").read_text())["results"]["psnr_after"] == report["psnr_after"]
    assert report["num_images"] == len(names) and report["best_epoch"] in (0, 1)
    assert report["psnr_before"] == pytest.approx(_mean_psnr(eval_renders, eval_gt), abs=1e-3)
    refined = sorted((out / "refined").glob("*.png"))
    assert report["psnr_after"] == pytest.approx(_mean_psnr(eval_renders, eval_gt, refined), abs=1e-3)


def test_early_stopping_and_time_budget(tmp_path: Path) -> None:
    renders, gts = make_pairs(tmp_path / "data", n=4)
    # a learning rate too small to change anything: no epoch beats the identity, training stops after `patience`
    # epochs and returns the untrained refiner (epoch 0), i.e. the Stage-I renders unchanged
    stuck = train_refiner(
        renders, gts, tmp_path / "stuck", _config(lr=1e-12, epochs=6, patience=2), show_progress=False
    )
    assert stuck.epochs_run == 2 and stuck.best_epoch == 0 and stuck.checkpoint is not None
    assert read_checkpoint(stuck.checkpoint)["epoch"] == 0
    written = refine_frames(stuck.checkpoint, renders, tmp_path / "r", device="cpu", show_progress=False)
    assert all(np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(renders / p.name))) for p in written)
    # a rerun with the same schedule has nothing left to do
    assert (
        train_refiner(
            renders, gts, tmp_path / "stuck", _config(lr=1e-12, epochs=6, patience=2), show_progress=False
        ).epochs_run
        == 0
    )
    quick = train_refiner(renders, gts, tmp_path / "quick", _config(epochs=6, time_budget_s=1e-6), show_progress=False)
    assert quick.epochs_run == 1


def test_a_refiner_checkpoint_changed_since_it_was_saved_is_named(trained: dict, tmp_path: Path) -> None:
    """Refiner checkpoints go through the project's one checkpoint writer: a file cut short after saving fails its
    recorded checksum with one line, before any unpickling."""
    import shutil

    best = trained["result"].checkpoint
    copy = tmp_path / best.name
    shutil.copy(best, copy)
    shutil.copy(best.with_name(best.name + ".sha256"), tmp_path / (best.name + ".sha256"))
    read_checkpoint(copy)  # intact
    copy.write_bytes(copy.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"best\.ckpt: field '<sha256>': expected [0-9a-f]{16}\.\.\. as recorded"):
        read_checkpoint(copy)
