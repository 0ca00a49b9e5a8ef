"""AD-NeRF's audio smoothing: the 8 windows at positions i-4..i+3 of the sequence, zero-padded at its ends.

The reference below is AD-NeRF's trainer loop written out (``auds[left:right]`` of the training set's
per-frame windows, zero windows for the positions before 0 or from ``len`` on); the model's training
windows (from the dataparser's ``audio_neighbours``) and the driven windows must equal it at both ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nerfstudio.data.scene_box import SceneBox

from sahs_nerfstudio.data import formats, keys
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.driving.sequence import DrivingSequence, encode_sequence
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.presets import tiny_model_config


def original_window(auds: torch.Tensor, i: int, size: int = 8) -> torch.Tensor:
    """AD-NeRF run_nerf.py: left = i - size/2, right = i + size/2, clipped to [0, len), zeros padded back."""
    half = size // 2
    left, right = i - half, i + half
    pad_left = max(0, -left)
    pad_right = max(0, right - auds.shape[0])
    win = auds[max(left, 0) : min(right, auds.shape[0])]
    zeros = torch.zeros_like(auds[:1])
    return torch.cat([zeros.repeat(pad_left, 1, 1), win, zeros.repeat(pad_right, 1, 1)], dim=0)


@pytest.fixture(scope="module")
def audio_model(subject_nonsquare):
    root = subject_nonsquare / "adnerf"
    outputs = SAHSDataParserConfig(data=root).setup().get_dataparser_outputs("train")
    model = tiny_model_config().setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])),
        num_train_data=len(outputs.image_filenames),
        metadata=outputs.metadata,
    )
    model.trained_steps.fill_(model.config.audio_attention_start_step)
    assert model.use_audio_attention()
    return model, outputs, root


def test_training_window_at_both_ends_equals_the_original(audio_model):
    model, outputs, root = audio_model
    table = torch.from_numpy(formats.read_audio_features(root / "aud.npy"))
    train = formats.read_adnerf_split(root, "train").frames
    auds = table[[formats.clamp_audio_index(fr.aud_id, table.shape[0]) for fr in train]]
    neighbours = outputs.cameras.metadata[keys.AUDIO_NEIGHBOURS]
    index = outputs.cameras.metadata[keys.AUDIO_INDEX]
    n = len(train)
    for i in (0, 1, 3, 4, n // 2, n - 5, n - 4, n - 2, n - 1):
        got = model._neighbour_windows(index[i : i + 1], neighbours[i : i + 1])[0]
        assert torch.equal(got, original_window(auds, i)), i
    # The last training frame's window ends in zeros, not in the validation frames' audio that follows it.
    last = model._neighbour_windows(index[n - 1 :], neighbours[n - 1 :])[0]
    assert float(last[5:].abs().sum()) == 0.0 and float(table[train[-1].aud_id + 1].abs().sum()) > 0.0
    # The code used for a training ray is the smoothed code of exactly that window.
    meta = {k: v[n - 1 :] for k, v in outputs.cameras.metadata.items()}
    code = model._driving_code_for_rays(meta)
    expected = model.audio_encoder.encode_smoothed(original_window(auds, n - 1)[None])
    assert torch.allclose(code, expected, atol=1e-6)


def test_driven_window_at_both_ends_equals_the_original(audio_model):
    model, _, root = audio_model
    rows = np.random.default_rng(0).normal(size=(11, 16, 29)).astype(np.float32)
    seq = DrivingSequence("audio", rows, root / "drive.npy", "<array>")
    with torch.no_grad():
        codes = encode_sequence(model, seq)
        ref = torch.from_numpy(rows)
        for i in (0, 1, 3, 7, 9, 10):
            expected = model.audio_encoder.encode_smoothed(original_window(ref, i)[None])[0]
            assert torch.allclose(codes[i], expected, atol=1e-6), i


def test_smoothing_starts_at_ad_nerfs_step():
    # AD-NeRF's --nosmo_iters default, which SAHS (built on AD-NeRF) keeps.
    assert SAHSModelConfig().audio_attention_start_step == 300_000


def test_smoothing_switches_on_at_the_start_step(audio_model):
    model, _, _ = audio_model
    start = model.config.audio_attention_start_step
    model.trained_steps.fill_(start - 1)
    assert not model.use_audio_attention()
    model.trained_steps.fill_(start)
    assert model.use_audio_attention()
