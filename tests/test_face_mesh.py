"""The MediaPipe tracker and what ``sahs-process`` builds on it, on real photos shipped by scikit-image:
the 68-point mapping against dlib, labels where the mesh says the parts are, labels that hold still on
a still sequence, the face crop of a photo placed small in a large frame, the subject's 3-D shape, the
clean plate's hole filling, and the install that keeps nerfstudio's headless OpenCV."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.process import face_mesh as fm
from sahs_nerfstudio.process.regions import CHIN, FaceRegions


@pytest.fixture(scope="module")
def astronaut_track():
    """The astronaut photo through the tracker: mesh, matte, and the clip's colour models from it."""
    from sahs_nerfstudio.process.segmentation import fit_colour_models

    rgb = data.astronaut()
    tracker = fm.MeshTracker()
    try:
        found = tracker.step(rgb, 0)
    finally:
        tracker.close()
    assert found.mesh is not None and found.faces == 1
    colours = fit_colour_models([0], lambda f: rgb, lambda f: found.matte, found.mesh[None])
    return rgb, found, colours


def test_the_68_points_from_the_mesh_sit_where_dlib_puts_them(astronaut_track):
    from sahs_nerfstudio.utils.face_landmarks import detect_landmarks, interocular

    rgb, found, _ = astronaut_track
    dlib68 = detect_landmarks(rgb)
    assert dlib68 is not None
    err = np.linalg.norm(fm.to_68(found.mesh)[:, :2] - dlib68, axis=1) / interocular(dlib68)
    # Measured: 0.040 IOD on average; eyes and inner lips (LMD's points) within 0.03.
    assert err.mean() < 0.06, err.mean()
    assert err[36:48].max() < 0.05 and err[60:68].max() < 0.05, (err[36:48].max(), err[60:68].max())
    # A wrong mapping (the jaw read backwards) is far off: the test can tell.
    assert (np.linalg.norm(fm.to_68(found.mesh)[16::-1, :2] - dlib68[:17], axis=1) / interocular(dlib68)).mean() > 0.5


def test_labels_put_each_part_where_the_mesh_is(astronaut_track):
    from sahs_nerfstudio.process.segmentation import frame_labels

    rgb, found, colours = astronaut_track
    mesh = found.mesh
    labels = frame_labels(rgb, found.matte, mesh, colours)
    faces = FaceRegions.from_mesh(mesh)

    def at(p: np.ndarray) -> int:
        x, y = np.round(p).astype(int)
        return int(labels[y, x])

    assert at(mesh[4, :2]) == sem.NOSE  # nose tip
    assert at(mesh[fm.RIGHT_IRIS, :2]) == sem.EYES and at(mesh[fm.LEFT_IRIS, :2]) == sem.EYES
    assert at(0.5 * (mesh[0, :2] + mesh[13, :2])) == sem.LIPS  # the upper lip's middle
    assert at(0.5 * (mesh[105, :2] + mesh[52, :2])) == sem.EYEBROWS  # between the brow's upper and lower edges
    assert at(mesh[50, :2]) == sem.SKIN  # a cheek
    assert at(mesh[10, :2] + 0.25 * faces.face_height * faces.up) == sem.HAIR  # above the forehead
    assert at(mesh[CHIN, :2] - 0.15 * faces.face_height * faces.up) == sem.NECK
    assert labels[0, -1] == sem.BACKGROUND and labels[5, 5] == sem.BACKGROUND
    # The astronaut smiles with her teeth showing: the inner-lip opening is the mouth interior.
    assert at(0.5 * (mesh[13, :2] + mesh[14, :2])) == sem.MOUTH_INTERIOR
    # No hair inside the oval below the brows, no background inside the face.
    oval = np.zeros(labels.shape, np.uint8)
    import cv2

    cv2.fillPoly(oval, [np.round(faces.points(fm.FACE_OVAL)).astype(np.int32)], (1,))
    a, b = faces.face_coords(*labels.shape)
    brows = float(((faces.points(fm.RIGHT_BROW + fm.LEFT_BROW) - mesh[CHIN, :2]) @ faces.up).mean())
    lower_face = oval.astype(bool) & (b < brows)
    assert not np.isin(labels[lower_face], (sem.HAIR, sem.BACKGROUND, sem.TORSO)).any()


