"""SAHS model pieces against plain references: compositing, background lookup, the losses."""

from __future__ import annotations

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from sahs_nerfstudio.data.camera_geometry import cameras_background_projection
from sahs_nerfstudio.data.pose import pose_code
from sahs_nerfstudio.data.semantics import BACKGROUND, LIPS, NUM_CLASSES
from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.utils.metrics import mean_iou, psnr

W, H = 10, 7


def _tiny_field(driver: str) -> SAHSFieldConfig:
    return SAHSFieldConfig.for_driver(
        driver,  # type: ignore[arg-type]
        warp_width=16,
        hyper_width=16,
        canonical_width=32,
        colour_width=16,
        semantic_width=16,
        grid_resolution=4,
        grid_channels=4,
    )


def _camera(fx: float = -9.0) -> Cameras:
    c2w = torch.eye(4)[:3]
    c2w[2, 3] = 0.5
    return Cameras(
        camera_to_worlds=c2w[None],
        fx=torch.tensor([[fx]]),
        fy=torch.tensor([[9.0]]),
        cx=torch.tensor([[W * 0.48 + 0.5]]),
        cy=torch.tensor([[H * 0.52 + 0.5]]),
        width=torch.tensor([[W]]),
        height=torch.tensor([[H]]),
    )


def make_model(driver: str = "expression", background: torch.Tensor | None = None):
    cam = _camera()
    bg = background if background is not None else torch.rand(H, W, 3)
    meta = {
        "driver_kind": driver,
        "near": 0.2,
        "far": 0.8,
        "background": bg,
        "audio_window": (16, 29) if driver == "audio" else None,
        "audio_table": torch.randn(5, 16, 29) if driver == "audio" else None,
        "drivers": torch.randn(3, 76 if driver == "expression" else 16 * 29),
        "audio_indices": torch.arange(3.0)[:, None],
    }
    config = SAHSModelConfig(
        audio_field=_tiny_field("audio"),
        expression_field=_tiny_field("expression"),
        num_coarse_samples=8,
        num_importance_samples=8,
    )
    scene_box = SceneBox(aabb=torch.tensor([[-0.5] * 3, [0.5] * 3]))
    model = config.setup(scene_box=scene_box, num_train_data=3, metadata=meta)
    return model, cam, bg


def _empty_scene(model) -> None:
    # A trunk whose density output is hugely negative everywhere: relu gives zero density.
    for field in (model.field_coarse, model.field_fine):
        last = field.canonical.trunk.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = -1e4


def test_empty_scene_renders_exactly_the_background_and_its_label():
    model, cam, bg = make_model()
    _empty_scene(model)
    model.eval()
    out = model.get_outputs_for_camera(cam)
    assert out["rgb"].shape == (H, W, 3)
    # Each ray must land on its own pixel centre of the background image (negative fx included).
    assert torch.allclose(out["rgb"], bg, atol=1e-5)
    probs = out["semantics_probs"]
    assert torch.allclose(probs[..., BACKGROUND], torch.ones(H, W), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(H, W), atol=1e-6)
    assert torch.allclose(out["accumulation"], torch.zeros(H, W, 1))


def test_background_lookup_follows_the_rendering_resolution():
    model, cam, bg = make_model(background=torch.rand(H, W, 3))
    _empty_scene(model)
    model.eval()
    small = _camera()
    small.rescale_output_resolution(0.5)
    out = model.get_outputs_for_camera(small)
    # Half resolution: each output pixel centre sits between 2x2 background pixels (bilinear).
    assert out["rgb"].shape[:2] == (small.height.item(), small.width.item())
    expected = torch.nn.functional.interpolate(
        bg.permute(2, 0, 1)[None], size=out["rgb"].shape[:2], mode="bilinear", align_corners=False, antialias=False
    )[0].permute(1, 2, 0)
    # The half-pixel principal-point shift is rescaled too, so allow a sub-pixel discrepancy.
    assert (out["rgb"] - expected).abs().mean() < 0.08


def test_projection_matrix_maps_rays_to_their_pixels():
    cam = _camera()
    rays = cam.generate_rays(camera_indices=0, keep_shape=True)
    m = cameras_background_projection(cam)[0].view(3, 3)
    hom = rays.directions @ m.T
    uv = hom[..., :2] / hom[..., 2:]
    jj, ii = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    assert torch.allclose(uv[..., 0] * W, ii + 0.5, atol=1e-4)
    assert torch.allclose(uv[..., 1] * H, jj + 0.5, atol=1e-4)


