"""Names of the per-frame conditioning the dataparser puts in ``Cameras.metadata``.

nerfstudio copies camera metadata onto every ray (``RayBundle.metadata``) and from there onto the samples
(``RaySamples.metadata``), so these names are shared by the dataparser that writes them and the model, fields,
renderer and viewer that read them. Each value is a per-camera (then per-ray) tensor ``[N, D]``.
"""

from __future__ import annotations

DRIVER = "driver"
"""Raw driving row: the expression coefficients, or the flattened audio window ``[N, W * C]``."""
POSE = "pose"
"""Raw head-pose code (3 Euler angles + 3 translations, ``[N, 6]``); the fields encode it themselves."""
FRAME_INDEX = "frame_index"
"""Index of the frame within its split, ``[N, 1]`` (float, as nerfstudio's ray metadata wants)."""
AUDIO_INDEX = "audio_index"
"""Row of the audio-feature table the frame's window comes from, ``[N, 1]`` (float)."""
BG_PROJECTION = "bg_projection"
"""3x3 map from a ray direction to homogeneous background-image coordinates in ``[0, 1]``, flattened ``[N, 9]``."""
DRIVING_CODE = "driving_code"
"""Driving code the field reads, ``[N, code_dim]``: the expression itself, or the audio network's output.
The model derives it from :data:`DRIVER`; a caller may set it directly (a driven video, the viewer)."""
AUDIO_NEIGHBOURS = "audio_neighbours"
"""Audio-table rows of the frame's smoothing window ``[N, 8]`` (float): the windows of the frames at positions
``i - 4 .. i + 3`` of its split, -1 where that position is outside the split (an all-zero window, as AD-NeRF)."""
EYE = "eye"
"""Eye closure of the frame ``[N, 1]`` in ``[0, 1]`` (0 open, 1 shut), from the AD-NeRF layout's ``au.csv``
(:mod:`sahs_nerfstudio.data.eye`); present only when the dataset has an eye track. Audio models whose field
``use_eye`` read it as an extra driving channel."""
