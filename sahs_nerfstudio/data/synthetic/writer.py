"""Writing the subject in the NeRFace and AD-NeRF layouts (through the format writers), plus its sidecar.

Splits. NeRFace: train = training part, test = held-out part, val = ``num_val`` held-out frames
(evenly spaced). AD-NeRF: its positional split (:func:`adnerf_split_indices`, last ``N // 11``
frames validate). With the default ``num_test = num_train // 10`` the AD-NeRF val split is exactly
the held-out part; with another ``num_test`` the summary says how they differ.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.adnerf_config import write_run_configs
from sahs_nerfstudio.data.eye import AU_CSV, au45_from_closure, write_au_csv
from sahs_nerfstudio.data.formats import (
    ADNERF_AUDIO,
    ADNERF_AUDIO_WAV,
    ADNERF_BACKGROUND,
    NERFACE_BACKGROUND,
    ADNeRFFrame,
    ADNeRFSplit,
    NeRFaceFrame,
    NeRFaceSplit,
    adnerf_image_path,
    adnerf_mask_path,
    adnerf_parsing_path,
    adnerf_split_indices,
    nerface_camera_angle_x,
    nerface_image_path,
    nerface_mask_path,
    write_adnerf_split,
    write_audio_features,
    write_nerface_split,
    write_rgb,
)
from sahs_nerfstudio.data.synthetic.camera import layout_camera
from sahs_nerfstudio.data.synthetic.config import (
    BLINK,
    CONTROL_NAMES,
    NERFACE_PRINCIPAL_POINT,
    NOVEL_THRESHOLD,
    SAMPLE_RATE,
    SUBJECT_FILE,
    TRAIN_LOWER_MAX,
    TRAIN_UPPER_MAX,
    SyntheticConfig,
)
from sahs_nerfstudio.data.synthetic.landmarks import landmarks_3d
from sahs_nerfstudio.data.synthetic.raycast import render_scene, to_uint8
from sahs_nerfstudio.data.synthetic.scene import scene_at
from sahs_nerfstudio.data.synthetic.sequence import SubjectSequence, build_sequence, novel_combination

HEAD_CLASSES = (
    sem.SKIN,
    sem.NOSE,
    sem.EYEGLASSES,
    sem.EYES,
    sem.EYEBROWS,
    sem.EARS,
    sem.MOUTH_INTERIOR,
    sem.LIPS,
    sem.HAIR,
)


@dataclass
class SubjectSummary:
    """What :func:`generate_subject` wrote."""

    output: Path
    width: int
    height: int
    num_frames: int
    num_train: int
    num_test: int
    splits: dict[str, dict[str, int]]
    """layout -> split -> number of frames."""
    held_out: list[int]
    adnerf_val: list[int]
    class_fractions: dict[str, float]
    """Fraction of all pixels of all frames of the first written layout, per class name."""
    novel_fraction: float
    """Fraction of held-out frames with a novel upper/lower face combination."""
    seconds: float

    def notes(self) -> list[str]:
        out = []
        if self.adnerf_val != self.held_out and "adnerf" in self.splits:
            out.append(
                f"AD-NeRF's positional val split is frames {self.adnerf_val[0]}..{self.adnerf_val[-1]}, "
                f"the held-out part is {self.held_out[0]}..{self.held_out[-1]} "
                "(use num_test = num_train // 10 to make them equal)"
            )
        missing = [name for name, frac in self.class_fractions.items() if frac == 0.0]
        if missing:
            out.append(f"classes absent: {', '.join(missing)}")
        return out


def _bbox(points: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) around the face landmarks, widened up to include the forehead."""
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    w, h = x1 - x0, y1 - y0
    x0, x1 = x0 - 0.12 * w, x1 + 0.12 * w
    y0, y1 = y0 - 0.45 * h, y1 + 0.08 * h
    return (
        float(np.clip(x0, 0, width)),
        float(np.clip(y0, 0, height)),
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
    )


def _clean(root: Path) -> None:
    """Remove a previous synthetic layout folder (only when it looks like one: a transforms_train.json)."""
    if root.is_dir() and (root / "transforms_train.json").is_file():
        shutil.rmtree(root)