def test_labels_hold_still_on_a_still_photo_sequence():
    """Twelve noisy copies of one photo (the sensor noise of a still camera, sigma 2 levels): the labels of
    consecutive frames may differ on under 1 % of the pixels."""
    from sahs_nerfstudio.process.segmentation import fit_colour_models, frame_labels

    rng = np.random.default_rng(0)
    photo = data.astronaut().astype(np.float32)
    frames = [np.clip(photo + rng.normal(0, 2.0, photo.shape), 0, 255).astype(np.uint8) for _ in range(12)]
    tracker = fm.MeshTracker()
    try:
        found = [tracker.step(f, k) for k, f in enumerate(frames)]
    finally:
        tracker.close()
    assert all(f.mesh is not None for f in found)
    meshes = np.stack([f.mesh for f in found])  # type: ignore[misc]
    colours = fit_colour_models(list(range(12)), lambda k: frames[k], lambda k: found[k].matte, meshes)
    labels = [frame_labels(frames[k], found[k].matte, meshes[k], colours) for k in range(12)]
    flicker = [float((labels[k] != labels[k + 1]).mean()) for k in range(11)]
    assert max(flicker) < 0.01, flicker
    # Every class the photo shows is there in every frame (none comes and goes).
    present = [set(np.unique(lab).tolist()) for lab in labels]
    assert all(p == present[0] for p in present), present


def _small_face_video(path: Path, frames: int = 10) -> tuple[int, int, int]:
    """The astronaut's head and shoulders shrunk into the lower right of a 1280x720 frame; returns the
    placement (x, y, scale)."""
    import cv2
    from moving_photo import write_video

    photo = data.astronaut()
    scale = 0.8
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x, y = 840, 300
    canvas = np.full((720, 1280, 3), 120, np.uint8)
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small[: 720 - y]
    write_video(path, [canvas] * frames, 25.0)
    return x, y, int(scale * 100)


def test_face_crop_finds_a_small_face_in_a_large_frame(tmp_path, astronaut_track):
    from sahs_nerfstudio.process.framing import choose_crop

    _, found, _ = astronaut_track
    video = tmp_path / "small.mp4"
    x, y, pct = _small_face_video(video)
    mode, box = choose_crop("auto", video, 25.0)
    assert mode == "face" and box is not None
    face = found.mesh[:, :2] * pct / 100 + np.array([x, y])  # where the face landed in the big frame
    lo, hi = face.min(0), face.max(0)
    # The whole face is inside the square, with room around it for hair and shoulders, and the square is
    # far smaller than the frame (a centre crop would be 720 pixels and miss the face's right side).
    assert box.x <= lo[0] - 10 and box.y <= lo[1] - 10, (box, lo)
    assert box.x + box.side >= hi[0] + 10 and box.y + box.side >= hi[1] + 10, (box, hi)
    assert box.side < 0.6 * 720 and box.x + box.side <= 1280 and box.y + box.side <= 720
    assert hi[0] > (1280 - 720) / 2 + 720  # the face lies outside the centre square
    # Asked for a centre crop, or with a face that fills the frame, there is no face box.
    assert choose_crop("centre", video, 25.0) == ("centre", None)


def test_sahs_process_crops_a_small_face_and_says_so(tmp_path, capsys):
    from sahs_nerfstudio.process.pipeline import Clip, ProcessConfig, Runner, decode_stage

    video = tmp_path / "small.mp4"
    _small_face_video(video, frames=6)
    config = ProcessConfig(video=video, output=tmp_path / "out", size=128, min_seconds=0.1)
    clip = Clip(config, Runner(config))
    decode_stage(clip)
    assert clip.info is not None and clip.info.crop == "face" and clip.info.width == 128
    assert any("the face is small in the frame: cropped to the" in n for n in clip.notes)
    assert "sahs-process: the face is small in the frame" in capsys.readouterr().out


