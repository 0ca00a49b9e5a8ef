"""Shared fixtures: small synthetic subjects written by the real generator in the real formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject


@pytest.fixture(scope="session")
def subject_nonsquare(tmp_path_factory) -> Path:
    """A 48x40 subject (non-square, negative fx in the NeRFace layout), both layouts."""
    root = tmp_path_factory.mktemp("subject_nonsquare")
    generate_subject(SyntheticConfig(output=root, width=48, height=40, num_train=22, num_val=2, seed=3))
    return root


@pytest.fixture(scope="session")
def subject_train(tmp_path_factory) -> Path:
    """The subject used by training tests: 40x40, enough frames to learn the expression space."""
    root = tmp_path_factory.mktemp("subject_train")
    generate_subject(SyntheticConfig(output=root, resolution=40, num_train=60, num_val=3, seed=0))
    return root


@pytest.fixture
def subject_copy(subject_nonsquare, tmp_path) -> Path:
    """A private copy to corrupt in bad-input tests."""
    dst = tmp_path / "subject"
    shutil.copytree(subject_nonsquare, dst)
    return dst
