"""``sahs_nerfstudio.utils.metrics``: the one implementation of every image metric, on known values.

Also the benchmark's offline stand-in for the stock models' LPIPS (``compat.stock_lpips``), against
the nerfstudio and torchmetrics it was written for.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math

import numpy as np
import pytest
import torch

from sahs_nerfstudio.compat import stock_lpips
from sahs_nerfstudio.data.semantics import BACKGROUND, HAIR, LIPS, MOUTH_INTERIOR, NECK, NOSE, SKIN, TORSO
from sahs_nerfstudio.utils import metrics
from sahs_nerfstudio.utils.images import to_uint8


def test_region_masks_follow_the_classes():
    labels = torch.tensor([[BACKGROUND, SKIN, NOSE, LIPS], [MOUTH_INTERIOR, HAIR, NECK, TORSO]])
    assert metrics.mouth_mask(labels).tolist() == [[False, False, False, True], [True, False, False, False]]
    assert metrics.head_mask(labels).tolist() == [[False, True, True, True], [True, True, False, False]]
    assert not metrics.head_mask(torch.tensor([-1])).any()  # unlabelled pixels are no class


def test_image_metrics_on_known_errors():
    gt = torch.zeros(12, 12, 3)  # SSIM's 11-pixel window needs at least 11x11
    pred = gt.clone()
    pred[:6] = 0.1  # error 0.1 on the top half (the mouth), exact below (the neck)
    labels = torch.full((12, 12), NECK)
    labels[:6] = LIPS
    labels[0, 0] = MOUTH_INTERIOR
    pred_labels = torch.full((12, 12), NECK)
    pred_labels[:6] = LIPS
    got = metrics.image_metrics(pred, gt, labels, pred_labels)
    assert got["psnr"] == pytest.approx(-10 * math.log10(0.01 / 2))
    assert got["mouth_psnr"] == pytest.approx(20.0) and got["head_psnr"] == pytest.approx(20.0)
    # lips: IoU 71/72; mouth interior: 0/1; neck: 1
    assert got["miou"] == pytest.approx((71 / 72 + 0.0 + 1.0) / 3)
    assert 0.0 < got["ssim"] < 1.0 and "lpips" not in got
    # No head pixels: no head PSNR rather than a NaN; no labels: the mouth comes from the given mask.
    neck_only = metrics.image_metrics(pred, gt, torch.full((12, 12), NECK))
    assert "head_psnr" not in neck_only and "mouth_psnr" not in neck_only
    rect = torch.zeros(12, 12, dtype=torch.bool)
    rect[6:] = True
    assert metrics.image_metrics(pred, gt, mouth=rect)["mouth_psnr"] == pytest.approx(100.0)  # exact: capped MSE


def test_ssim_takes_both_layouts():
    torch.manual_seed(0)
    a, b = torch.rand(16, 16, 3), torch.rand(16, 16, 3)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]))
    assert metrics.ssim(a, b) < 0.5


def test_lpips_only_from_weights_on_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_lpips_warned", False)
    module, reason = metrics.lpips_or_reason()
    assert module is None and reason is not None and str(tmp_path / "checkpoints" / metrics.ALEXNET_FILE) in reason
    assert metrics.make_lpips() is None and metrics.make_lpips() is None
    out = capsys.readouterr().out
    assert out.count("LPIPS skipped") == 1 and "nothing is downloaded" in out


def test_to_uint8_rounds_and_clips():
    image = torch.tensor([[[-0.5, 0.0, 0.5 / 255], [0.7 / 255, 1.0, 2.0]]])
    assert to_uint8(image).tolist() == [[[0, 0, 0], [1, 255, 255]]]
    assert to_uint8(image).dtype == np.uint8


def test_stock_lpips_stub_targets_the_installed_libraries(tmp_path, monkeypatch):
    assert importlib.metadata.version("nerfstudio") == stock_lpips.NERFSTUDIO_VERSION
    assert f"nerfstudio {stock_lpips.NERFSTUDIO_VERSION}" in (stock_lpips.__doc__ or "")
    import nerfstudio.models.nerfacto as nerfacto
    import torchmetrics.image.lpip

    # nerfstudio builds LPIPS by importing the class by name from this module inside populate_modules.
    source = inspect.getsource(nerfacto.NerfactoModel.populate_modules)
    assert f"from {stock_lpips.TORCHMETRICS_MODULE} import {stock_lpips.CLASS_NAME}" in source
    real = getattr(torchmetrics.image.lpip, stock_lpips.CLASS_NAME)
    monkeypatch.setattr(torchmetrics.image.lpip, stock_lpips.CLASS_NAME, real)
    monkeypatch.setattr(torchmetrics.image, stock_lpips.CLASS_NAME, real)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no AlexNet on disk
    assert stock_lpips.disable_stock_lpips(metrics.lpips_unavailable)
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    stub = LearnedPerceptualImagePatchSimilarity(normalize=True)
    assert math.isnan(float(stub(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))))
