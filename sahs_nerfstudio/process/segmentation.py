"""Stage 6: the 12-class labels of a frame from the person matte, the face mesh and colour models.

* **Person / background**: the matte (MediaPipe's selfie segmentation) at 50 %.
* **Face parts** from the mesh's outlines (:mod:`.regions`): skin (the oval, on the person), brows,
  eyes, nose, lips, and the mouth interior inside the inner lips where they part.
* **Hair, ears, neck, clothes** from the matte split along the jaw line: above it hair, below it
  clothes, with a neck band under the chin as wide as the jaw. Where geometry alone is ambiguous
  the pixel's colour decides between Gaussian colour models of the clip's skin, hair and clothes
  (:class:`ColourModels`, fitted once over the clip on unambiguous pixels, so the decision does not
  flicker from frame to frame): the fringe inside the oval above the brows is hair when it looks
  like hair, and skin-coloured pixels just above the oval (a high forehead) are skin; hair hanging below the jaw beside the neck is hair, not clothes; the neck band is neck
  only where it looks like skin; skin-coloured pixels just beside the face at eye-to-mouth height
  are ears (where they differ from the clean plate: the matte often leaves ears out).
* Eyeglasses are never labelled (nothing here detects them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
from jaxtyping import Float, Int, UInt8

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.process import face_mesh as fm
from sahs_nerfstudio.process.background import MATTE_PERSON
from sahs_nerfstudio.process.regions import CHIN, FaceRegions

MOUTH_OPEN_FRACTION = 0.02
"""Inner-lip gap above this fraction of the face width labels the mouth interior."""
HAIR_REACH = 1.6
"""How far below the chin (face heights) hair may hang beside the neck."""
FOREHEAD_REACH = 0.35
"""How far above the mesh's oval (face heights) the forehead may reach when it looks like skin."""
NECK_SURE = 0.4
"""Below the chin, this many face heights of the neck band are neck whatever their colour (a collar,
a necklace, a shadow); below that colour decides."""
SKIN_SIGMAS = 3.0
"""Hair and clothes samples within this many standard deviations of the skin colour are left out."""
NECK_LENGTH = 1.0
"""How far below the chin (face heights) the neck band reaches."""
PLATE_DIFF = 30
"""A pixel this far (largest channel difference) from the clean plate is not background."""
_CLASSES = ("skin", "hair", "clothes")
_MIN_SAMPLES = 200
_SAMPLES_PER_FRAME = 4000


def _fill(mask: np.ndarray, polygon: np.ndarray, value: int) -> None:
    import cv2

    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], (int(value),))


@dataclass
class Gaussian:
    mean: Float[np.ndarray, "3"]
    inv_cov: Float[np.ndarray, "3 3"]
    log_det: float

    def log_likelihood(self, x: Float[np.ndarray, "P 3"]) -> Float[np.ndarray, " P"]:
        d = x - self.mean.astype(np.float32)
        # A matrix product and a row sum: several times einsum's speed on a million pixels.
        return -0.5 * ((d @ self.inv_cov.astype(np.float32) * d).sum(axis=1) + self.log_det)

    @staticmethod
    def fit(samples: Float[np.ndarray, "P 3"]) -> "Gaussian":
        cov = np.cov(samples.T) + np.eye(3) * 4.0  # a floor of 2 levels' spread per channel
        return Gaussian(samples.mean(0), np.linalg.inv(cov), float(np.linalg.slogdet(cov)[1]))


@dataclass
class ColourModels:
    """The clip's skin, hair and clothes colours (YCrCb), each None when too few unambiguous pixels showed it."""

    models: Dict[str, Optional[Gaussian]]

    def save(self, path) -> None:
        arrays = {}
        for name, g in self.models.items():
            if g is not None:
                arrays[f"{name}_mean"], arrays[f"{name}_inv_cov"] = g.mean, g.inv_cov
                arrays[f"{name}_log_det"] = np.array(g.log_det)
        np.savez(path, **arrays)

    @staticmethod
    def load(path) -> "ColourModels":
        z = np.load(path)
        models: Dict[str, Optional[Gaussian]] = {}
        for name in _CLASSES:
            models[name] = (
                Gaussian(z[f"{name}_mean"], z[f"{name}_inv_cov"], float(z[f"{name}_log_det"]))
                if f"{name}_mean" in z
                else None
            )
        return ColourModels(models)

    def prefers(self, pixels: Float[np.ndarray, "P 3"], name: str, over: List[str]) -> np.ndarray:
        """Pixels more likely ``name`` than every model in ``over`` (models that are absent do not compete;
        an absent ``name`` is never preferred)."""
        own = self.models.get(name)
        if own is None:
            return np.zeros(len(pixels), bool)
        ll = own.log_likelihood(pixels)
        out = np.ones(len(pixels), bool)
        for other in over:
            g = self.models.get(other)
            if g is not None:
                out &= ll > g.log_likelihood(pixels)
        return out


