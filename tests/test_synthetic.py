"""The procedural talking subject: classes, masks, determinism, audio-driven mouth, novelty, rays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import (
    ADNERF_AUDIO,
    ADNERF_AUDIO_WAV,
    adnerf_image_path,
    adnerf_mask_path,
    adnerf_parsing_path,
    adnerf_split_indices,
    nerface_image_path,
    nerface_mask_path,
    read_adnerf_split,
    read_audio_features,
    read_nerface_split,
    read_rgb,
)
from sahs_nerfstudio.data.synthetic import (
    BLINK,
    BROW,
    JAW,
    SMILE,
    LayoutName,
    SyntheticConfig,
    build_sequence,
    generate_subject,
    landmarks_3d,
    layout_camera,
    novel_combination,
    render_frame,
    render_scene,
    scene_at,
    violates_training_rule,
)
from sahs_nerfstudio.errors import FormatError

HEAD = {sem.SKIN, sem.NOSE, sem.EYEGLASSES, sem.EYES, sem.EYEBROWS, sem.EARS, sem.MOUTH_INTERIOR, sem.LIPS, sem.HAIR}


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A small non-square subject with glasses: 40 training + 4 held-out frames, 48x40 pixels."""
    config = SyntheticConfig(output=tmp_path_factory.mktemp("synth"), width=48, height=40, num_train=40, glasses=True)
    summary = generate_subject(config)
    return config, summary, build_sequence(config)


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layouts_read_back_with_the_format_readers(subject):
    config, summary, seq = subject
    root = Path(config.output)
    nerface = root / "nerface"
    train, val, test = (read_nerface_split(nerface, s) for s in ("train", "val", "test"))
    assert len(train.frames) == 40 and len(test.frames) == 4 and 1 <= len(val.frames) <= 4
    fx, fy, cx, cy = train.intrinsics
    assert fx < 0 < fy and (cx, cy) != (0.5, 0.5)
    assert all(len(fr.expression) == 76 and fr.bbox is not None for fr in train.frames)
    for fr in train.frames + test.frames:
        assert read_rgb(nerface_image_path(nerface, fr.file_path)).shape == (40, 48, 3)
    adnerf = root / "adnerf"
    split = adnerf_split_indices(44)
    assert [fr.img_id for fr in read_adnerf_split(adnerf, "train").frames] == split["train"]
    assert [fr.img_id for fr in read_adnerf_split(adnerf, "val").frames] == split["val"]
    feats = read_audio_features(adnerf / ADNERF_AUDIO)
    assert feats.shape == (44, 16, 29)
    samples, rate = soundfile.read(str(adnerf / ADNERF_AUDIO_WAV))
    assert rate == 16000 and abs(len(samples) / rate - 44 / 25.0) < 1e-3
    lms = np.loadtxt(adnerf_image_path(adnerf, 0, "ori_imgs").with_suffix(".lms"))
    assert lms.shape == (68, 2)
    assert summary.splits == {
        "nerface": {"train": 40, "val": len(val.frames), "test": 4},
        "adnerf": {"train": 40, "val": 4},
    }


def test_every_class_appears_and_masks_match_the_renderer(subject):
    config, summary, seq = subject
    root = Path(config.output)
    seen = set()
    for f in range(seq.num_frames):
        split = "train" if f < seq.num_train else "test"
        nerface_labels = sem.decode_mask(read_rgb(nerface_mask_path(root / "nerface", f"./{split}/f_{f:04d}")))
        adnerf_labels = sem.decode_mask(read_rgb(adnerf_mask_path(root / "adnerf", f)))
        assert nerface_labels.num_unmatched == 0 and adnerf_labels.num_unmatched == 0
        seen |= set(np.unique(nerface_labels.labels)) | set(np.unique(adnerf_labels.labels))
        if f % 7 == 0:  # re-render a few frames: PNG masks hold exactly the generator's labels and colours
            view = render_frame(seq, f, "nerface")
            np.testing.assert_array_equal(nerface_labels.labels, view.labels)
            np.testing.assert_array_equal(
                read_rgb(nerface_image_path(root / "nerface", f"./{split}/f_{f:04d}")), view.rgb
            )
            view = render_frame(seq, f, "adnerf")
            np.testing.assert_array_equal(adnerf_labels.labels, view.labels)
            parsing = sem.decode_adnerf_parsing(read_rgb(adnerf_parsing_path(root / "adnerf", f)))
            assert parsing.num_unmatched == 0
            expected = np.where(np.isin(view.labels, list(HEAD)), sem.SKIN, view.labels)
            np.testing.assert_array_equal(parsing.labels, expected)
            head_img = read_rgb(adnerf_image_path(root / "adnerf", f, "head_imgs")).astype(int)
            background = read_rgb(root / "adnerf" / "bc.jpg").astype(int)
            off_head = ~np.isin(view.labels, list(HEAD))
            assert np.abs(head_img - background)[off_head].mean() < 6  # JPEG noise only
    assert seen == set(range(sem.NUM_CLASSES))
    assert all(v > 0 for v in summary.class_fractions.values())


