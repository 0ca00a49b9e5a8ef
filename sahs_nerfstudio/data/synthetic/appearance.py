"""The subject's look, drawn from the seed: colours, a solid texture and the static background."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data.synthetic.geometry import normalize


@dataclass
class Appearance:
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    shirt: np.ndarray
    shirt_stripe: np.ndarray
    glasses: np.ndarray
    noise_dirs: np.ndarray
    noise_phases: np.ndarray

    def noise(self, p: np.ndarray, freq: float) -> np.ndarray:
        """Smooth solid texture in [-1, 1] (a sum of plane waves) at the 3-D points ``p``."""
        return np.sin(freq * (p @ self.noise_dirs.T) + self.noise_phases).mean(axis=1) * 1.6


def make_appearance(rng: np.random.Generator) -> Appearance:
    skins = np.array([[0.87, 0.68, 0.56], [0.78, 0.57, 0.44], [0.62, 0.44, 0.33], [0.93, 0.76, 0.66]])
    hairs = np.array([[0.20, 0.13, 0.08], [0.38, 0.24, 0.12], [0.10, 0.08, 0.07], [0.62, 0.47, 0.26]])
    irises = np.array([[0.35, 0.22, 0.10], [0.25, 0.42, 0.62], [0.30, 0.45, 0.28]])
    shirts = np.array([[0.20, 0.32, 0.60], [0.62, 0.20, 0.22], [0.25, 0.50, 0.35], [0.85, 0.80, 0.70]])
    jitter = lambda c: np.clip(c * rng.uniform(0.92, 1.08, 3), 0, 1)  # noqa: E731
    shirt = jitter(shirts[rng.integers(len(shirts))])
    dirs = normalize(rng.normal(size=(7, 3)))
    return Appearance(
        skin=jitter(skins[rng.integers(len(skins))]),
        hair=jitter(hairs[rng.integers(len(hairs))]),
        iris=jitter(irises[rng.integers(len(irises))]),
        lips=jitter(np.array([0.72, 0.32, 0.34])),
        shirt=shirt,
        shirt_stripe=np.clip(1.0 - 0.8 * shirt, 0, 1),
        glasses=jitter(np.array([0.12, 0.10, 0.10])),
        noise_dirs=dirs,
        noise_phases=rng.uniform(0, 2 * np.pi, 7),
    )


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured static background ``[H, W, 3]`` in [0, 1], defined in normalised image coordinates."""
    top = rng.uniform(0.55, 0.85, 3)
    bottom = rng.uniform(0.25, 0.55, 3)
    v = (np.arange(height) + 0.5)[:, None] / height
    u = (np.arange(width) + 0.5)[None, :] / width
    img = top[None, None] * (1 - v[..., None]) + bottom[None, None] * v[..., None]
    img = np.broadcast_to(img, (height, width, 3)).copy()
    # Soft vertical panels and a few soft discs (structure a NeRF must explain as background).
    img *= (1.0 + 0.06 * np.sin(2 * np.pi * (3.0 * u + rng.uniform())))[..., None]
    for _ in range(4):
        cu, cv, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.2)
        blob = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r))
        img += 0.12 * blob[..., None] * (rng.uniform(-1, 1, 3))[None, None]
    # Low-frequency value noise (bilinear on an 8x8 grid).
    grid = rng.uniform(-1, 1, (9, 9))
    gu, gv = u[0] * 8, v[:, 0] * 8
    iu, iv = np.minimum(gu.astype(int), 7), np.minimum(gv.astype(int), 7)
    fu, fv = gu - iu, gv - iv
    val = (
        grid[iv][:, iu] * (1 - fv)[:, None] * (1 - fu)[None]
        + grid[iv][:, iu + 1] * (1 - fv)[:, None] * fu[None]
        + grid[iv + 1][:, iu] * fv[:, None] * (1 - fu)[None]
        + grid[iv + 1][:, iu + 1] * fv[:, None] * fu[None]
    )
    img *= (1.0 + 0.08 * val)[..., None]
    return np.clip(img, 0, 1)
