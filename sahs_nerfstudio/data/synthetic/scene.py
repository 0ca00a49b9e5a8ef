"""The scene of one frame: the subject as clipped ellipsoids in the head, jaw and torso frames.

Scene (units: the head is about 0.1 in radius; the head-fixed frame has +y up, +z out of the face
toward the base camera, +x to the subject's left). Everything is built of ellipsoids, some clipped
by a predicate (hair shell, eyelids, glasses rims, the mouth opening in the face skin):

==========  ===============================================================================
class       geometry
==========  ===============================================================================
skin        head ellipsoid (with a mouth slot that opens with the jaw), chin (moves with the
            jaw), eyelids (skin-coloured spheres over the eyes whose opening closes on blink)
nose        tilted ellipsoid, nostrils painted darker
eyeglasses  optional: two rims (ellipsoid discs with the lens cut out), a bridge, two temples
eyes        eyeballs; the iris and pupil sit where the gaze direction leaves the eyeball
eyebrows    flat ellipsoids lying on the forehead, moving up with ``brow_raise``
ears        flattened ellipsoids at the sides
mouth       a dark cavity inside the head (teeth, tongue) seen through the mouth slot; the far
            wall of the head seen through the slot is mouth interior too
lips        upper lip (head), lower lip (jaw), each in two halves whose corners rise with smile;
            narrower and protruding with pucker
hair        an ellipsoid shell over the skull, cut along a hairline
neck, torso in the torso frame, which moves much less than the head
background  a textured static image (image space, identical for every frame)
==========  ===============================================================================

Colours come from procedural solid textures (:class:`~.appearance.Appearance`), so colour has
structure everywhere; shading is added by the ray caster. :func:`scene_at` assembles a frame part
by part, in a fixed order: on equal depth the earlier primitive wins, so the order is part of the
output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.synthetic.anatomy import (
    HEAD_RADII,
    MOUTH_Y,
    brow_pose,
    eye_centre,
    eye_opening,
    head_surface,
    jaw_transform,
    mouth_shape,
    surface_frame,
)
from sahs_nerfstudio.data.synthetic.config import GAZE_X, GAZE_Y
from sahs_nerfstudio.data.synthetic.geometry import inv_rigid, normalize, rot_x, rot_y
from sahs_nerfstudio.data.synthetic.sequence import SubjectSequence

Albedo = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(points in the part's frame [n, 3], points in the primitive's local frame [n, 3]) -> colours [n, 3]."""
Keep = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(points in the part's frame, local points) -> which surface points exist."""


@dataclass
class Primitive:
    """An ellipsoid ``|rot^T (x - center) / radii| = 1`` in one moving part's frame, optionally clipped."""

    name: str
    """Unique within a scene (``head``, ``lip_upper_left``, ...)."""
    cls: int
    """Semantic class of its surface (:mod:`sahs_nerfstudio.data.semantics`)."""
    frame: str
    """The moving part it belongs to: ``head``, ``jaw`` or ``torso``."""
    center: np.ndarray
    """``[3]`` centre in the part's frame."""
    radii: np.ndarray
    """``[3]`` semi-axes along the columns of ``rot``."""
    rot: np.ndarray
    """``[3, 3]`` local frame -> part frame."""
    albedo: Albedo
    """Surface colour."""
    keep: Keep | None = None
    """Clip: where the near surface is removed the ray goes on to the far surface (seen from inside)."""
    inside_cls: int | None = None
    """Class of the far surface seen through a clipped hole (default: ``cls``)."""
    inside_albedo: Albedo | None = None
    """Colour of that far surface (default: ``albedo``)."""


@dataclass
class Scene:
    """One frame's primitives and where its moving parts are."""

    primitives: list[Primitive]
    """In drawing order (on equal depth the earlier one wins)."""
    frames: dict[str, np.ndarray]
    """Each part's frame -> head frame (4x4)."""

    def primitive(self, name: str) -> Primitive:
        for p in self.primitives:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_head(self, prim: Primitive, local: np.ndarray) -> np.ndarray:
        """Points in a primitive's local frame -> head frame."""
        part = local @ prim.rot.T + prim.center
        m = self.frames[prim.frame]
        return part @ m[:3, :3].T + m[:3, 3]


class _SceneBuilder:
    """Collects the primitives of one frame, in order (on equal depth the earlier primitive wins)."""

    def __init__(self, seq: SubjectSequence, index: int) -> None:
        self.c = seq.controls[index]
        """The frame's controls, columns :data:`CONTROL_NAMES`."""
        self.look = seq.appearance
        self.primitives: list[Primitive] = []

    def add(
        self,
        name: str,
        cls: int,
        frame: str,
        center,
        radii,
        rot: np.ndarray | None = None,
        *,
        albedo: Albedo,
        keep: Keep | None = None,
        inside_cls: int | None = None,
        inside_albedo: Albedo | None = None,
    ) -> None:
        self.primitives.append(
            Primitive(
                name,
                cls,
                frame,
                np.asarray(center, float),
                np.asarray(radii, float),
                np.eye(3) if rot is None else rot,
                albedo,
                keep,
                inside_cls,
                inside_albedo,
            )
        )

    def skin_albedo(self, shade: float = 1.0) -> Albedo:
        """Skin colour over a fine solid texture, with a blush on the cheeks."""
        look = self.look

        def f(p, _local):
            tex = 1.0 + 0.05 * look.noise(p, 160.0) + 0.025 * look.noise(p * 1.7 + 0.3, 420.0)
            blush = 0.08 * np.exp(-(((np.abs(p[:, 0]) - 0.045) / 0.015) ** 2 + ((p[:, 1] + 0.02) / 0.015) ** 2))
            col = look.skin[None] * tex[:, None] * shade
            col[:, 0] += blush * 0.5
            col[:, 1:] -= blush[:, None] * 0.3
            return col

        return f


def _add_head_and_mouth(b: _SceneBuilder) -> np.ndarray:
    """The head with its mouth slot, the mouth cavity, the lips and the chin; returns the jaw's frame."""
    c, look = b.c, b.look
    m = mouth_shape(c)
    jaw = jaw_transform(c)
    # The slot runs between the lips' inner edges; its lower edge moves with the jaw.
    y_slot_low = MOUTH_Y - 0.0015
    y_low0 = (jaw[:3, :3] @ head_surface(0.0, y_slot_low) + jaw[:3, 3])[1]
    y_up0 = MOUTH_Y + 0.0015
    w_slot = m["w"]

    def head_keep(p, _local):
        x = np.abs(p[:, 0])
        y_up = y_up0 + m["slope"] * x
        y_low = y_low0 + m["slope"] * x + (y_up0 - y_low0) * (x / w_slot) ** 2
        in_slot = (x < w_slot) & (p[:, 1] < y_up) & (p[:, 1] > y_low) & (p[:, 2] > 0.02)
        return ~in_slot

    def throat(p, _local):
        return np.tile(np.array([[0.16, 0.04, 0.05]]), (p.shape[0], 1))

    b.add(
        "head",
        sem.SKIN,
        "head",
        [0, 0, 0],
        HEAD_RADII,
        albedo=b.skin_albedo(),
        keep=head_keep,
        inside_cls=sem.MOUTH_INTERIOR,
        inside_albedo=throat,
    )

    def mouth_albedo(_p, local):
        col = np.tile(np.array([[0.2, 0.05, 0.06]]), (local.shape[0], 1))
        tongue = local[:, 1] < -0.012
        col[tongue] = [0.55, 0.2, 0.22]
        teeth = (local[:, 1] > 0.004) & (np.abs(local[:, 0]) < 0.02)
        col[teeth] = [0.92, 0.9, 0.84]
        return col

    b.add("mouth", sem.MOUTH_INTERIOR, "head", [0, -0.055, 0.018], [0.034, 0.028, 0.04], albedo=mouth_albedo)

    def lip_albedo(p, local):
        tex = 1.0 + 0.06 * np.sin(local[:, 0] * 900.0) * (0.5 + 0.5 * look.noise(p, 300.0))
        return look.lips[None] * tex[:, None]

    for lip, frame, y0, ry in (("upper", "head", m["y_up"], m["ry_up"]), ("lower", "jaw", m["y_low"], m["ry_low"])):
        for side in (-1.0, 1.0):
            xc = side * 0.32 * m["w"]
            yc = y0 + m["slope"] * 0.32 * m["w"]
            p, rot = surface_frame(xc, yc, x_hint=(1.0, side * m["slope"], 0.0))
            centre = p + (m["forward"] - 0.004) * rot[:, 2]
            b.add(
                f"lip_{lip}_{'left' if side > 0 else 'right'}",
                sem.LIPS,
                frame,
                centre,
                [0.74 * m["w"], ry, 0.011],
                rot,
                albedo=lip_albedo,
            )

    # Chin: moves with the jaw, below the lower lip.
    y_chin_top = m["y_low"] - m["ry_low"] - 0.002
    b.add(
        "chin",
        sem.SKIN,
        "jaw",
        [0, -0.08, 0.022],
        [0.03, 0.019, 0.025],
        albedo=b.skin_albedo(),
        keep=lambda p, _l: p[:, 1] < y_chin_top,
    )
    return jaw


def _add_nose_and_ears(b: _SceneBuilder) -> None:
    """A tilted nose with darker nostrils, and two flattened ears."""

    def nose_albedo(p, local):
        col = b.skin_albedo(1.0)(p, local)
        col[:, 0] *= 1.04
        nostril = (local[:, 1] < -0.021) & (np.abs(np.abs(local[:, 0]) - 0.0055) < 0.003) & (local[:, 2] < 0.009)
        col[nostril] *= 0.45
        return col

    b.add("nose", sem.NOSE, "head", [0, -0.012, 0.079], [0.0115, 0.027, 0.017], rot_x(-0.3), albedo=nose_albedo)

    def ear_albedo(p, local):
        col = b.skin_albedo(0.97)(p, local)
        rim = ((local[:, 1] / 0.022) ** 2 + (local[:, 2] / 0.014) ** 2) < 0.45
        col[rim] *= 0.8
        return col

    for side in (-1.0, 1.0):
        name = "ear_left" if side > 0 else "ear_right"
        b.add(
            name,
            sem.EARS,
            "head",
            [side * 0.073, 0.002, -0.008],
            [0.007, 0.022, 0.014],
            rot_y(-side * 0.6),
            albedo=ear_albedo,
        )


def _add_eyes_and_brows(b: _SceneBuilder) -> None:
    """Eyeballs looking along the gaze, lids that close on blink, brows that rise with ``brow_raise``."""
    c, look = b.c, b.look
    gaze = normalize(np.array([0.4 * c[GAZE_X], 0.3 * c[GAZE_Y], 1.0]))
    opening = eye_opening(c)

    def eyeball_albedo(_p, local):
        n = normalize(local)
        cosang = n @ gaze
        col = np.tile(np.array([[0.93, 0.91, 0.88]]), (local.shape[0], 1))
        iris = cosang > np.cos(0.5)
        ang = np.arctan2(n[:, 1], n[:, 0])
        col[iris] = look.iris[None] * (0.8 + 0.2 * np.sin(ang[iris] * 14.0))[:, None]
        col[cosang > np.cos(0.2)] = [0.03, 0.03, 0.04]
        return col

    def lid_keep(p, local):
        x = local[:, 0]
        shape = np.clip(1 - (x / 0.0115) ** 2, 0, 1)
        top = 0.0012 + opening * shape
        bottom = 0.0012 - 0.65 * opening * shape
        return (local[:, 1] >= top) | (local[:, 1] <= bottom)

    def lid_albedo(p, local):
        col = b.skin_albedo(0.93)(p, local)
        x = local[:, 0]
        shape = np.clip(1 - (x / 0.0115) ** 2, 0, 1)
        lash = np.abs(local[:, 1] - (0.0012 + opening * shape)) < 0.0013
        col[lash] = [0.18, 0.12, 0.1]
        return col

    for side in (-1.0, 1.0):
        tag = "left" if side > 0 else "right"
        centre = eye_centre(side)
        b.add(f"eye_{tag}", sem.EYES, "head", centre, [0.012] * 3, albedo=eyeball_albedo)
        b.add(f"lid_{tag}", sem.SKIN, "head", centre, [0.0128] * 3, albedo=lid_albedo, keep=lid_keep)

    def brow_albedo(p, local):
        strokes = 0.75 + 0.25 * np.sin(local[:, 0] * 2500.0 + local[:, 1] * 900.0)
        return look.hair[None] * 0.9 * strokes[:, None]

    for side in (-1.0, 1.0):
        centre, rot = brow_pose(side, c)
        b.add(
            f"brow_{'left' if side > 0 else 'right'}",
            sem.EYEBROWS,
            "head",
            centre,
            [0.019, 0.0035, 0.005],
            rot,
            albedo=brow_albedo,
        )


def _add_hair(b: _SceneBuilder) -> None:
    """A shell over the skull, cut along a wavy hairline, with strands."""
    look = b.look

    def hair_keep(p, _local):
        line = np.interp(p[:, 2], [-0.05, -0.015, 0.045], [-0.065, 0.03, 0.064]) + 0.003 * np.sin(p[:, 0] * 160.0)
        return p[:, 1] > line

    def hair_albedo(p, _local):
        theta = np.arctan2(p[:, 0], p[:, 2])
        strands = 0.5 + 0.5 * np.sin(70.0 * theta + 6.0 * look.noise(p, 60.0))
        return look.hair[None] * (0.7 + 0.45 * strands)[:, None]

    b.add("hair", sem.HAIR, "head", [0, 0.012, -0.006], [0.079, 0.101, 0.093], albedo=hair_albedo, keep=hair_keep)


def _add_glasses(b: _SceneBuilder) -> None:
    """Two rims with the lenses cut out, two temples and a bridge."""
    look = b.look

    def glasses_albedo(p, _local):
        return look.glasses[None] * (1.0 + 0.15 * look.noise(p, 500.0))[:, None]

    for side in (-1.0, 1.0):
        tag = "left" if side > 0 else "right"
        b.add(
            f"rim_{tag}",
            sem.EYEGLASSES,
            "head",
            [side * 0.03, 0.02, 0.091],
            [0.02, 0.0145, 0.0022],
            albedo=glasses_albedo,
            keep=lambda p, q: (q[:, 0] / 0.02) ** 2 + (q[:, 1] / 0.0145) ** 2 > 0.5,
        )
        a = np.array([side * 0.05, 0.022, 0.09])
        e = np.array([side * 0.075, 0.022, -0.005])
        d = e - a
        ang = np.arctan2(-d[2], d[0])  # rotate local x onto the temple direction (about y)
        b.add(
            f"temple_{tag}",
            sem.EYEGLASSES,
            "head",
            (a + e) / 2,
            [np.linalg.norm(d) / 2, 0.0022, 0.0022],
            rot_y(ang),
            albedo=glasses_albedo,
        )
    b.add("bridge", sem.EYEGLASSES, "head", [0, 0.024, 0.092], [0.011, 0.0022, 0.0022], albedo=glasses_albedo)


def _add_neck_and_torso(b: _SceneBuilder) -> None:
    """The neck and a striped shirt, in the torso frame."""
    look = b.look
    b.add("neck", sem.NECK, "torso", [0, -0.1, -0.012], [0.04, 0.07, 0.04], albedo=b.skin_albedo(0.9))

    def shirt_albedo(p, _local):
        stripes = (np.sin(p[:, 1] * 2 * np.pi / 0.03) > 0.55).astype(np.float64)
        col = look.shirt[None] * (1 - stripes[:, None]) + look.shirt_stripe[None] * stripes[:, None]
        return col * (1.0 + 0.08 * look.noise(p, 120.0))[:, None]

    b.add("torso", sem.TORSO, "torso", [0, -0.265, -0.035], [0.19, 0.135, 0.085], albedo=shirt_albedo)


def scene_at(seq: SubjectSequence, index: int) -> Scene:
    """All primitives of frame ``index`` with the frames of the head, the jaw and the torso."""
    b = _SceneBuilder(seq, index)
    jaw = _add_head_and_mouth(b)
    _add_nose_and_ears(b)
    _add_eyes_and_brows(b)
    _add_hair(b)
    if seq.config.glasses:
        _add_glasses(b)
    _add_neck_and_torso(b)
    frames = {
        "head": np.eye(4),
        "jaw": jaw,
        "torso": inv_rigid(seq.head_motion[index]) @ seq.torso_motion[index],
    }
    return Scene(b.primitives, frames)