def test_same_seed_same_bytes_other_seed_other_subject(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_subject(SyntheticConfig(output=tmp_path / name, seed=seed, width=32, height=32, num_train=10))
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) > 50 and a.keys() == b.keys() == c.keys()
    assert all(a[k] == b[k] for k in a)
    differing = [k for k in a if a[k] != c[k]]
    assert "nerface/train/f_0000.png" in differing and "adnerf/aud.wav" in differing
    assert "nerface/transforms_train.json" in differing


def test_audio_loudness_drives_the_jaw(subject):
    config, _summary, seq = subject
    # Per-frame energy of the written wav, measured here independently of the generator.
    samples, rate = soundfile.read(str(Path(config.output) / "adnerf" / ADNERF_AUDIO_WAV))
    long_seq = build_sequence(SyntheticConfig(num_train=150))
    for s, sequence in ((samples, seq), (long_seq.audio, long_seq)):
        energy = []
        for f in range(sequence.num_frames):
            c = int(round(f / 25.0 * rate))
            energy.append(np.sqrt(np.mean(np.asarray(s[max(0, c - 320) : c + 320], dtype=np.float64) ** 2)))
        corr = np.corrcoef(energy, sequence.controls[:, JAW])[0, 1]
        assert corr > 0.8, corr
    # aud.npy (the features a model sees) carries the loudness too.
    feats = read_audio_features(Path(config.output) / "adnerf" / ADNERF_AUDIO)
    assert np.corrcoef(feats[:, 8, :].mean(1), seq.controls[:, JAW])[0, 1] > 0.5


def test_the_mouth_region_changes_with_jaw_open():
    import copy

    cfg = SyntheticConfig(width=96, height=96, num_train=40)
    seq = build_sequence(cfg)
    f = 3
    camera = layout_camera(cfg, "adnerf")
    views = {}
    for jaw in (0.0, 1.0):
        s = copy.copy(seq)
        s.controls = seq.controls.copy()
        s.controls[f, JAW] = jaw
        views[jaw] = render_scene(scene_at(s, f), camera, seq.c2w[f], seq.background)
    closed, opened = views[0.0], views[1.0]
    assert (opened.labels == sem.MOUTH_INTERIOR).sum() > (closed.labels == sem.MOUTH_INTERIOR).sum() + 10
    changed = np.any(closed.rgb != opened.rgb, axis=-1)
    assert changed.sum() > 30
    # Everything that changed is below the eyes, around the mouth and chin.
    lms = camera.project(seq.c2w[f], landmarks_3d(seq, f))
    rows = np.nonzero(changed)[0]
    assert rows.min() > lms[36:48, 1].max()
    mouth_labels = set(np.unique(np.concatenate([closed.labels[changed], opened.labels[changed]])))
    assert mouth_labels <= {sem.SKIN, sem.LIPS, sem.MOUTH_INTERIOR, sem.NECK, sem.BACKGROUND, sem.TORSO}