def test_driving_code_changes_the_render_and_pose_comes_from_camera():
    torch.manual_seed(0)
    model, cam, _ = make_model()
    model.eval()
    cam.metadata = {"driving_code": torch.zeros(1, 76)}
    a = model.get_outputs_for_camera(cam)["rgb"]
    cam.metadata = {"driving_code": torch.ones(1, 76) * 3}
    b = model.get_outputs_for_camera(cam)["rgb"]
    assert (a - b).abs().max() > 1e-4
    assert torch.allclose(model.pose_for_camera(cam), pose_code(cam.camera_to_worlds))


def test_audio_model_encodes_windows_and_smooths_after_start_step():
    model, cam, _ = make_model("audio")
    model.eval()
    drivers = model.train_drivers
    plain = model.encode_driver(drivers[:1], torch.zeros(1, 1))
    assert plain.shape == (1, 76)
    model.trained_steps.fill_(model.config.audio_attention_start_step)
    smoothed = model.encode_driver(drivers[:1], torch.zeros(1, 1))
    assert not torch.allclose(plain, smoothed)
    assert set(model.get_param_groups()) == {"fields", "audio_net", "audio_attention"}


def test_losses_follow_the_published_weights():
    model, cam, _ = make_model()
    model.train()
    n = 6
    labels = torch.tensor([0, 1, 1, LIPS, LIPS, -1])
    probs = torch.full((n, NUM_CLASSES), 1.0 / NUM_CLASSES)
    rgb = torch.full((n, 3), 0.5)
    outputs = {"rgb": rgb, "rgb_coarse": rgb, "semantics_probs": probs, "semantics_probs_coarse": probs}
    batch = {"image": torch.zeros(n, 3), "semantics": labels[:, None]}
    losses = model.get_loss_dict(outputs, batch)
    ce = torch.log(torch.tensor(float(NUM_CLASSES)))
    assert torch.isclose(losses["rgb_loss"], torch.tensor(0.25))
    assert torch.isclose(losses["semantic_loss"], 0.02 * ce)
    # Only lips are present among the mouth classes: one (MSE + CE) term.
    assert torch.isclose(losses["mouth_loss"], 0.005 * (0.25 + ce))
    # Per-class statistics for the sampler: the ignored pixel is left out.
    assert model.class_loss_count.tolist()[:2] == [1.0, 2.0] and model.class_loss_count.sum() == 5
    assert torch.isclose(model.class_loss_sum[LIPS], 2 * 2 * (0.25 + ce))


def test_psnr_and_miou_reference():
    a, b = torch.zeros(4, 3), torch.full((4, 3), 0.1)
    assert torch.isclose(psnr(a, b), torch.tensor(20.0))
    pred = torch.tensor([0, 0, 1, 1, 2])
    target = torch.tensor([0, 1, 1, 1, -1])
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3 -> 2/3
    assert abs(mean_iou(pred, target) - (0.5 + 2 / 3) / 2) < 1e-9


def test_the_two_model_configs_are_siblings_without_unused_fields():
    import dataclasses

    from sahs_nerfstudio.fields.fast_field import SAHSFastFieldConfig
    from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModelConfig
    from sahs_nerfstudio.models.sahs_model import SAHSBaseModelConfig

    assert issubclass(SAHSModelConfig, SAHSBaseModelConfig) and issubclass(SAHSFastModelConfig, SAHSBaseModelConfig)
    assert not issubclass(SAHSFastModelConfig, SAHSModelConfig)
    fast = {f.name for f in dataclasses.fields(SAHSFastModelConfig)}
    # the coarse/fine sampling of sahs is not inherited by sahs-fast, which samples with proposal networks
    assert not {"num_coarse_samples", "num_importance_samples", "share_deformation"} & fast
    assert {"audio_field", "expression_field", "audio_encoder", "driver", "num_nerf_samples_per_ray"} <= fast
    # each method's fields are its own field type
    assert isinstance(SAHSFastModelConfig().audio_field, SAHSFastFieldConfig)
    assert isinstance(SAHSModelConfig().expression_field, SAHSFieldConfig)
    assert not isinstance(SAHSModelConfig().expression_field, SAHSFastFieldConfig)
