"""Driving an avatar with a face video (``sahs-render --driver clip.mp4``), on videos made from scikit-image's
astronaut photo with known motion: the mapped mouth follows the driver's whatever its face size, the driver's
own resting face is what is removed, missing faces are named, and the whole command renders with the clip's
sound."""

from __future__ import annotations

import json
from pathlib import Path

import moving_photo as mp
import numpy as np
import pytest

from sahs_nerfstudio.data.formats import EXPRESSION_BASIS
from sahs_nerfstudio.driving.video import check_faces, driver_codes, track_driver
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.process.expression import ExpressionBasis, normalised_meshes
from sahs_nerfstudio.process.shape import subject_shape

SPEECH = Path(__file__).parent / "data" / "speech.wav"
SIZE = 256
WIDE_MOUTH = 14.0
"""The trained-avatar tests' largest mouth opening, pixels of the photo (the moving photo's default is 8)."""
MOUTH_FOLLOWS = 0.5
"""Bound on the correlation of the driven avatar's mouth with the driver's over :data:`DRIVER_FRAMES` frames (measured
values: tests/README.md). Chance alone (a transfer that ignores the driver) passes it about once in 2,000 at 40
frames; the old 0.3 over 20 frames passed one time in ten."""
DRIVER_FRAMES = 40


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
    from sahs_nerfstudio.driving.sequence import load_video_driver

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


def test_the_drivers_head_turn_is_recovered_and_turns_the_camera(tmp_path):
    import torch

    from sahs_nerfstudio.driving.video import head_rotations
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