def test_subject_shape_keeps_the_skull_and_leaves_the_lips_out():
    """Meshes of one face under known similarities, with the lips and lids moving: the shape is the face,
    its rigid vertices exclude every moving one, and a known pose is recovered from it."""
    from sahs_nerfstudio.process.shape import subject_shape, umeyama

    rng = np.random.default_rng(1)
    tracker = fm.MeshTracker()
    try:
        base = tracker.step(data.astronaut(), 0).mesh
    finally:
        tracker.close()
    assert base is not None
    moving = list(fm.OUTER_LIPS + fm.INNER_LIPS + fm.RIGHT_EYE + fm.LEFT_EYE)
    meshes = []
    for _ in range(30):
        m = base.copy()
        m[moving] += rng.normal(0, 4.0, (len(moving), 3))
        angle = rng.uniform(-0.3, 0.3, 3)
        from sahs_nerfstudio.process.pose import rodrigues

        r = rodrigues(angle[None])[0]
        meshes.append(rng.uniform(0.8, 1.2) * m @ r.T + rng.uniform(-50, 50, 3))
    mesh = np.stack(meshes)
    shape = subject_shape(mesh, np.ones(len(mesh), bool))
    assert not set(shape.rigid.tolist()) & set(moving)
    assert len(shape.rigid) >= 100
    # The shape is the base face up to a similarity (to well under a percent of the eye distance).
    s, r, t = umeyama(base, shape.points)
    iod = np.linalg.norm(shape.points[263] - shape.points[33])
    assert np.abs(s * base @ r.T + t - shape.points)[shape.rigid].max() < 0.01 * iod


def test_fill_holes_blends_the_surroundings_and_keeps_the_known_pixels():
    from sahs_nerfstudio.process.background import fill_holes

    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    image = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1)  # a smooth ramp
    known = np.ones((128, 128), bool)
    known[30:90, 40:100] = False  # a person-sized hole
    holed = np.where(known[..., None], image, 0.0)
    filled = fill_holes(holed, known)
    np.testing.assert_array_equal(filled[known], image[known])
    err = np.abs(filled - image)[~known].mean()
    assert err < 10.0, err  # a guess at the ramp, far from the zeros it started as (40 levels off on average)
    # Copying the nearest known pixel (AD-NeRF's rule) tears the hole along its middle, where the nearest
    # edge switches: a jump of tens of levels between neighbours. The fill has no such seam.
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~known, return_indices=True)  # type: ignore[misc]
    nearest = image[iy, ix]

    def seam(img: np.ndarray) -> float:
        return float(max(np.abs(np.diff(img, axis=0))[1:-1].max(), np.abs(np.diff(img, axis=1))[:, 1:-1].max()))

    hole = (slice(30, 90), slice(40, 100))
    assert seam(filled[hole]) < 4.0 and seam(nearest[hole]) > 10.0, (seam(filled[hole]), seam(nearest[hole]))


def test_mediapipe_is_installed_without_replacing_the_headless_opencv():
    import cv2

    dists = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert "mediapipe" in dists and "opencv-python-headless" in dists
    assert not {"opencv-contrib-python", "opencv-python"} & dists, dists & {"opencv-contrib-python", "opencv-python"}
    files = importlib.metadata.distribution("opencv-python-headless").files or []
    cv2_init = Path(cv2.__file__).resolve()
    assert any(Path(str(f.locate())).resolve() == cv2_init for f in files)


def test_the_stored_face_template_is_the_synthetic_neutral_face():
    """The template poses are solved against is stored as data (no call into the synthetic generator at run time);
    it must stay the generator's neutral face, which the demo subject wears."""
    from types import SimpleNamespace

    from sahs_nerfstudio.data.synthetic import CONTROL_NAMES, landmarks_3d
    from sahs_nerfstudio.process.template import generic_template

    neutral = SimpleNamespace(controls=np.zeros((1, len(CONTROL_NAMES))))
    np.testing.assert_allclose(generic_template(), landmarks_3d(neutral, 0), atol=1e-8)  # type: ignore[arg-type]
    assert not generic_template().flags.writeable