def _ycrcb(rgb: UInt8[np.ndarray, "H W 3"]) -> Float[np.ndarray, "H W 3"]:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb).astype(np.float32)


@dataclass
class _Layout:
    """The geometric regions of one frame that labels and colour sampling share."""

    person: np.ndarray
    below: np.ndarray
    oval: np.ndarray
    parts: np.ndarray
    """Brows, eyes, nose, lips and mouth (the oval's inner parts)."""
    a: np.ndarray
    b: np.ndarray
    brow_height: float
    polys: Dict[str, np.ndarray]
    """The parts' outlines (:meth:`FaceRegions.polygons`)."""


def _layout(matte: UInt8[np.ndarray, "H W"], faces: FaceRegions) -> _Layout:
    h, w = matte.shape
    a, b = faces.face_coords(h, w)
    polys = faces.polygons()
    oval = np.zeros((h, w), np.uint8)
    _fill(oval, polys["oval"], 1)
    parts = np.zeros((h, w), np.uint8)
    for name in ("right_brow", "left_brow", "right_eye", "left_eye", "nose", "lips"):
        _fill(parts, polys[name], 1)
    brows = faces.points(fm.RIGHT_BROW + fm.LEFT_BROW)
    brow_height = float(((brows - faces.mesh[CHIN, :2]) @ faces.up).mean())
    return _Layout(
        person=matte >= MATTE_PERSON,
        below=faces.below_jaw(a, b),
        oval=oval.astype(bool),
        parts=parts.astype(bool),
        a=a,
        b=b,
        brow_height=brow_height,
        polys=polys,
    )


