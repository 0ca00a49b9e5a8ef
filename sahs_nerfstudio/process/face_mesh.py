"""MediaPipe's dense face mesh and person matte: the one tracker of ``sahs-process``.

``mediapipe`` 0.10.9 ships its models inside the wheel (no download at run time) and is the last
release that accepts nerfstudio 1.1.5's protobuf 3.20. Per frame it gives:

* the 478-point face mesh (``refine_landmarks=True``: 468 points plus 5 per iris, refined lips and
  lids), x and y in pixels, z in pixels of the image width (MediaPipe's relative depth, larger is
  farther from the camera), in OpenCV's axes (x right, y down, z forward);
* a soft person matte (``selfie_segmentation``'s general model; in video mode MediaPipe blends each
  mask with the previous one, which keeps it from flickering).

The mesh is tracked by MediaPipe itself (its detector runs when a face is lost). Two faces are
tracked at most; the larger one is followed and the first frame with a second face is remembered.

:data:`MESH_TO_68` maps the mesh to dlib's 68 iBUG points (one vertex, or the mean of two), for
what is defined on those points: AD-NeRF's ``.lms`` files and ``face_rect``, and LMD's convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
from jaxtyping import Float, UInt8

from sahs_nerfstudio.errors import FormatError

NUM_POINTS = 478
"""Mesh vertices with the irises."""

# Closed outlines of the mesh's parts, in order around each part. "Right" is the subject's right
# (the image's left in a frontal view), as in the 68-point convention.
FACE_OVAL: Tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
OUTER_LIPS: Tuple[int, ...] = (
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
)  # fmt: skip
INNER_LIPS: Tuple[int, ...] = (
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
)  # fmt: skip
RIGHT_EYE: Tuple[int, ...] = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE: Tuple[int, ...] = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_BROW: Tuple[int, ...] = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
"""Upper edge outwards-in, then the lower edge back."""
LEFT_BROW: Tuple[int, ...] = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
RIGHT_IRIS, LEFT_IRIS = 468, 473
"""Iris centres (``refine_landmarks``)."""
UPPER_LIP_INNER, LOWER_LIP_INNER = (82, 13, 312), (87, 14, 317)
"""Inner-lip points facing each other across the mouth opening."""
EYE_CORNERS = {"right": (33, 133), "left": (362, 263)}
"""Outer and inner corners of each eye (right: outer first; left: inner first, as the 68 points)."""
EYE_LIDS = {"right": ((160, 144), (158, 153)), "left": ((385, 380), (387, 373))}
"""Upper/lower lid pairs of each eye."""

MESH_TO_68: Tuple[Tuple[int, ...], ...] = (
    # jaw 0-16 (the subject's right ear down to the chin and up to the left ear)
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose 27-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (405,), (314,), (17,), (84,), (181,),
    # inner lips 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)  # fmt: skip
"""Mesh vertices of each of dlib's 68 points (the mean where two are listed)."""


# The first and the last vertex of each of the 68 points (the same one when only one is listed).
_FIRST = np.array([ids[0] for ids in MESH_TO_68])
_LAST = np.array([ids[-1] for ids in MESH_TO_68])


def to_68(mesh: Float[np.ndarray, "*bs 478 D"]) -> Float[np.ndarray, "*bs 68 D"]:
    """dlib's 68 points from the mesh (:data:`MESH_TO_68`)."""
    return 0.5 * (mesh[..., _FIRST, :] + mesh[..., _LAST, :])


def _mediapipe() -> Any:
    """``mediapipe.solutions``, with one clear line when the package is missing (it is installed without
    its dependencies' metadata, see the README, so a plain ``pip install`` of this project lacks it)."""
    try:
        from mediapipe.python import solutions
    except ImportError as err:
        raise FormatError(
            "mediapipe",
            "<package>",
            "mediapipe 0.10.9 (installed by `make setup`: pip install --no-deps mediapipe==0.10.9)",
            f"it missing ({err})",
        ) from None
    return solutions


@dataclass
class MeshFrame:
    """What the tracker found in one frame."""

    mesh: Optional[Float[np.ndarray, "478 3"]]
    """The followed face (None: no face)."""
    matte: UInt8[np.ndarray, "H W"]
    """Person matte, 0-255."""
    faces: int
    """Faces in this frame."""


class MeshTracker:
    """MediaPipe's face mesh and selfie segmentation in video mode over consecutive frames."""

    def __init__(self, max_faces: int = 2, min_confidence: float = 0.5) -> None:
        solutions = _mediapipe()
        self._mesh = solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._matte = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.max_faces = 0
        self.multi_face_frame = -1

    def step(self, rgb: UInt8[np.ndarray, "H W 3"], index: int) -> MeshFrame:
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        found = self._mesh.process(rgb).multi_face_landmarks or []
        meshes = [np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float64) for face in found]
        if len(meshes) > self.max_faces:
            self.max_faces = len(meshes)
        if len(meshes) > 1 and self.multi_face_frame < 0:
            self.multi_face_frame = index
        mesh = max(meshes, key=_area) if meshes else None
        matte = self._matte.process(rgb).segmentation_mask
        matte_u8 = np.clip(np.asarray(matte) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return MeshFrame(mesh, matte_u8, len(meshes))

    def close(self) -> None:
        self._mesh.close()
        self._matte.close()


def _area(mesh: np.ndarray) -> float:
    span = mesh[:, :2].max(0) - mesh[:, :2].min(0)
    return float(span[0] * span[1])


def detect_faces(rgb: UInt8[np.ndarray, "H W 3"], detector: Any) -> List[Tuple[float, float, float, float]]:
    """Face boxes ``(x, y, w, h)`` in pixels from MediaPipe's face detector (``detector``: see
    :func:`face_detector`)."""
    h, w = rgb.shape[:2]
    out = []
    for det in detector.process(np.ascontiguousarray(rgb)).detections or []:
        b = det.location_data.relative_bounding_box
        out.append((b.xmin * w, b.ymin * h, b.width * w, b.height * h))
    return out


def face_detector() -> Any:
    """MediaPipe's full-range face detector (faces down to a few percent of the frame)."""
    return _mediapipe().face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