def _nerface_val(held: list[int], num_val: int) -> list[int]:
    """``num_val`` held-out frames, evenly spaced (all of them if fewer)."""
    num_val = min(max(1, num_val), len(held))
    return [held[int(round(k))] for k in np.linspace(0, len(held) - 1, num_val)] if num_val > 1 else held[:1]


def _write_nerface(root: Path, seq: SubjectSequence, val: list[int], class_counts: np.ndarray) -> dict[str, int]:
    """The NeRFace layout: PNG frames and masks per split, ``transforms_<split>.json``; counts classes."""
    config = seq.config
    width, height = config.image_size
    cam = layout_camera(config, "nerface")
    write_rgb(root / NERFACE_BACKGROUND, to_uint8(seq.background))
    intr = (cam.fx, cam.fy, NERFACE_PRINCIPAL_POINT[0], NERFACE_PRINCIPAL_POINT[1])
    angle = nerface_camera_angle_x(width, cam.fx)
    split_frames: dict[str, list[NeRFaceFrame]] = {"train": [], "val": [], "test": []}
    for f in range(seq.num_frames):
        view = render_scene(scene_at(seq, f), cam, seq.c2w[f], seq.background)
        class_counts += np.bincount(view.labels.ravel(), minlength=sem.NUM_CLASSES)
        x0, y0, x1, y1 = _bbox(cam.project(seq.c2w[f], landmarks_3d(seq, f)), width, height)
        bbox = (y0 / height, y1 / height, x0 / width, x1 / width)
        names = ["train"] if f < seq.num_train else (["val", "test"] if f in val else ["test"])
        for split in names:
            file_path = f"./{split}/f_{f:04d}"
            write_rgb(nerface_image_path(root, file_path), view.rgb)
            write_rgb(nerface_mask_path(root, file_path), sem.encode_mask(view.labels))
            split_frames[split].append(NeRFaceFrame(file_path, seq.c2w[f], seq.expressions[f], bbox))
    for split, frames in split_frames.items():
        write_nerface_split(root, split, NeRFaceSplit(angle, intr, frames))
    return {k: len(v) for k, v in split_frames.items()}


def _write_adnerf(
    root: Path, seq: SubjectSequence, splits: dict[str, list[int]], class_counts: np.ndarray | None
) -> dict[str, int]:
    """The AD-NeRF layout: JPEG frames, head images, masks, parsing, landmarks, audio, transforms.

    Classes are counted into ``class_counts`` unless it is None (the NeRFace layout counted them).
    """
    import soundfile

    from sahs_nerfstudio.data.audio import wav_to_features

    config = seq.config
    width, height = config.image_size
    n = seq.num_frames
    cam = layout_camera(config, "adnerf")
    background = to_uint8(seq.background)
    write_rgb(root / ADNERF_BACKGROUND, background, quality=config.jpeg_quality)
    frames_by_id: dict[int, ADNeRFFrame] = {}
    for f in range(n):
        view = render_scene(scene_at(seq, f), cam, seq.c2w[f], seq.background)
        if class_counts is not None:
            class_counts += np.bincount(view.labels.ravel(), minlength=sem.NUM_CLASSES)
        q = config.jpeg_quality
        write_rgb(adnerf_image_path(root, f), view.rgb, quality=q)
        write_rgb(adnerf_image_path(root, f, "ori_imgs"), view.rgb, quality=q)
        head = np.isin(view.labels, HEAD_CLASSES)
        write_rgb(adnerf_image_path(root, f, "head_imgs"), np.where(head[..., None], view.rgb, background), quality=q)
        write_rgb(adnerf_mask_path(root, f), sem.encode_mask(view.labels))
        write_rgb(adnerf_parsing_path(root, f), sem.encode_adnerf_parsing(view.labels))
        lms = cam.project(seq.c2w[f], landmarks_3d(seq, f))
        lms_path = adnerf_image_path(root, f, "ori_imgs").with_suffix(".lms")
        lms_path.write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in lms))
        x0, y0, x1, y1 = _bbox(lms, width, height)
        rect = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1 - x0)), int(np.ceil(y1 - y0)))
        frames_by_id[f] = ADNeRFFrame(img_id=f, aud_id=f, transform_matrix=seq.c2w[f], face_rect=rect)
    wav = root / ADNERF_AUDIO_WAV
    soundfile.write(str(wav), seq.audio, SAMPLE_RATE, subtype="PCM_16")
    write_audio_features(root / ADNERF_AUDIO, wav_to_features(wav, fps=config.fps, num_frames=n))
    # The subject blinks: its eye track as OpenFace's au.csv (AU45 = 2 * blink, see data/eye.py).
    write_au_csv(root / AU_CSV, au45_from_closure(seq.controls[:, BLINK]))
    for split, ids in splits.items():
        write_adnerf_split(root, split, ADNeRFSplit(cam.fx, cam.cx, cam.cy, [frames_by_id[i] for i in ids]))
    # As process_data.py: HeadNeRF_config.txt / TorsoNeRF_config.txt with near, far and testskip.
    write_run_configs(root, root.name, list(seq.c2w), len(splits["val"]))
    return {k: len(v) for k, v in splits.items()}


