"""Driven rendering (``sahs-render``): every driver kind, camera path, audio muxing and bad input.

The runs are the tiny session fixtures of ``conftest.py`` (40 steps on a 32x32 subject): these tests
check the plumbing (frame counts, sizes, audio streams, codes reaching the model), not quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.sahs_dataparser import read_labels
from sahs_nerfstudio.data.semantics import MOUTH_CLASSES
from sahs_nerfstudio.data.synthetic import CONTROL_NAMES, SUBJECT_FILE
from sahs_nerfstudio.driving.sequence import check_driver, load_driver
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.rendering import driven
from sahs_nerfstudio.rendering.driven import render_driven_video
from sahs_nerfstudio.scripts import render as render_cli
from sahs_nerfstudio.utils.run_loader import load_run
from sahs_nerfstudio.utils.video import read_video_frames

FPS = 25.0


@pytest.fixture(scope="module")
def expression_run(tiny_run_expression):
    config, pipeline, _, _ = load_run(tiny_run_expression)
    return tiny_run_expression, (config, pipeline)


@pytest.fixture(scope="module")
def audio_run(tiny_run_audio):
    config, pipeline, _, _ = load_run(tiny_run_audio)
    return tiny_run_audio, (config, pipeline)


def _streams(path: Path) -> dict:
    """Video frame count and size, and the audio stream's duration (None without audio)."""
    frames = [frame for _, frame in read_video_frames(path)]
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_seconds = None
        if audio is not None:
            samples = sum(frame.samples for frame in container.decode(audio))
            audio_seconds = samples / audio.rate
    return {
        "frames": len(frames),
        "height": frames[0].shape[0],
        "width": frames[0].shape[1],
        "audio_seconds": audio_seconds,
        "images": np.stack(frames).astype(np.float32),
    }


def _write_wav(path: Path, seconds: float, rate: int, loud: bool = True) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) if loud else np.full_like(t, 0.01)
    tone = envelope * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t))
    soundfile.write(path, (0.3 * tone).astype(np.float32), rate)
    return path


# ----------------------------------------------------------------------------------------------
# One video per driver kind


def test_expression_json_driver_fixed_camera(expression_run, tiny_subject, tmp_path, monkeypatch):
    config, loaded = expression_run
    driver = tiny_subject / "nerface" / "transforms_train.json"
    out = tmp_path / "json.mp4"
    renders = _float_renders(monkeypatch, loaded[1].model)
    result = render_driven_video(
        config, out, driver=driver, cameras="frame", frame=1, max_frames=5, loaded=loaded, split="train"
    )
    got = _streams(out)
    assert (got["frames"], got["width"], got["height"]) == (5, 32, 32)
    assert got["audio_seconds"] is None  # expressions carry no audio
    assert result.num_frames == 5 and result.render_fps > 0
    # A fixed camera: the frames differ only where the driving expressions do (compared as floats: at 8 bits the
    # 40-step tiny run's frames 0 and 4 were identical at seed 0).
    assert len(renders) == 5 and not torch.equal(renders[0], renders[4])


def test_expression_npy_driver_orbit(expression_run, tiny_subject, tmp_path):
    config, loaded = expression_run
    split = formats.read_nerface_split(tiny_subject / "nerface", "train")
    codes = np.stack([fr.expression for fr in split.frames[:1]] * 6).astype(np.float32)  # one expression, [6, 76]
    np.save(tmp_path / "codes.npy", codes)
    out = tmp_path / "orbit.mp4"
    render_driven_video(config, out, driver=tmp_path / "codes.npy", cameras="orbit", orbit_degrees=25, loaded=loaded)
    got = _streams(out)
    assert (got["frames"], got["width"], got["height"]) == (6, 32, 32)
    # One expression, a moving camera: frame 0 (angle 0) and frame 1 (angle > 0) differ.
    assert np.abs(got["images"][0] - got["images"][1]).mean() > 0.5


def test_split_drives_itself_side_by_side(expression_run, tmp_path):
    config, loaded = expression_run
    out = tmp_path / "split.mp4"
    result = render_driven_video(config, out, side_by_side=True, loaded=loaded, split="test")
    got = _streams(out)
    assert result.has_ground_truth
    assert got["frames"] == len(loaded[1].datamanager.eval_dataset) == 3
    assert (got["width"], got["height"]) == (3 * 32, 32)  # render | ground truth | semantics


