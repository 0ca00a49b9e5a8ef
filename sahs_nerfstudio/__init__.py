"""sahs-nerfstudio: semantic-aware hyper-space deformable NeRF talking-head avatars for nerfstudio."""

__version__ = "0.1.0"