def colour_samples(
    rgb: UInt8[np.ndarray, "H W 3"], matte: UInt8[np.ndarray, "H W"], faces: FaceRegions, rng: np.random.Generator
) -> Dict[str, np.ndarray]:
    """Unambiguous pixels of one frame (YCrCb): skin between the brows and the chin off the parts, hair
    above the oval, clothes well below the chin."""
    import cv2

    geo = _layout(matte, faces)
    sure = matte >= 230
    fh = faces.face_height
    inner = cv2.erode(geo.oval.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    grown = cv2.dilate(geo.oval.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    regions = {
        "skin": inner & ~geo.parts & sure & (geo.b < geo.brow_height - 0.15 * fh) & (geo.b > 0.15 * fh),
        "hair": sure & ~grown & (geo.b > geo.brow_height + 0.2 * fh),
        "clothes": sure & geo.below & (geo.b < -1.3 * fh),
    }
    ycc = _ycrcb(rgb)
    out = {}
    for name, mask in regions.items():
        pix = ycc[mask]
        if len(pix) > _SAMPLES_PER_FRAME:
            pix = pix[rng.choice(len(pix), _SAMPLES_PER_FRAME, replace=False)]
        out[name] = pix
    return out


def fit_colour_models(
    picks: List[int],
    read: Callable[[int], np.ndarray],
    read_matte: Callable[[int], np.ndarray],
    mesh: Float[np.ndarray, "N 478 3"],
) -> ColourModels:
    """Colour models from the unambiguous pixels of frames ``picks``."""
    rng = np.random.default_rng(0)
    pools: Dict[str, List[np.ndarray]] = {name: [] for name in _CLASSES}
    for f in picks:
        for name, pix in colour_samples(read(f), read_matte(f), FaceRegions.from_mesh(mesh[f]), rng).items():
            pools[name].append(pix)
    models: Dict[str, Optional[Gaussian]] = {}
    for name in _CLASSES:  # skin first: bare shoulders below the chin are not clothes
        pix = np.concatenate(pools[name]) if pools[name] else np.zeros((0, 3), np.float32)
        skin = models.get("skin")
        if name != "skin" and skin is not None and len(pix):
            pix = pix[skin.log_likelihood(pix) + 0.5 * skin.log_det < -0.5 * SKIN_SIGMAS**2]
        models[name] = Gaussian.fit(pix.astype(np.float64)) if len(pix) >= _MIN_SAMPLES else None
    return ColourModels(models)


def _max_abs_diff(a: UInt8[np.ndarray, "H W 3"], b: UInt8[np.ndarray, "H W 3"]) -> UInt8[np.ndarray, "H W"]:
    """Per pixel, the largest channel difference (OpenCV's: numpy's ``max(-1)`` over 3 is 25x slower)."""
    import cv2

    r, g, bl = cv2.split(cv2.absdiff(a, b))
    return cv2.max(cv2.max(r, g), bl)


def _smooth_decision(mask: np.ndarray) -> np.ndarray:
    """A colour decision with its speckle removed (5x5 median)."""
    import cv2

    return cv2.medianBlur(mask.astype(np.uint8), 5).astype(bool)


def _decide(ycc: np.ndarray, region: np.ndarray, colours: ColourModels, name: str, over: List[str]) -> np.ndarray:
    """Inside ``region``, the pixels whose colour prefers ``name`` over ``over`` (speckle removed); the work
    is done in the region's bounding box only."""
    out = np.zeros(region.shape, bool)
    ys, xs = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if len(ys) == 0:
        return out
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    sub = region[box]
    pick = np.zeros(sub.shape, bool)
    pick[sub] = colours.prefers(ycc[box][sub], name, over)
    out[box] = _smooth_decision(pick) & sub
    return out


def frame_labels(
    rgb: UInt8[np.ndarray, "H W 3"],
    matte: UInt8[np.ndarray, "H W"],
    mesh: Float[np.ndarray, "478 3"],
    colours: ColourModels,
    background: Optional[UInt8[np.ndarray, "H W 3"]] = None,
) -> Int[np.ndarray, "H W"]:
    """The 12-class label image of one frame (module docstring); ``background`` is the clean plate."""
    h, w = matte.shape
    faces = FaceRegions.from_mesh(mesh)
    geo = _layout(matte, faces)
    fh, fw = faces.face_height, faces.face_width
    ycc = _ycrcb(rgb)
    person, below, a, b = geo.person, geo.below, geo.a, geo.b
    labels = np.full((h, w), sem.BACKGROUND, np.uint8)
    labels[person & ~below] = sem.HAIR
    labels[person & below] = sem.TORSO
    # Neck: under the chin, as wide as the jaw; lower down only where it looks like skin.
    band = person & below & (np.abs(a) < faces.jaw_half_width()) & (b > -NECK_LENGTH * fh)
    has_models = colours.models.get("skin") is not None and colours.models.get("clothes") is not None
    sure = band & (b > -NECK_SURE * fh)
    neck = sure | _decide(ycc, band & ~sure, colours, "skin", ["clothes", "hair"]) if has_models else band
    labels[neck] = sem.NECK
    # Hair hanging below the jaw beside the neck.
    hanging = person & below & ~neck & (b > -HAIR_REACH * fh)
    labels[_decide(ycc, hanging, colours, "hair", ["clothes", "skin"])] = sem.HAIR
    # Ears: skin-coloured pixels just beside the oval between mouth and brow heights that differ from the
    # clean plate (the matte often leaves ears out, so it is not required here).
    beside = ~geo.oval & ~below & (b > 0.25 * fh) & (b < geo.brow_height) & (np.abs(a) < 0.75 * fw)
    if background is not None:
        beside &= _max_abs_diff(rgb, background) > PLATE_DIFF
    else:
        beside &= person
    labels[_decide(ycc, beside, colours, "skin", ["hair", "clothes"])] = sem.EARS
    # Face skin: the oval on the person. Above the brows the oval may end below the hairline (a high
    # forehead) or run over a fringe: there, within the oval raised by FOREHEAD_REACH, colour decides.
    labels[geo.oval & person] = sem.SKIN
    raised = np.zeros((h, w), np.uint8)
    _fill(raised, faces.raised_oval(FOREHEAD_REACH), 1)
    forehead = raised.astype(bool) & person & (b > geo.brow_height)
    if colours.models.get("skin") is not None and colours.models.get("hair") is not None:
        skin = _decide(ycc, forehead, colours, "skin", ["hair"])
        labels[forehead & ~skin] = sem.HAIR
        labels[skin] = sem.SKIN
    polys = geo.polys
    below_brows = ~(b > geo.brow_height + 0.02 * fh)
    labels[geo.oval & below_brows] = sem.SKIN  # below the brows the oval is face, matte or not
    for name, cls in (
        ("right_brow", sem.EYEBROWS),
        ("left_brow", sem.EYEBROWS),
        ("right_eye", sem.EYES),
        ("left_eye", sem.EYES),
        ("nose", sem.NOSE),
        ("lips", sem.LIPS),
    ):
        _fill(labels, polys[name], cls)
    if faces.mouth_gap() > MOUTH_OPEN_FRACTION * fw:
        _fill(labels, polys["mouth"], sem.MOUTH_INTERIOR)
    return labels.astype(np.int64)