def test_audio_features_driver_muxes_the_wav_beside_it(audio_run, tiny_subject, tmp_path):
    config, loaded = audio_run
    out = tmp_path / "aud.mp4"
    result = render_driven_video(config, out, driver=tiny_subject / "adnerf" / "aud.npy", max_frames=8, loaded=loaded)
    got = _streams(out)
    assert (got["frames"], got["width"], got["height"]) == (8, 32, 32)
    assert result.driver.audio_source == tiny_subject / "adnerf" / "aud.wav"
    # AAC frames hold 1024 samples: the stream may end up to one frame (64 ms at 16 kHz) late.
    assert got["audio_seconds"] == pytest.approx(8 / FPS, abs=0.07)


@pytest.mark.parametrize("rate", [16000, 22050, 17000])
def test_wav_driver_any_sample_rate(audio_run, tmp_path, rate):
    """16 kHz as is; 22050 Hz resampled for features (muxed as is); 17 kHz resampled for both."""
    config, loaded = audio_run
    wav = _write_wav(tmp_path / "speech.wav", 0.4, rate)
    out = tmp_path / "wav.mp4"
    render_driven_video(config, out, driver=wav, cameras="frame", frame=0, loaded=loaded)
    got = _streams(out)
    assert got["frames"] == 10  # 0.4 s at 25 fps
    assert (got["width"], got["height"]) == (32, 32)
    assert got["audio_seconds"] == pytest.approx(0.4, abs=0.07)


def _captured_frames(monkeypatch) -> list[list[np.ndarray]]:
    """Every later driven video's frames, exactly as handed to the encoder (before H.264 rounding)."""
    videos: list[list[np.ndarray]] = []
    real = driven.write_video

    def capture(path, frames, *args, **kwargs):
        videos.append([np.array(frame) for frame in frames])
        return real(path, iter(videos[-1]), *args, **kwargs)

    monkeypatch.setattr(driven, "write_video", capture)
    return videos


def _float_renders(monkeypatch, model) -> list[torch.Tensor]:
    """Every later frame the model renders, as floats (before 8-bit rounding: a 40-step tiny run's changes can be
    smaller than one level, and whether they are depends on the seed)."""
    images: list[torch.Tensor] = []
    get_outputs = type(model).get_outputs_for_camera

    def spy(self, camera, *args, **kwargs):
        out = get_outputs(self, camera, *args, **kwargs)
        images.append(out["rgb"].detach().clone())
        return out

    monkeypatch.setattr(type(model), "get_outputs_for_camera", spy)
    return images


def test_orbit_with_frozen_pose_and_scaled_resolution(audio_run, tiny_subject, tmp_path, monkeypatch):
    config, loaded = audio_run
    out = tmp_path / "frozen.mp4"
    render_driven_video(
        config,
        out,
        driver=tiny_subject / "adnerf" / "aud.npy",
        cameras="orbit",
        pose="frozen",
        max_frames=3,
        resolution_scale=0.5,
        loaded=loaded,
    )
    got = _streams(out)
    assert (got["frames"], got["width"], got["height"]) == (3, 16, 16)
    # Same orbit, same audio codes, pose frozen or following the camera: the only difference between the
    # two videos is the pose code the model is given, which is the same at frame 0 and differs after.
    videos = _captured_frames(monkeypatch)
    for pose in ("frozen", "follow"):
        render_driven_video(
            config,
            tmp_path / f"{pose}.mp4",
            driver=tiny_subject / "adnerf" / "aud.npy",
            cameras="orbit",
            orbit_degrees=25,
            pose=pose,  # type: ignore[arg-type]
            max_frames=3,
            loaded=loaded,
        )
    frozen, follow = videos
    assert np.array_equal(frozen[0], follow[0])
    for t in (1, 2):
        assert not np.array_equal(frozen[t], follow[t]), t
    # The camera still moves under a frozen pose: frames 0 and 1 show different views.
    assert not np.array_equal(frozen[0], frozen[1])


# ----------------------------------------------------------------------------------------------
# Different drivers, different mouths; cross-reenactment