@pytest.mark.parametrize("num_train,seed", [(150, 0), (150, 1), (40, 2), (20, 5)])
def test_held_out_expressions_are_novel_combinations(num_train, seed):
    seq = build_sequence(SyntheticConfig(num_train=num_train, seed=seed))
    c = seq.controls
    assert not violates_training_rule(c[: seq.num_train]).any()
    assert novel_combination(c[seq.num_train :]).mean() >= 0.5
    assert violates_training_rule(c[seq.num_train :]).mean() >= 0.5
    if num_train >= 40:  # the parts of the combination are each seen in training
        upper = np.maximum(c[: seq.num_train, BLINK], c[: seq.num_train, BROW])
        lower = np.maximum(c[: seq.num_train, JAW], c[: seq.num_train, SMILE])
        assert (upper > 0.5).any() and (lower > 0.5).any()
    # Default num_test: AD-NeRF's positional validation split is exactly the held-out part.
    assert adnerf_split_indices(seq.num_frames)["val"] == seq.held_out


def test_held_out_frames_are_the_test_and_val_splits(subject):
    config, _summary, seq = subject
    nerface = Path(config.output) / "nerface"
    test_ids = [int(fr.file_path.rsplit("_", 1)[1]) for fr in read_nerface_split(nerface, "test").frames]
    val_ids = [int(fr.file_path.rsplit("_", 1)[1]) for fr in read_nerface_split(nerface, "val").frames]
    train_ids = [int(fr.file_path.rsplit("_", 1)[1]) for fr in read_nerface_split(nerface, "train").frames]
    assert test_ids == seq.held_out and set(val_ids) <= set(test_ids) and train_ids == list(range(40))
    meta = json.loads((Path(config.output) / "subject.json").read_text())
    assert meta["held_out"] == seq.held_out and np.allclose(meta["controls"], seq.controls, atol=1e-6)


