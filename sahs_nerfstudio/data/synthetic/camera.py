"""The layouts' pinhole cameras: the one place that turns pixels into rays and 3-D points into pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sahs_nerfstudio.data.synthetic.config import FOCAL_SCALE, NERFACE_PRINCIPAL_POINT, LayoutName, SyntheticConfig
from sahs_nerfstudio.data.synthetic.geometry import inv_rigid


@dataclass
class PinholeCamera:
    """A layout's pinhole: pixel (i=column, j=row) looks along ``((i - cx)/fx, -(j - cy)/fy, -1)``."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    """Principal point column in pixels."""
    cy: float
    """Principal point row in pixels."""

    def directions(self) -> np.ndarray:
        """Camera-space directions ``[H*W, 3]`` in row-major pixel order (integer coordinates)."""
        j, i = np.meshgrid(
            np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64), indexing="ij"
        )
        d = np.stack([(i - self.cx) / self.fx, -(j - self.cy) / self.fy, -np.ones_like(i)], axis=-1)
        return d.reshape(-1, 3)

    def project(self, c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``[n, 2]`` (i, j) of world points, the inverse of :meth:`directions`."""
        w2c = inv_rigid(c2w)
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        depth = -pc[:, 2]
        return np.stack([self.cx + self.fx * pc[:, 0] / depth, self.cy - self.fy * pc[:, 1] / depth], axis=-1)


def layout_camera(config: SyntheticConfig, layout: LayoutName) -> PinholeCamera:
    """NeRFace: fx negative (mirrored x), principal point 0.49/0.51; AD-NeRF: image centre."""
    width, height = config.image_size
    focal = FOCAL_SCALE * min(width, height)
    if layout == "nerface":
        cxf, cyf = NERFACE_PRINCIPAL_POINT
        return PinholeCamera(width, height, -focal, focal, width * cxf, height * cyf)
    return PinholeCamera(width, height, focal, focal, width / 2.0, height / 2.0)
