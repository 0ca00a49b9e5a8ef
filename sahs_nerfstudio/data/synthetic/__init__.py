"""A procedural head-and-shoulders talking person, written in the NeRFace and AD-NeRF layouts.

One underlying 3-D sequence is ray-cast analytically (numpy, one ray per pixel) into both layouts,
so a NeRF can learn it exactly and both dataparser paths can be tested against the same truth.
The same seed gives byte-identical files.

Modules, in the order data flows through them:

* :mod:`.config`: the controls, constants and :class:`SyntheticConfig`;
* :mod:`.speech`: the audio track (voiced syllables) and the mouth controls it causes;
* :mod:`.appearance`: colours, solid texture and background from the seed;
* :mod:`.sequence`: the whole sequence (controls, expressions, head and torso motion, the novelty rule);
* :mod:`.geometry`, :mod:`.anatomy`: rigid transforms; where the face parts are and how controls move them;
* :mod:`.scene`: the primitives of one frame (:func:`scene_at`);
* :mod:`.camera`, :mod:`.raycast`: the layouts' pinholes and the ray caster;
* :mod:`.landmarks`: 68 face landmarks per frame;
* :mod:`.writer`: :func:`generate_subject`, writing both layouts and the ``subject.json`` sidecar.
"""

from sahs_nerfstudio.data.synthetic.camera import PinholeCamera, layout_camera
from sahs_nerfstudio.data.synthetic.config import (
    BLINK,
    BROW,
    CONTROL_NAMES,
    EXPRESSION_DIM,
    GAZE_X,
    GAZE_Y,
    JAW,
    PUCKER,
    SAMPLE_RATE,
    SMILE,
    SUBJECT_FILE,
    LayoutName,
    SyntheticConfig,
)
from sahs_nerfstudio.data.synthetic.landmarks import landmarks_3d
from sahs_nerfstudio.data.synthetic.raycast import RenderedView, render_frame, render_scene
from sahs_nerfstudio.data.synthetic.scene import Primitive, Scene, scene_at
from sahs_nerfstudio.data.synthetic.sequence import (
    SubjectSequence,
    build_sequence,
    novel_combination,
    violates_training_rule,
)
from sahs_nerfstudio.data.synthetic.speech import frame_rms, jaw_from_rms
from sahs_nerfstudio.data.synthetic.writer import SubjectSummary, generate_subject

__all__ = [
    "BLINK",
    "BROW",
    "CONTROL_NAMES",
    "EXPRESSION_DIM",
    "GAZE_X",
    "GAZE_Y",
    "JAW",
    "PUCKER",
    "SAMPLE_RATE",
    "SMILE",
    "SUBJECT_FILE",
    "LayoutName",
    "PinholeCamera",
    "Primitive",
    "RenderedView",
    "Scene",
    "SubjectSequence",
    "SubjectSummary",
    "SyntheticConfig",
    "build_sequence",
    "frame_rms",
    "generate_subject",
    "jaw_from_rms",
    "landmarks_3d",
    "layout_camera",
    "novel_combination",
    "render_frame",
    "render_scene",
    "scene_at",
    "violates_training_rule",
]
