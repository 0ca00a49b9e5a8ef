"""Viewer controls of the SAHS model (nerfstudio's viser viewer)."""

from sahs_nerfstudio.viewer.controls import AvatarControls, display_outputs, expression_pca

__all__ = ["AvatarControls", "display_outputs", "expression_pca"]