def generate_subject(config: SyntheticConfig) -> SubjectSummary:
    """Render the sequence and write the requested layouts under ``config.output``."""
    start = time.perf_counter()
    seq = build_sequence(config)
    width, height = config.image_size
    out = Path(config.output)
    held = seq.held_out
    val = _nerface_val(held, config.num_val)
    adnerf_splits = adnerf_split_indices(seq.num_frames)
    class_counts = np.zeros(sem.NUM_CLASSES, dtype=np.int64)
    splits: dict[str, dict[str, int]] = {}
    for layout in ("nerface", "adnerf"):
        if layout not in config.layouts:
            continue
        root = out / layout
        if config.clean:
            _clean(root)
        if layout == "nerface":
            splits[layout] = _write_nerface(root, seq, val, class_counts)
        else:
            counts = class_counts if "nerface" not in config.layouts else None
            splits[layout] = _write_adnerf(root, seq, adnerf_splits, counts)

    out.mkdir(parents=True, exist_ok=True)
    _write_subject_file(out / SUBJECT_FILE, seq, val, adnerf_splits)
    total = max(1, int(class_counts.sum()))
    novel = novel_combination(seq.controls[held])
    return SubjectSummary(
        output=out,
        width=width,
        height=height,
        num_frames=seq.num_frames,
        num_train=seq.num_train,
        num_test=seq.num_test,
        splits=splits,
        held_out=held,
        adnerf_val=adnerf_splits["val"],
        class_fractions={name: float(class_counts[k]) / total for k, name in enumerate(sem.CLASS_NAMES)},
        novel_fraction=float(novel.mean()),
        seconds=time.perf_counter() - start,
    )


def _write_subject_file(
    path: Path, seq: SubjectSequence, nerface_val: list[int], adnerf_splits: dict[str, list[int]]
) -> None:
    """The sidecar with the ground truth a test or a benchmark checks against (controls, poses, splits)."""
    meta = {
        "description": "ground truth of the synthetic subject (sahs_nerfstudio.data.synthetic)",
        "fps": seq.config.fps,
        "seed": seq.config.seed,
        "num_frames": seq.num_frames,
        "num_train": seq.num_train,
        "held_out": seq.held_out,
        "nerface_val": nerface_val,
        "adnerf_val": adnerf_splits["val"],
        "rule": (
            f"training frames: never max(blink, brow_raise) > {TRAIN_UPPER_MAX} with max(jaw_open, smile) > "
            f"{TRAIN_LOWER_MAX}; held-out frames: mostly both > {NOVEL_THRESHOLD}"
        ),
        "control_names": list(CONTROL_NAMES),
        "controls": np.round(seq.controls, 6).tolist(),
        "head_yaw_pitch_roll": np.round(seq.head_angles, 6).tolist(),
        "syllables": [[round(s.start, 4), round(s.duration, 4), s.vowel, round(s.loudness, 4)] for s in seq.syllables],
    }
    path.write_text(json.dumps(meta, indent=1))
