"""Analytic ray casting of a frame's scene: one ray per pixel, nearest ellipsoid hit, Lambert shading.

Shading is Lambert + ambient with the light fixed to each moving part (head, jaw, torso), so the
colour of a surface point depends on the point and the expression only (no view dependence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data.synthetic.camera import PinholeCamera, layout_camera
from sahs_nerfstudio.data.synthetic.config import LayoutName
from sahs_nerfstudio.data.synthetic.geometry import inv_rigid, normalize
from sahs_nerfstudio.data.synthetic.scene import Scene, scene_at
from sahs_nerfstudio.data.synthetic.sequence import SubjectSequence

LIGHT_DIR = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
AMBIENT, DIFFUSE = 0.42, 0.62


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float colours in [0, 1] -> uint8, rounding half up (the generated files' bytes depend on it)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass
class RenderedView:
    rgb: np.ndarray
    """``[H, W, 3]`` uint8."""
    labels: np.ndarray
    """``[H, W]`` int64 class per pixel."""
    depth: np.ndarray
    """``[H, W]`` ray parameter of the hit (inf on background); the rays' camera-space z is -1."""


def _pixels_in_projection(camera: PinholeCamera, c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels inside the (1-pixel padded) image box of projected points."""
    w2c = inv_rigid(c2w)
    if np.any((points @ w2c[:3, :3].T + w2c[:3, 3])[:, 2] > -1e-6):  # not all in front: no culling
        return np.arange(camera.width * camera.height)
    ij = camera.project(c2w, points)
    i0 = max(0, int(np.floor(ij[:, 0].min())) - 1)
    i1 = min(camera.width - 1, int(np.ceil(ij[:, 0].max())) + 1)
    j0 = max(0, int(np.floor(ij[:, 1].min())) - 1)
    j1 = min(camera.height - 1, int(np.ceil(ij[:, 1].max())) + 1)
    if i0 > i1 or j0 > j1:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(j0, j1 + 1)[:, None] * camera.width + np.arange(i0, i1 + 1)[None, :]).ravel()


def render_scene(scene: Scene, camera: PinholeCamera, c2w: np.ndarray, background: np.ndarray) -> RenderedView:
    """Ray-cast ``scene`` through every pixel of ``camera`` placed at ``c2w`` (head frame)."""
    dirs_cam = camera.directions()
    d_head = dirs_cam @ c2w[:3, :3].T
    o_head = c2w[:3, 3]
    num = d_head.shape[0]
    best_t = np.full(num, np.inf)
    best_k = np.full(num, -1, dtype=np.int64)
    best_inside = np.zeros(num, dtype=bool)
    part_rays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    for part, to_head in scene.frames.items():
        to_part = inv_rigid(to_head)
        part_rays[part] = (to_part[:3, :3] @ o_head + to_part[:3, 3], d_head @ to_part[:3, :3].T)

    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    for k, prim in enumerate(scene.primitives):
        o, d_all = part_rays[prim.frame]
        # Only the pixels inside the projected bounding cube of the primitive can see it.
        to_head = scene.frames[prim.frame]
        cube = (prim.center + prim.radii.max() * corners) @ to_head[:3, :3].T + to_head[:3, 3]
        cand = _pixels_in_projection(camera, c2w, cube)
        if cand.size == 0:
            continue
        mat = prim.rot.T / prim.radii[:, None]  # part -> unit sphere
        ol = mat @ (o - prim.center)
        dl = d_all[cand] @ mat.T
        a = np.einsum("ij,ij->i", dl, dl)
        b = dl @ ol
        disc = b * b - a * (ol @ ol - 1.0)
        hit = np.nonzero(disc > 0)[0]
        if hit.size == 0:
            continue
        sq = np.sqrt(disc[hit])
        t0 = (-b[hit] - sq) / a[hit]
        t1 = (-b[hit] + sq) / a[hit]
        t = np.where(t0 > 1e-6, t0, t1)
        inside = np.zeros(hit.size, dtype=bool)
        if prim.keep is not None:
            local0 = (ol + t[:, None] * dl[hit]) * prim.radii
            ok0 = prim.keep(local0 @ prim.rot.T + prim.center, local0)
            retry = np.nonzero(~ok0)[0]
            local1 = (ol + t1[retry, None] * dl[hit[retry]]) * prim.radii
            ok1 = prim.keep(local1 @ prim.rot.T + prim.center, local1)
            t[retry] = np.where(ok1 & (t1[retry] > 1e-6), t1[retry], np.inf)
            inside[retry] = True
        t = np.where(t > 1e-6, t, np.inf)
        rays = cand[hit]
        closer = t < best_t[rays]
        rays = rays[closer]
        best_t[rays] = t[closer]
        best_k[rays] = k
        best_inside[rays] = inside[closer]

    rgb = background.reshape(-1, 3).copy()
    labels = np.zeros(num, dtype=np.int64)
    for k, prim in enumerate(scene.primitives):
        sel = np.nonzero(best_k == k)[0]
        if sel.size == 0:
            continue
        o, d = part_rays[prim.frame]
        p_part = o + best_t[sel, None] * d[sel]
        local = (p_part - prim.center) @ prim.rot
        normal = normalize((local / prim.radii**2) @ prim.rot.T)
        facing = (normal * d[sel]).sum(1) > 0
        normal[facing] *= -1.0
        shade = AMBIENT + DIFFUSE * np.clip(normal @ LIGHT_DIR, 0.0, None)
        inside = best_inside[sel]
        albedo = prim.albedo(p_part, local)
        cls = np.full(sel.size, prim.cls, dtype=np.int64)
        if prim.inside_cls is not None and inside.any():
            cls[inside] = prim.inside_cls
            if prim.inside_albedo is not None:
                albedo[inside] = prim.inside_albedo(p_part[inside], local[inside])
        rgb[sel] = albedo * shade[:, None]
        labels[sel] = cls
    rgb8 = to_uint8(rgb)
    h, w = camera.height, camera.width
    return RenderedView(rgb8.reshape(h, w, 3), labels.reshape(h, w), best_t.reshape(h, w))


def render_frame(seq: SubjectSequence, index: int, layout: LayoutName) -> RenderedView:
    """Frame ``index`` of the sequence as the given layout's camera sees it."""
    camera = layout_camera(seq.config, layout)
    return render_scene(scene_at(seq, index), camera, seq.c2w[index], seq.background)