def _project(c2w: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Camera-space coordinates of a world point (independent of the generator's code)."""
    rot, trans = c2w[:3, :3], c2w[:3, 3]
    return rot.T @ (point - trans)


def test_known_points_land_where_each_layouts_ray_formula_says(tmp_path):
    config = SyntheticConfig(output=tmp_path, width=72, height=64, num_train=30)
    generate_subject(config)
    seq = build_sequence(config)
    nerface, adnerf = tmp_path / "nerface", tmp_path / "adnerf"
    nf = read_nerface_split(nerface, "train")
    ad = read_adnerf_split(adnerf, "train")
    fx, fy, cxf, cyf = nf.intrinsics
    W, H = 72, 64
    checked = mirrored_elsewhere = 0
    for f in range(30):
        nose = scene_at(seq, f).primitive("nose").center  # head frame = the dataset's world
        # NeRFace: d_cam = ((i - W cx) / fx, -(j - H cy) / fy, -1)  =>  i = W cx + fx x / -z, j = H cy - fy y / -z
        x, y, z = _project(nf.frames[f].transform_matrix, nose)
        i, j = W * cxf + fx * x / -z, H * cyf - fy * y / -z
        labels = sem.decode_mask(read_rgb(nerface_mask_path(nerface, nf.frames[f].file_path))).labels
        assert labels[int(round(j)), int(round(i))] == sem.NOSE
        # With a positive fx the nose would be mirrored about the principal point: on a turned head, not the nose.
        i_wrong = W * cxf - fx * x / -z
        if abs(i_wrong - i) > 6:
            mirrored_elsewhere += int(labels[int(round(j)), int(round(i_wrong))] != sem.NOSE)
        # AD-NeRF: d_cam = ((i - cx) / focal, -(j - cy) / focal, -1)
        x, y, z = _project(ad.frames[f].transform_matrix, nose)
        i, j = ad.cx + ad.focal_len * x / -z, ad.cy - ad.focal_len * y / -z
        labels = sem.decode_mask(read_rgb(adnerf_mask_path(adnerf, f))).labels
        assert labels[int(round(j)), int(round(i))] == sem.NOSE
        # The head centre is inside the head in both layouts; the mouth landmarks sit on the mouth.
        x, y, z = _project(ad.frames[f].transform_matrix, np.zeros(3))
        assert labels[int(round(ad.cy - ad.focal_len * y / -z)), int(round(ad.cx + ad.focal_len * x / -z))] in HEAD
        lms = np.loadtxt(adnerf_image_path(adnerf, f, "ori_imgs").with_suffix(".lms"))
        mi, mj = lms[48:68].mean(0)
        assert labels[int(round(mj)), int(round(mi))] in (sem.LIPS, sem.MOUTH_INTERIOR)
        checked += 1
    assert checked == 30 and mirrored_elsewhere >= 5


def test_every_pixel_is_rendered_along_exactly_its_layouts_ray():
    """Rebuild each pixel's ray from the written intrinsics; the rendered hit must lie on the surface exactly."""
    config = SyntheticConfig(width=50, height=44, num_train=10)
    seq = build_sequence(config)
    W, H = 50, 44
    j, i = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")  # integer pixel coordinates, no +0.5
    nf_cam, ad_cam = layout_camera(config, "nerface"), layout_camera(config, "adnerf")
    fx, fy = nf_cam.fx, nf_cam.fy
    cxf, cyf = nf_cam.cx / W, nf_cam.cy / H
    assert fx < 0 and (round(cxf, 6), round(cyf, 6)) == (0.49, 0.51)
    rays: dict[LayoutName, np.ndarray] = {
        "nerface": np.stack([(i - W * cxf) / fx, -(j - H * cyf) / fy, -np.ones_like(i, dtype=float)], -1),
        "adnerf": np.stack([(i - W / 2) / ad_cam.fx, -(j - H / 2) / ad_cam.fx, -np.ones_like(i, dtype=float)], -1),
    }
    for f in (0, 4, 9):
        scene = scene_at(seq, f)
        for layout, d_cam in rays.items():
            view = render_frame(seq, f, layout)
            c2w = seq.c2w[f]
            points = c2w[:3, 3] + view.depth[..., None] * (d_cam @ c2w[:3, :3].T)
            for cls, name in ((sem.NOSE, "nose"), (sem.HAIR, "hair")):
                prim = scene.primitive(name)
                sel = view.labels == cls
                assert sel.sum() > 3
                q = ((points[sel] - prim.center) @ prim.rot) / prim.radii
                np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-7)


def test_512_pixels(tmp_path):
    summary = generate_subject(SyntheticConfig(output=tmp_path, resolution=512, num_train=1, num_test=1))
    assert (summary.width, summary.height) == (512, 512)
    nerface = read_nerface_split(tmp_path / "nerface", "train")
    assert read_rgb(nerface_image_path(tmp_path / "nerface", nerface.frames[0].file_path)).shape == (512, 512, 3)
    assert read_rgb(adnerf_image_path(tmp_path / "adnerf", 1)).shape == (512, 512, 3)
    assert read_audio_features(tmp_path / "adnerf" / ADNERF_AUDIO).shape == (2, 16, 29)
    assert summary.class_fractions["eyes"] > 0 and summary.class_fractions["lips"] > 0


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"resolution": 4}, "field '--resolution': expected at least 8 pixels, found 4"),
        ({"width": 64, "height": 7}, "field '--height': expected at least 8 pixels, found 7"),
        ({"num_train": 0}, "field '--num-train': expected at least one training frame, found 0"),
        ({"num_test": 0}, "field '--num-test': expected at least one held-out frame, found 0"),
        ({"num_val": 0}, "field '--num-val': expected at least one validation frame, found 0"),
        ({"fps": 0.0}, "field '--fps': expected a positive frame rate, found 0.0"),
        ({"jpeg_quality": 0}, "field '--jpeg-quality': expected 1 .. 100, found 0"),
        ({"layouts": ()}, "field '--layouts': expected at least one layout"),
    ],
)
def test_bad_settings_name_the_flag(changes, expected, tmp_path):
    with pytest.raises(FormatError) as err:
        generate_subject(SyntheticConfig(output=tmp_path / "s", **changes))
    assert expected in str(err.value)
    assert not (tmp_path / "s").exists()


def test_cli_bad_flag_is_one_line_and_status_2(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for args, expected in (
        (["--output", str(tmp_path / "s"), "--resolution", "4"], "field '--resolution': expected at least 8 pixels"),
        (
            ["--output", str(tmp_path / "file")],
            f"{tmp_path / 'file'}: field '--output': expected a folder, found a file",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sahs_nerfstudio.scripts.synth", *args], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("sahs-synth: error: ")]
        assert len(lines) == 1 and expected in lines[0], proc.stderr
