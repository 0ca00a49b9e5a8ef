"""``sahs-process``: a video to a NeRFace and/or AD-NeRF dataset, offline, on a CPU.

One module per stage (decode, landmarks, pose, expression, background, segmentation, layouts,
report); :mod:`sahs_nerfstudio.process.pipeline` runs them in order, each one resumable.
"""