def _mouth_box(tiny_subject: Path, split: str, index: int, margin: int = 2) -> tuple[slice, slice]:
    frame = formats.read_nerface_split(tiny_subject / "nerface", split).frames[index]
    labels = read_labels(formats.nerface_mask_path(tiny_subject / "nerface", frame.file_path), "palette").labels
    ys, xs = np.nonzero(np.isin(labels, list(MOUTH_CLASSES)))
    assert ys.size, "the camera frame shows no mouth"
    h, w = labels.shape
    return (
        slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)),
        slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)),
    )


def _jaw(tiny_subject: Path) -> np.ndarray:
    subject = json.loads((tiny_subject / SUBJECT_FILE).read_text())
    return np.asarray(subject["controls"])[:, CONTROL_NAMES.index("jaw_open")]


@pytest.mark.learning
def test_different_expressions_give_different_mouths(expression_run, tiny_subject, tmp_path, learned):
    config, loaded = expression_run
    root = tiny_subject / "nerface"
    train, test = formats.read_nerface_split(root, "train"), formats.read_nerface_split(root, "test")
    jaw = _jaw(tiny_subject)
    frames = train.frames + test.frames
    wide, shut = int(np.argmax(jaw)), int(np.argmin(jaw))
    assert jaw[wide] - jaw[shut] > 0.5
    for name, k in (("wide", wide), ("shut", shut)):
        np.save(tmp_path / f"{name}.npy", np.stack([frames[k].expression] * 2).astype(np.float32))
    camera = 0
    rows, cols = _mouth_box(tiny_subject, "train", camera)
    mouths = {}
    for name in ("wide", "shut"):
        out = tmp_path / f"{name}.mp4"
        render_driven_video(
            config, out, driver=tmp_path / f"{name}.npy", cameras="frame", frame=camera, loaded=loaded, split="train"
        )
        mouths[name] = _streams(out)["images"][0][rows, cols]
    # 8-bit levels; the tiny run has trained 40 steps (bound below the worst of 3 seeds x 1 and 2 threads)
    learned.above(
        "mouth change, widest vs shut code (8-bit levels)", np.abs(mouths["wide"] - mouths["shut"]).mean(), 1.0
    )


def test_different_audio_reaches_the_field_and_changes_the_render(audio_run, tiny_subject, tmp_path, monkeypatch):
    """Plumbing: a loud and a quiet recording become different driving codes inside the field, the loud one's codes
    and the renders differ. How much the mouth moves is learned, and the
    40-step tiny run has not learned it: its 8-bit mouth did not change at all at seeds 0 and 2 (the bound this test
    had passed at nerfstudio's default seed only), so quality is left to the learning tests."""
    from sahs_nerfstudio.fields.base import SAHSFieldBase

    config, loaded = audio_run
    model = loaded[1].model
    codes: list[torch.Tensor] = []
    with_eye = SAHSFieldBase.with_eye

    def code_spy(self, code, eye):
        codes.append(code.reshape(-1, code.shape[-1])[0].detach().clone())
        return with_eye(self, code, eye)

    monkeypatch.setattr(SAHSFieldBase, "with_eye", code_spy)
    images = _float_renders(monkeypatch, model)
    get_outputs = type(model).get_outputs_for_camera  # the float spy

    def frame_end(self, camera, *args, **kwargs):
        out = get_outputs(self, camera, *args, **kwargs)
        codes.append(torch.full((codes[-1].shape[-1],), float("nan")))  # a frame ends
        return out

    monkeypatch.setattr(type(model), "get_outputs_for_camera", frame_end)
    per_wav = []
    for loud in (True, False):
        codes.clear()
        images.clear()
        wav = _write_wav(tmp_path / f"{loud}.wav", 0.4, 16000, loud=loud)
        render_driven_video(config, None, driver=wav, cameras="frame", frame=0, loaded=loaded, split="train")
        # one code per frame: every field call of a frame sees the same code
        frames, current = [], []
        for c in codes:
            if torch.isnan(c).all():
                assert current and all(torch.equal(current[0], k) for k in current)
                frames.append(current[0])
                current = []
            else:
                current.append(c)
        per_wav.append((torch.stack(frames), torch.stack(images)))
    (loud_codes, loud_images), (quiet_codes, quiet_images) = per_wav
    assert loud_codes.shape[0] == quiet_codes.shape[0] == 10  # 0.4 s at 25 frames/s
    # measured 0.0037 and 0.0052 (seeds 0 and 1): the AudioNet's response to the two recordings, not a learned effect
    assert float((loud_codes - quiet_codes).abs().max()) > 1e-4
    # the codes reach density and colour: the mouth's float render changes (by ~1e-4 after 40 steps); a driver that
    # never reached the field would leave it bit-identical
    rows, cols = _mouth_box(tiny_subject, "train", 0)  # the AD-NeRF frames are the same sequence
    assert float((loud_images - quiet_images)[:, rows, cols].abs().max()) > 0.0


