"""Deliberate workarounds of library internals, each naming the library version it was written against.

Every module here replaces or reads something a library does not offer publicly; ``tests/test_compat.py``
checks each assumption against the installed library, so an upgrade fails loudly there instead of
silently elsewhere:

* :mod:`.checkpoints`: numpy types of nerfstudio 1.1.5 checkpoints for torch >= 2.6's weights-only loader;
* :mod:`.cpu_ddp`: nerfstudio 1.1.5's multi-process launcher and DDP wrap on the CPU (gloo);
* :mod:`.shared_tensor`: a tensor shared with nerfstudio 1.1.5's ``ParallelDataManager`` workers (pathos);
* :mod:`.encodings`: the torch paths of nerfstudio 1.1.5's ``NeRFEncoding`` and ``HashEncoding``;
* :mod:`.viser_camera`: whether a viser 0.2.7 client has reported its camera;
* :mod:`.eval_checkpoint`: nerfstudio 1.1.5's ``eval_load_checkpoint`` (verified checkpoints with fallback in
  ``ns-eval`` / ``ns-render`` / ``ns-viewer``) and ``ns-viewer``'s host (127.0.0.1 for SAHS runs);
* :mod:`.stock_lpips`: nerfstudio 1.1.5's stock models without torchmetrics' AlexNet download (benchmark).
"""
