"""Rendering a trained run (loaded by :mod:`sahs_nerfstudio.utils.run_loader`).

* :mod:`.split_eval`: every frame of a dataset split with its own code and camera; metrics + mp4.
* :mod:`.camera_paths`: the dataset's cameras, one fixed camera, or an orbit around it.
* :mod:`.driven`: any driver (:mod:`sahs_nerfstudio.driving.sequence`) through a camera path into an mp4,
  with the audio muxed in when there is audio (``sahs-render``).
* :mod:`.common`: the loaded pipeline's split, its model, the progress bar.
"""