def test_cross_reenactment_with_another_subjects_tracks(expression_run, audio_run, subject_nonsquare, tmp_path):
    """A subject trained on one person, driven by another subject's expressions and audio features."""
    config, loaded = expression_run
    out = tmp_path / "cross_expr.mp4"
    other = subject_nonsquare / "nerface" / "transforms_test.json"
    result = render_driven_video(config, out, driver=other, loaded=loaded)
    assert _streams(out)["frames"] == len(formats.read_nerface_split(subject_nonsquare / "nerface", "test").frames)
    assert not result.has_ground_truth
    config, loaded = audio_run
    out = tmp_path / "cross_audio.mp4"
    render_driven_video(config, out, driver=subject_nonsquare / "adnerf" / "aud.npy", max_frames=4, loaded=loaded)
    got = _streams(out)
    assert got["frames"] == 4 and got["audio_seconds"] == pytest.approx(4 / FPS, abs=0.07)


# ----------------------------------------------------------------------------------------------
# The CLI and bad input: one line naming the file and the field, exit status 2


def test_cli_renders_and_reports_fps(tiny_run_expression, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    status = render_cli.run(["--load-config", str(tiny_run_expression), "--output", str(out), "--side-by-side"])
    assert status == 0
    assert _streams(out)["frames"] == 3
    summary = json.loads(out.with_suffix(".json").read_text())  # the model's rendering alone, per frame
    assert summary["num_frames"] == 3 and summary["render_fps"] > 0
    assert summary["render_fps"] == pytest.approx(3 / summary["render_seconds"])
    assert summary["render_seconds_per_frame"] == pytest.approx(1.0 / summary["render_fps"])
    # One console line with the count, the frame size, the time and the rate, all as recorded in the JSON.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Rendered ")]
    assert len(lines) == 1, lines
    threads = torch.get_num_threads()
    assert lines[0] == (
        f"Rendered 3 frames at 96x32 in {summary['render_seconds']:.2f} s: {summary['render_fps']:.2f} frames/s "
        f"({threads} thread{'' if threads == 1 else 's'})"
    )
    assert (summary["device"], summary["threads"]) == ("cpu", threads)


def _cli_error(args: list[str], capsys) -> str:
    status = render_cli.run(args)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_wrong_code_width_names_file_and_field(tiny_run_expression, tmp_path, capsys):
    bad = tmp_path / "codes50.npy"
    np.save(bad, np.zeros((4, 50), np.float32))
    err = _cli_error(
        ["--load-config", str(tiny_run_expression), "--driver", str(bad), "--output", str(tmp_path / "x.mp4")], capsys
    )
    assert str(bad) in err and "'<array>'" in err and "width 76" in err and "width 50" in err
    assert not (tmp_path / "x.mp4").exists()

    js = tmp_path / "transforms_drive.json"
    js.write_text(json.dumps({"frames": [{"expression": [0.0] * 50}, {"expression": [0.0] * 50}]}))
    err = _cli_error(["--load-config", str(tiny_run_expression), "--driver", str(js)], capsys)
    assert str(js) in err and "frames[k].expression" in err and "width 50" in err


def test_expressions_cannot_drive_an_audio_model(audio_run, tmp_path):
    _, loaded = audio_run
    codes = tmp_path / "codes.npy"
    np.save(codes, np.zeros((3, 76), np.float32))
    with pytest.raises(FormatError, match="audio-driven") as info:
        check_driver(load_driver(codes), loaded[1].model)
    assert info.value.path == codes


def test_empty_audio_file(tiny_run_audio, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    err = _cli_error(["--load-config", str(tiny_run_audio), "--driver", str(empty)], capsys)
    assert str(empty) in err and "'<samples>'" in err and "empty" in err
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"")
    err = _cli_error(["--load-config", str(tiny_run_audio), "--driver", str(garbage)], capsys)
    assert str(garbage) in err and "'<file>'" in err


def test_run_of_another_method(tmp_path, capsys):
    from nerfstudio.configs.method_configs import method_configs

    config = method_configs["nerfacto"]
    config.output_dir = tmp_path / "outputs"
    config.set_timestamp()
    config.save_config()
    path = config.get_base_dir() / "config.yml"
    err = _cli_error(["--load-config", str(path)], capsys)
    assert str(path) in err and "'method_name'" in err and "nerfacto" in err


def test_checkpoint_of_another_model(tiny_run_expression, tmp_path, capsys):
    config = yaml.load(tiny_run_expression.read_text(), Loader=yaml.Loader)
    config.output_dir = tmp_path / "outputs"
    config.save_config()
    ckpt_dir = config.get_checkpoint_dir()
    ckpt_dir.mkdir(parents=True)
    ckpt = ckpt_dir / "step-000000001.ckpt"
    torch.save({"step": 1, "pipeline": {"_model.field.mlp_base.params": torch.zeros(3)}}, ckpt)
    err = _cli_error(["--load-config", str(config.get_base_dir() / "config.yml")], capsys)
    assert str(ckpt) in err and "'pipeline'" in err and "missing" in err and "unexpected" in err


def test_ns_render_dataset_keeps_each_frames_code(expression_run, tiny_subject, tmp_path):
    """nerfstudio's own ``ns-render dataset`` path: each frame's own code reaches the model.

    A test split of three frames seen through one camera, with expressions wide, shut, wide: the
    renders of the two wide frames are identical, and the shut one differs from them at the mouth.
    """
    from nerfstudio.scripts.render import DatasetRender

    config, _ = expression_run
    data = tmp_path / "nerface"
    shutil.copytree(tiny_subject / "nerface", data)
    test_json = json.loads((data / "transforms_test.json").read_text())
    train = json.loads((data / "transforms_train.json").read_text())["frames"]
    jaw = _jaw(tiny_subject)[: len(train)]
    wide, shut = train[int(np.argmax(jaw))]["expression"], train[int(np.argmin(jaw))]["expression"]
    base = test_json["frames"][0]
    src = Path(base["file_path"])
    frames = []
    for name, expression in (("a_wide", wide), ("b_shut", shut), ("c_wide", wide)):
        file_path = f"./{(src.parent / name).as_posix()}"
        shutil.copy(data / src.parent / f"{src.name}.png", data / src.parent / f"{name}.png")
        shutil.copy(formats.nerface_mask_path(data, base["file_path"]), formats.nerface_mask_path(data, file_path))
        frames.append({**base, "file_path": file_path, "expression": expression})
    test_json["frames"] = frames
    (data / "transforms_test.json").write_text(json.dumps(test_json))

    out = tmp_path / "ns_render"
    render = DatasetRender(
        load_config=config,
        output_path=out,
        data=data,
        split="test",
        rendered_output_names=["rgb", "semantics", "deformation_magnitude"],
    )
    render.main()
    for name in ("rgb", "semantics", "deformation_magnitude"):
        assert len(list((out / "test" / name).glob("*.jpg"))) == 3
    rgb = {p.stem: np.asarray(Image.open(p), dtype=np.float32) for p in (out / "test" / "rgb").glob("*.jpg")}
    rows, cols = _mouth_box(tiny_subject, "test", 0)
    assert np.array_equal(rgb["a_wide"], rgb["c_wide"])  # same camera, same code: the same image
    assert np.abs(rgb["a_wide"][rows, cols] - rgb["b_shut"][rows, cols]).mean() > 1.0


# ----------------------------------------------------------------------------------------------
# sahs-render as a user runs it (a subprocess): bad flags and files get one line and status 2


def _sahs_render(args: list[str], debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAHS_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"  # torch's and nerfstudio's import-time deprecation notices are not ours
    if debug:
        env["SAHS_DEBUG"] = "1"
    cmd = [sys.executable, "-m", "sahs_nerfstudio.scripts.render", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    assert err.startswith("sahs-render: error: ")
    return err


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--fps", "0", "a positive frame rate"),
        ("--resolution-scale", "0", "a positive scale"),
        ("--resolution-scale", "-1", "a positive scale"),
        ("--max-frames", "0", "at least 1 frame"),
    ],
)
def test_cli_flag_out_of_range(tiny_run_expression, tmp_path, flag, value, expected, capsys):
    # In-process (the same entry point as the console script); the subprocess tests below cover the process.
    out = tmp_path / "renders" / "x.mp4"
    err = _cli_error(["--load-config", str(tiny_run_expression), "--output", str(out), flag, value], capsys)
    assert err.startswith("sahs-render: error: ")
    assert f"field '{flag}'" in err and expected in err
    assert err.endswith(f"found {float(value) if flag != '--max-frames' else int(value)}")
    assert "transforms" not in err  # the flag is to blame, not the dataset
    assert not out.parent.exists()


def test_cli_traceback_only_with_debug(tiny_run_expression, tmp_path):
    proc = _sahs_render(
        ["--load-config", str(tiny_run_expression), "--output", str(tmp_path / "x.mp4"), "--fps", "0"], True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "Traceback (most recent call last)" in proc.stderr
    assert lines[-1].startswith("sahs-render: error: ") and "'--fps'" in lines[-1]


def test_cli_output_is_an_existing_folder(tiny_run_expression, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    err = _one_error_line(_sahs_render(["--load-config", str(tiny_run_expression), "--output", str(folder)]))
    assert err.startswith(f"sahs-render: error: {folder}: field '--output'") and "an existing folder" in err
    # Nothing left behind: no temporary mp4 beside it, nothing inside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"] and not any(folder.iterdir())


def test_cli_binary_load_config(tmp_path):
    config = tmp_path / "config.yml"
    config.write_bytes(bytes(range(256)) * 4)
    err = _one_error_line(_sahs_render(["--load-config", str(config)]))
    assert (
        err
        == f"sahs-render: error: {config}: field '<file>': expected a nerfstudio config.yml (YAML text), found binary data"
    )


def _two_process_run(config_path: Path, root: Path) -> Path:
    """A copy of a run whose checkpoint has the key spelling of ``--machine.num-devices 2`` (DDP: ``_model.module.``)."""
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    src = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"))[-1]
    config.output_dir = root / "outputs"
    config.save_config()
    state = torch.load(src, map_location="cpu", weights_only=False)
    state["pipeline"] = {
        (f"_model.module.{k[len('_model.') :]}" if k.startswith("_model.") else k): v
        for k, v in state["pipeline"].items()
    }
    config.get_checkpoint_dir().mkdir(parents=True)
    torch.save(state, config.get_checkpoint_dir() / src.name)
    return config.get_base_dir() / "config.yml"


def test_run_trained_with_two_processes_loads(tiny_run_expression, tmp_path):
    two = _two_process_run(tiny_run_expression, tmp_path)
    assert any(k.startswith("_model.module.") for k in torch.load(next(two.parent.glob("*/step-*.ckpt")))["pipeline"])
    _, pipeline, _, step = load_run(two)
    _, reference, _, ref_step = load_run(tiny_run_expression)
    mine, theirs = pipeline.state_dict(), reference.state_dict()
    assert step == ref_step and mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if isinstance(theirs[k], torch.Tensor))
    out = tmp_path / "two.mp4"
    proc = _sahs_render(["--load-config", str(two), "--output", str(out), "--max-frames", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _streams(out)["frames"] == 2


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tiny_run_expression, tmp_path, capsys):
    config = yaml.load(tiny_run_expression.read_text(), Loader=yaml.Loader)
    src = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"))[-1]
    config.output_dir = tmp_path / "outputs"
    config.save_config()
    ckpt_dir = config.get_checkpoint_dir()
    ckpt_dir.mkdir(parents=True)
    shutil.copy(src, ckpt_dir / src.name)
    step = int(src.stem.split("-")[1])
    broken = ckpt_dir / f"step-{step + 1:09d}.ckpt"
    broken.write_bytes(src.read_bytes()[:1000])  # cut short, as by a crash during the write
    _, _, path, loaded_step = load_run(config.get_base_dir() / "config.yml")
    assert (path, loaded_step) == (ckpt_dir / src.name, step)
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and str(broken) in out