def test_a_non_square_driver_is_posed_with_its_own_principal_point(tmp_path, monkeypatch):
    """``crop="none"`` keeps a wide clip wide: the head poses are solved with the principal point at the centre of
    the frames the mesh was tracked in, not of a square of their height."""

    from sahs_nerfstudio.driving import video as drv
    from sahs_nerfstudio.process import pose

    truth = mp.make_motion(12, size=SIZE, seed=3, max_angle_deg=4.0)
    wide = []
    for k in range(truth.num_frames):
        canvas = np.full((SIZE, SIZE * 3 // 2, 3), 110, np.uint8)
        canvas[:, SIZE // 4 : SIZE // 4 + SIZE] = mp.render_frame(truth, k)
        wide.append(canvas)
    mp.write_video(tmp_path / "wide.mp4", wide, truth.fps, _speech(truth.num_frames / truth.fps))
    track = track_driver(tmp_path / "wide.mp4", crop="none")
    assert track.size == (drv.TRACK_SIZE * 3 // 2, drv.TRACK_SIZE)  # the shorter side scaled to 512
    seen = []
    solve = pose.solve_poses

    def spy(mesh2d, kept, shape, width, height, *args, **kwargs):
        seen.append((width, height))
        return solve(mesh2d, kept, shape, width, height, *args, **kwargs)

    monkeypatch.setattr(pose, "solve_poses", spy)
    rot = drv.head_rotations(track, check_faces(track, skip_missing=False))
    assert seen == [track.size] and np.isfinite(rot).all()
    # the face sits at the wide frame's centre: its mesh's centre is near (width / 2, height / 2), as the camera assumes
    centre = np.nanmedian(track.mesh[:, :, :2].reshape(-1, 2), axis=0)
    assert abs(centre[0] - track.size[0] / 2) < 0.1 * track.size[0], (centre, track.size)


def _blinking_video(path: Path, frames: int = 30, shut: tuple[int, int] = (10, 15)) -> None:
    """The astronaut photo, still, with both eyes painted shut (lid-coloured, a darker lash line) in frames
    ``shut[0] .. shut[1] - 1``, and speech."""
    import cv2
    from skimage import data

    from sahs_nerfstudio.process import face_mesh as fm

    photo = data.astronaut()
    tracker = fm.MeshTracker()
    try:
        mesh = tracker.step(photo, 0).mesh
    finally:
        tracker.close()
    assert mesh is not None
    closed = photo.copy()
    for eye in (fm.RIGHT_EYE, fm.LEFT_EYE):
        pts = mesh[list(eye), :2]
        below = pts.mean(0) + np.array([0.0, 0.9 * float(np.ptp(pts[:, 1])) + 4.0])
        x, y = int(below[0]), int(below[1])
        colour = photo[y - 2 : y + 3, x - 6 : x + 7].reshape(-1, 3).mean(0)
        poly = np.round(pts).astype(np.int32)
        cv2.fillPoly(closed, [poly], tuple(int(c) for c in colour))
        cv2.polylines(closed, [poly], True, tuple(int(c * 0.6) for c in colour), 1)
    images = [closed if shut[0] <= k < shut[1] else photo for k in range(frames)]
    mp.write_video(path, images, 25.0, _speech(frames / 25.0))


def test_a_drivers_blink_shuts_the_mapped_eyes_and_the_audio_models_eye_channel(tmp_path, subject_basis):
    from sahs_nerfstudio.driving.sequence import load_video_driver
    from sahs_nerfstudio.driving.video import eye_openness

    video = tmp_path / "blink.mp4"
    _blinking_video(video)
    track = track_driver(video, crop="none")
    openness = eye_openness(driver_codes(track, subject_basis, check_faces(track, skip_missing=False)))
    blink = np.zeros(len(openness), bool)
    blink[10:15] = True
    # Measured: about 0.65 while shut, about 1.03 open.
    assert openness[blink].max() < 0.8 and openness[~blink].min() > 0.9, np.round(openness, 2)
    basis_file = tmp_path / EXPRESSION_BASIS
    subject_basis.save(basis_file)
    seq = load_video_driver(video, "audio", basis_file)
    assert seq.kind == "audio" and seq.rows.shape[1:] == (16, 29) and len(seq) == 30
    assert seq.eye_closure is not None
    assert seq.eye_closure[blink].min() > seq.eye_closure[~blink].max()  # the blink reaches the eye channel


@pytest.fixture(scope="module")
def photo_avatar(tmp_path_factory, learning_seed) -> Path:
    """config.yml of sahs-fast trained 500 steps of 256 rays on a photo-derived subject processed by sahs-process (64 px), whose
    mouth opens by up to 14 px of the photo (wide enough to learn in a short run)."""
    from nerfstudio.scripts.train import main as train_main

    from sahs_nerfstudio.presets import fast_cpu_trainer_config
    from sahs_nerfstudio.process.pipeline import ProcessConfig
    from sahs_nerfstudio.process.pipeline import run as process

    root = tmp_path_factory.mktemp("photo_avatar")
    _video(root / "subject.mp4", seed=0, frames=60, max_mouth=WIDE_MOUTH)
    process(ProcessConfig(video=root / "subject.mp4", output=root / "data", size=64, layout="nerface", min_seconds=0.5))
    assert (root / "data" / "nerface" / EXPRESSION_BASIS).is_file()
    config = fast_cpu_trainer_config(root / "data" / "nerface", steps=500, rays=256, output_dir=root / "runs")
    config.vis = "tensorboard"
    config.machine.seed = learning_seed
    config.experiment_name = "mouth"
    config.set_timestamp()
    train_main(config)
    return config.get_base_dir() / "config.yml"


def test_sahs_render_drives_a_trained_avatar_with_a_video(tmp_path, photo_avatar):
    import av

    from sahs_nerfstudio.scripts.render import run as render

    driver = tmp_path / "driver.mp4"
    _video(driver, seed=5, frames=12)
    out = tmp_path / "driven.mp4"
    assert (
        render(
            ["--load-config", str(photo_avatar), "--driver", str(driver), "--output", str(out), "--cameras", "frame"]
        )
        == 0
    )
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["num_frames"] == 12
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 12
        assert container.streams.audio, "the driver's sound is muxed in"


@pytest.mark.learning
def test_a_trained_avatars_mouth_follows_a_drivers_mouth(tmp_path, photo_avatar, learned):
    """Driven by another clip whose mouth opens by a known warp, the rendered mouth darkens as the driver's opens.
    (With the 8-px mouth of the other tests and 512 rays it measured 0.13 after 300 steps and 0.57 after 1,000: the
    avatar has to learn the mouth first.) The bound (:data:`MOUTH_FOLLOWS`) sits below the worst of 3 seeds x 1 and 2
    threads (tests/README.md)."""
    import av

    from sahs_nerfstudio.scripts.render import run as render

    driver = _video(tmp_path / "driver.mp4", seed=5, frames=DRIVER_FRAMES, max_mouth=WIDE_MOUTH)
    out = tmp_path / "driven.mp4"
    args = ["--load-config", str(photo_avatar), "--driver", str(tmp_path / "driver.mp4")]
    assert render(args + ["--cameras", "frame", "--output", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
    lms = np.load(photo_avatar.parents[4] / "data" / "work" / "landmarks.npz")["points"][0]  # the subject's mouth
    (x0, y0), (x1, y1) = lms[48:68].min(0).astype(int) - 2, lms[48:68].max(0).astype(int) + 3
    darkness = -frames[:, y0:y1, x0:x1].astype(np.float64).mean(axis=(1, 2, 3))
    learned.above(
        "mouth darkness ~ driver mouth (correlation, 40 frames)",
        np.corrcoef(darkness, driver.mouth)[0, 1],
        MOUTH_FOLLOWS,
    )
