"""Driving an avatar with a face video (``sahs-render --driver clip.mp4``), on videos made from scikit-image's
astronaut photo with known motion: the mapped mouth follows the driver's whatever its face size, the driver's
own resting face is what is removed, missing faces are named, and the whole command renders with the clip's
sound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sahs_nerfstudio.data.formats import EXPRESSION_BASIS, FormatError
from sahs_nerfstudio.process import moving_photo as mp
from sahs_nerfstudio.process.driver import check_faces, driver_codes, track_driver
from sahs_nerfstudio.process.expression import ExpressionBasis, normalised_meshes
from sahs_nerfstudio.process.shape import subject_shape

SPEECH = Path(__file__).parent / "data" / "speech.wav"
SIZE = 256


def _speech(seconds: float) -> np.ndarray:
    import soundfile

    samples, rate = soundfile.read(str(SPEECH), dtype="float32")
    assert rate == 16000
    return samples[: int(seconds * rate)]


def _video(path: Path, seed: int, frames: int = 40, scale: float = 1.0, **motion) -> mp.MovingPhoto:
    """A moving-photo clip with speech; ``scale`` < 1 shows the face smaller in the same frame."""
    import cv2

    truth = mp.make_motion(frames, size=SIZE, seed=seed, max_angle_deg=4.0, **motion)
    images = []
    for k in range(frames):
        rgb = mp.render_frame(truth, k)
        if scale != 1.0:
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas = np.full_like(rgb, 110)
            y0 = x0 = (SIZE - small.shape[0]) // 2
            canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
            rgb = canvas
        images.append(rgb)
    mp.write_video(path, images, truth.fps, _speech(frames / truth.fps))
    return truth


@pytest.fixture(scope="module")
def subject_basis(tmp_path_factory) -> ExpressionBasis:
    """The basis of a subject clip (the astronaut, another motion), as sahs-process fits it."""
    root = tmp_path_factory.mktemp("subject")
    _video(root / "subject.mp4", seed=0)
    track = track_driver(root / "subject.mp4", crop="centre")
    assert track.found.all()
    shape = subject_shape(track.mesh, track.found)
    return ExpressionBasis.fit(normalised_meshes(track.mesh, shape), 76)


def test_the_mapped_mouth_follows_the_drivers_whatever_its_face_size(tmp_path, subject_basis):
    slopes = []
    for scale in (1.0, 0.6):
        video = tmp_path / f"driver{scale}.mp4"
        truth = _video(video, seed=5, scale=scale)
        track = track_driver(video, crop="none")
        codes = driver_codes(track, subject_basis, check_faces(track, skip_missing=False))
        assert codes.shape == (truth.num_frames, 76)
        corr = np.corrcoef(codes[:, 0], truth.mouth)[0, 1]
        assert corr > 0.8, (scale, corr)
        slopes.append(np.polyfit(truth.mouth, codes[:, 0], 1)[0])
    # The change is measured in the driver's inter-ocular distances: the same mouth opening on a face 60 % the
    # size maps to the same code (in pixels it would be 0.6 of it).
    assert 0.8 < slopes[1] / slopes[0] < 1.25, slopes


def test_the_drivers_own_resting_face_is_what_is_removed(tmp_path, subject_basis):
    video = tmp_path / "open.mp4"
    truth = _video(video, seed=7)
    track = track_driver(video, crop="none")
    frames = check_faces(track, skip_missing=False)
    rest = int(np.argmin(truth.mouth))  # the frame with the mouth most closed
    codes = driver_codes(track, subject_basis, frames, neutral_frame=rest)
    # The driver at rest is the subject at rest: exactly the code of the subject's neutral face.
    np.testing.assert_allclose(codes[rest], subject_basis.encode(subject_basis.neutral[None])[0], atol=1e-9)
    assert abs(codes[rest, 0]) < 0.01
    assert (codes[:, 0] >= -0.02).mean() > 0.9  # every other frame opens the mouth from there
    median = driver_codes(track, subject_basis, frames)
    assert abs(float(np.median(median[:, 0]))) < 0.02  # by default the clip's median face is the rest
    with pytest.raises(FormatError, match="--driver-neutral-frame"):
        driver_codes(track, subject_basis, frames, neutral_frame=10_000)


def test_frames_without_a_face_are_named_or_left_out_with_their_sound(tmp_path, subject_basis):
    from sahs_nerfstudio.driving import load_video_driver

    video = tmp_path / "gap.mp4"
    _video(video, seed=2, frames=30, blank=[(10, 14)])
    basis_file = tmp_path / EXPRESSION_BASIS
    subject_basis.save(basis_file)
    with pytest.raises(FormatError) as err:
        load_video_driver(video, "expression", basis_file)
    assert "no face in frames 10-14 (0.40-0.60 s)" in str(err.value) and "--skip-missing" in str(err.value)
    seq = load_video_driver(video, "expression", basis_file, skip_missing=True)
    assert len(seq) == 25 and seq.rows.shape == (25, 76)
    assert seq.audio is not None and seq.sample_rate == 16000
    assert len(seq.audio) == 25 * 16000 // 25  # the 5 missing frames' sound is cut out too
    blank = tmp_path / "wall.mp4"
    mp.write_video(blank, [np.full((SIZE, SIZE, 3), 90, np.uint8)] * 10, 25.0)
    with pytest.raises(FormatError, match="no face in any of 10 frames"):
        load_video_driver(blank, "expression", basis_file)
    with pytest.raises(FormatError, match="expression_basis.npz"):
        load_video_driver(video, "expression", tmp_path / "missing" / EXPRESSION_BASIS)


def test_sahs_render_drives_a_trained_avatar_with_a_video(tmp_path, tiny_sahs_fast_cli):
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.process.pipeline import ProcessConfig
    from sahs_nerfstudio.process.pipeline import run as process
    from sahs_nerfstudio.scripts.render import run as render

    subject = tmp_path / "subject.mp4"
    _video(subject, seed=0, frames=30)
    process(ProcessConfig(video=subject, output=tmp_path / "data", size=96, layout="nerface", min_seconds=0.5))
    assert (tmp_path / "data" / "nerface" / EXPRESSION_BASIS).is_file()
    config = tiny_sahs_fast_cli(tmp_path / "data" / "nerface", tmp_path / "runs", steps=2)
    train_main(config)
    driver = tmp_path / "driver.mp4"
    _video(driver, seed=5, frames=12)
    out = tmp_path / "driven.mp4"
    args = ["--load-config", str(config.get_base_dir() / "config.yml"), "--driver", str(driver)]
    assert render(args + ["--output", str(out), "--cameras", "frame"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["num_frames"] == 12
    import av

    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 12
        assert container.streams.audio, "the driver's sound is muxed in"


def test_the_drivers_head_turn_is_recovered_and_turns_the_camera(tmp_path):
    import torch

    from sahs_nerfstudio.process.driver import head_rotations
    from sahs_nerfstudio.rendering.camera_paths import head_turned_pose

    video = tmp_path / "turn.mp4"
    truth = mp.make_motion(40, size=SIZE, seed=3, max_angle_deg=10.0)
    mp.write_moving_photo(video, truth, _speech(40 / truth.fps))
    track = track_driver(video, crop="none")
    rot = head_rotations(track, check_faces(track, skip_missing=False))
    # In-plane turns, clockwise in the image: about the camera's viewing axis, negative in its y-up axes.
    roll = np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    expected = -np.degrees(truth.angles - np.median(truth.angles))
    assert np.abs(roll - expected).max() < 1.5, np.abs(roll - expected).max()
    # The camera turned about the head sees the head turned: a head point X seen by the new camera where the
    # old camera sees the turned point.
    c2w = torch.tensor([[1.0, 0, 0, 0.05], [0, 1, 0, 0.02], [0, 0, 1, 0.5]])
    turn = torch.from_numpy(rot[int(np.argmax(np.abs(roll)))]).float()
    new = head_turned_pose(c2w, turn)
    x = torch.tensor([0.03, -0.04, 0.06])
    in_new = new[:, :3].T @ (x - new[:, 3])
    world_turn = c2w[:, :3] @ turn @ c2w[:, :3].T
    in_old = c2w[:, :3].T @ (world_turn @ x - c2w[:, 3])
    torch.testing.assert_close(in_new, in_old, atol=1e-5, rtol=0)
