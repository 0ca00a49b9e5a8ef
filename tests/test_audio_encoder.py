"""AD-NeRF's AudioNet / AudioAttNet as used by SAHS."""

from __future__ import annotations

import pytest
import torch

from sahs_nerfstudio.fields.audio_encoder import AudioAttNet, AudioEncoder, AudioEncoderConfig, AudioNet


@pytest.mark.parametrize("frames, channels", [(16, 29), (16, 44), (2, 1024), (24, 29)])
def test_audio_net_accepts_feature_layouts(frames, channels):
    net = AudioNet(in_channels=channels, window=16, code_dim=76)
    assert net(torch.randn(3, frames, channels)).shape == (3, 76)


def test_audio_net_architecture():
    net = AudioNet()
    convs = [m for m in net.encoder_conv if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (29, 32, 3, 2),
        (32, 32, 3, 2),
        (32, 64, 3, 2),
        (64, 64, 3, 2),
    ]
    # A DeepSpeech window of 16 frames is reduced to a single time step: no pooling needed.
    assert net.encoder_conv(torch.randn(1, 29, 16)).shape == (1, 64, 1)


def test_audio_net_takes_the_central_window():
    torch.manual_seed(0)
    net = AudioNet(window=16)
    long = torch.randn(2, 24, 29)
    torch.testing.assert_close(net(long), net(long[:, 4:20]))


def test_audio_att_net_of_equal_codes_is_that_code():
    torch.manual_seed(0)
    att = AudioAttNet(code_dim=76, seq_len=8)
    code = torch.randn(3, 1, 76)
    torch.testing.assert_close(att(code.expand(3, 8, 76)), code[:, 0])
    weights = att.weights(torch.randn(3, 8, 76))
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    first = att.attention_conv[0]
    assert isinstance(first, torch.nn.Conv1d) and first.in_channels == 76


def test_audio_encoder_encode_and_smooth():
    enc = AudioEncoderConfig(in_channels=44).setup()
    assert isinstance(enc, AudioEncoder)
    assert enc.encode(torch.randn(4, 16, 44)).shape == (4, 76)
    seq = torch.randn(2, 8, 16, 44)
    smoothed = enc.encode_smoothed(seq)
    assert smoothed.shape == (2, 76)
    # Smoothing is a convex combination of the per-frame codes.
    codes = enc.encode(seq.flatten(0, 1)).view(2, 8, 76)
    weights = enc.att_net.weights(codes)
    torch.testing.assert_close(smoothed, (weights[..., None] * codes).sum(1))
