"""Viewer controls of the SAHS model (nerfstudio's viser viewer)."""

from sahs_nerfstudio.viewer.controls import AvatarControls, attach_avatar_controls
from sahs_nerfstudio.viewer.expression_pca import expression_pca

__all__ = ["AvatarControls", "attach_avatar_controls", "expression_pca"]
