"""The SAHS model: coarse/fine volume rendering of a hyper-space deformable, semantic NeRF.

Per ray: the driving code (expression, or audio window through AudioNet), the head-pose code
and the background lookup arrive in ``ray_bundle.metadata`` (see ``data/sahs_dataparser.py``).
The fixed background image is composited as a last sample at infinity that also carries the
background class, so leftover transmittance shows background in colour and in semantics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor, nn
from torch.nn import Parameter

from sahs_nerfstudio.data import audio as audio_io
from sahs_nerfstudio.data import keys
from sahs_nerfstudio.data.camera_geometry import cameras_background_projection
from sahs_nerfstudio.data.pose import POSE_DIM, pose_code
from sahs_nerfstudio.data.semantics import BACKGROUND, MOUTH_CLASSES, NUM_CLASSES, colorize
from sahs_nerfstudio.fields.audio_encoder import AudioEncoder, AudioEncoderConfig
from sahs_nerfstudio.fields.base import AMBIENT_KEY, DEFORMATION_KEY, SAHSFieldBase
from sahs_nerfstudio.fields.deformation import HyperDeformation
from sahs_nerfstudio.fields.sahs_field import SAHSField, SAHSFieldConfig
from sahs_nerfstudio.models.camera_outputs import display_outputs
from sahs_nerfstudio.models.collider import AxisDepthCollider
from sahs_nerfstudio.models.run_record import AUDIO_PROVENANCE, RunRecord
from sahs_nerfstudio.utils.face_landmarks import LipSyncScorer
from sahs_nerfstudio.utils.metrics import image_metrics, make_lpips, psnr

EPS = 1e-8


@dataclass
class SAHSBaseModelConfig(ModelConfig):
    """What ``sahs`` and ``sahs-fast`` share: the driver and its audio front end, the losses, the background
    and near/far. Each method's config adds its fields (``audio_field``, ``expression_field``) and sampling."""

    driver: Literal["auto", "audio", "expression"] = "auto"
    """Driving signal; ``auto`` takes it from the data (NeRFace -> expression, AD-NeRF -> audio)."""
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    """AudioNet (and AudioAttNet smoothing) turning audio windows into the driving code."""
    use_audio_attention: bool = True
    """Smooth the audio code over neighbouring frames with AudioAttNet (AD-NeRF's smoothing)."""
    audio_attention_start_step: int = 300_000
    """Step from which AudioAttNet smooths the code over neighbouring frames (AD-NeRF: 300k)."""
    semantic_loss_weight: float = 0.02
    """Weight of the cross-entropy on rendered class probabilities."""
    mouth_loss_weight: float = 0.005
    """Weight of the extra (MSE + CE) term for each of mouth interior and lips."""
    background: Literal["image", "white", "black"] = "image"
    """What the last sample at infinity shows: the dataset's fixed background image, or a colour."""
    near_plane: Optional[float] = None
    """Near plane; None takes the dataparser's (layout default or --near)."""
    far_plane: Optional[float] = None
    """Far plane; None takes the dataparser's."""
    enable_collider: bool = True
    """Clip rays to [near, far]."""
    collider_params: Optional[Dict[str, float]] = None
    """Unused: near/far come from the data or ``near_plane``/``far_plane``."""
    eval_num_rays_per_chunk: int = 4096
    """Rays per forward pass when rendering whole images."""


@dataclass
class SAHSModelConfig(SAHSBaseModelConfig):
    """SAHS with the published settings as defaults (500k steps of 2048 rays on a GPU)."""

    _target: Type = field(default_factory=lambda: SAHSModel)
    audio_field: SAHSFieldConfig = field(default_factory=lambda: SAHSFieldConfig.for_driver("audio"))
    """Field used with the audio driver (published audio configuration)."""
    expression_field: SAHSFieldConfig = field(default_factory=lambda: SAHSFieldConfig.for_driver("expression"))
    """Field used with the expression driver (published expression configuration)."""
    share_deformation: bool = True
    """One warp/hyper network for the coarse and fine canonical fields."""
    num_coarse_samples: int = 64
    """Stratified samples per ray for the coarse field."""
    num_importance_samples: int = 64
    """Importance samples per ray for the fine field (rendered together with the coarse ones)."""


class SAHSModel(Model):
    """Semantic-aware hyper-space deformable NeRF."""

    config: SAHSModelConfig
    # Buffers registered in populate_modules (declared for type checkers).
    audio_table: Tensor
    background_image: Tensor
    train_drivers: Tensor
    train_audio_index: Tensor
    train_audio_neighbours: Tensor
    train_eye: Tensor
    trained_steps: Tensor
    class_loss_sum: Tensor
    class_loss_count: Tensor
    lip_sync: Optional[LipSyncScorer] = None
    """Set by whoever averages over a whole split (:meth:`SAHSPipeline.get_average_eval_image_metrics`):
    :meth:`get_image_metrics_and_images` then also feeds it each render for LMD (dlib, ~20 ms per image), which
    per-step eval images skip."""

    # ------------------------------------------------------------------------------------------
    # Setup

    def populate_modules(self) -> None:
        meta = self.kwargs.get("metadata", {}) or {}
        data_driver = meta.get("driver_kind", "expression")
        if self.config.driver not in ("auto", data_driver):
            raise ValueError(
                f"--pipeline.model.driver is '{self.config.driver}' but the data provides '{data_driver}' codes"
            )
        self.driver_kind: str = data_driver
        near = self.config.near_plane if self.config.near_plane is not None else meta.get("near", 0.2)
        far = self.config.far_plane if self.config.far_plane is not None else meta.get("far", 0.8)
        self.near, self.far = float(near), float(far)
        # Model.populate_modules builds the collider from collider_params.
        self.config.collider_params = {"near_plane": self.near, "far_plane": self.far}
        super().populate_modules()
        if self.config.enable_collider:
            # Depths along the optical axis, as the originals sample (per-ray bounds for every sampler).
            self.collider = AxisDepthCollider(near_plane=self.near, far_plane=self.far)

        self.field_config = self.config.audio_field if self.driver_kind == "audio" else self.config.expression_field
        # The eye channel (fields/base.py ``use_eye``): decided by whether the training data has an eye track.
        eye = meta.get(keys.EYE)
        self.field_config = self.field_config.with_eye_track(eye is not None)
        self.uses_eye = bool(self.field_config.use_eye)
        self.register_buffer("train_eye", eye if eye is not None else torch.zeros(0, 1), persistent=False)
        self.build_renderer()

        self.audio_encoder: Optional[AudioEncoder] = None
        if self.driver_kind == "audio":
            window, channels = meta.get("audio_window") or (16, 29)
            self.audio_window: Tuple[int, int] = (int(window), int(channels))
            enc_cfg = dataclasses.replace(
                self.config.audio_encoder,
                in_channels=int(channels),
                window=min(self.config.audio_encoder.window, int(window)),
                code_dim=self.field_config.code_dim,
            )
            self.audio_encoder = AudioEncoder(enc_cfg)
        # Data the model needs at render time but should not checkpoint: it comes with the dataset.
        table = meta.get("audio_table")
        self.register_buffer("audio_table", table if table is not None else torch.zeros(0), persistent=False)
        bg = meta.get("background")
        if bg is None:
            bg = torch.ones(8, 8, 3)
        self.register_buffer("background_image", bg.permute(2, 0, 1)[None].contiguous(), persistent=False)
        drivers = meta.get("drivers")
        self.register_buffer("train_drivers", drivers if drivers is not None else torch.zeros(1, 76), persistent=False)
        audio_index = meta.get("audio_indices")
        self.register_buffer(
            "train_audio_index", audio_index if audio_index is not None else torch.zeros(1, 1), persistent=False
        )
        neighbours = meta.get("audio_neighbours")
        self.register_buffer(
            "train_audio_neighbours", neighbours if neighbours is not None else torch.zeros(0), persistent=False
        )
        # Which extractor made the training audio features: a checkpoint keeps the value of its run.
        self.run_record = RunRecord(**{AUDIO_PROVENANCE: meta.get("audio_provenance")})
        # Persistent so a loaded checkpoint knows whether AudioAttNet smoothing was switched on.
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

        self.lpips = make_lpips()
        # Per-class loss of the latest training batch; the pipeline feeds it to the semantic ray sampler.
        self.register_buffer("class_loss_sum", torch.zeros(NUM_CLASSES), persistent=False)
        self.register_buffer("class_loss_count", torch.zeros(NUM_CLASSES), persistent=False)
        # The viewer's panel, when the pipeline attaches one (``avatar``), drives cameras without a code.

    def build_renderer(self) -> None:
        """The fields and ray samplers (coarse + fine here; ``sahs-fast`` builds a grid field + proposals)."""
        aabb = self.scene_box.aabb
        self.deformation = HyperDeformation(self.field_config)
        fine_deformation = self.deformation if self.config.share_deformation else HyperDeformation(self.field_config)
        self.field_coarse = SAHSField(self.field_config, self.deformation, aabb=aabb)
        self.field_fine = SAHSField(self.field_config, fine_deformation, aabb=aabb)
        self.sampler_uniform = UniformSampler(num_samples=self.config.num_coarse_samples)
        self.sampler_pdf = PDFSampler(num_samples=self.config.num_importance_samples)

    def audio_param_groups(self) -> Dict[str, List[Parameter]]:
        """AudioNet and (when used) AudioAttNet, each its own group: AD-NeRF trains the latter 5x faster."""
        if self.audio_encoder is None:
            return {}
        groups = {"audio_net": list(self.audio_encoder.audio_net.parameters())}
        if self.config.use_audio_attention:
            groups["audio_attention"] = list(self.audio_encoder.att_net.parameters())
        return groups

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        fields = nn.ModuleList([self.field_coarse, self.field_fine])
        return {"fields": list(fields.parameters()), **self.audio_param_groups()}

    def fit_schedule(self, steps: int) -> None:
        """Stretch the model's own step-counted schedules to a run of ``steps`` steps (the trainer calls this
        once it knows how many steps a time budget allows): AudioAttNet starts half-way, as the presets do."""
        self.config.audio_attention_start_step = max(int(steps) // 2, 1)

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        def set_step(step: int) -> None:
            self.trained_steps.fill_(step)

        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], update_every_num_iters=1, func=set_step
            )
        ]

    # ------------------------------------------------------------------------------------------
    # Conditioning

    def use_audio_attention(self) -> bool:
        return (
            self.audio_encoder is not None
            and self.config.use_audio_attention
            and int(self.trained_steps) >= self.config.audio_attention_start_step
        )

    def audio_provenance(self) -> Optional[str]:
        """Which extractor made the audio features this model trained on (None: not an audio model / unknown)."""
        return self.run_record.get(AUDIO_PROVENANCE) if self.audio_encoder is not None else None

    def encode_driver(
        self,
        driver: Float[Tensor, "B D"],
        audio_index: Optional[Float[Tensor, "B 1"]] = None,
        neighbours: Optional[Float[Tensor, "B S"]] = None,
    ) -> Float[Tensor, "B code"]:
        """Driving code from raw driver rows: the expression itself, or AudioNet(/AudioAttNet) of a window.

        Once smoothing is on, the window of each row is smoothed over ``neighbours`` (audio-table rows,
        -1 = all-zero window: a dataset frame's ``audio_neighbours``), else over the rows around
        ``audio_index`` in the audio table taken as one sequence (zero windows past its ends).
        """
        if self.audio_encoder is None:
            return driver
        enc = self.audio_encoder
        windows = driver.view(driver.shape[0], *self.audio_window)
        smooth = self.use_audio_attention() and self.audio_table.numel() > 0
        if smooth and (neighbours is not None or audio_index is not None):
            return enc.encode_smoothed(self._neighbour_windows(audio_index, neighbours))
        return enc.encode(windows)

    def _neighbour_windows(
        self, audio_index: Optional[Float[Tensor, "B 1"]], neighbours: Optional[Float[Tensor, "B S"]] = None
    ) -> Float[Tensor, "B S W C"]:
        assert self.audio_encoder is not None
        seq = self.audio_encoder.config.smoothing_seq_len
        if neighbours is None or neighbours.shape[-1] != seq:
            assert audio_index is not None, "smoothing needs the frames' audio_index or audio_neighbours"
            neighbours = audio_io.smoothing_positions(audio_index[:, 0], self.audio_table.shape[0], seq)
        return audio_io.gather_zero_padded(self.audio_table, neighbours.long())

    def _driving_code_for_rays(self, metadata: Dict[str, Tensor]) -> Float[Tensor, "N code"]:
        if keys.DRIVING_CODE in metadata:
            return metadata[keys.DRIVING_CODE]
        driver = metadata[keys.DRIVER]
        # Rays of a batch come from a handful of frames: encode each distinct frame once.
        key = metadata[keys.FRAME_INDEX][:, 0] if keys.FRAME_INDEX in metadata else None
        audio_index = metadata.get(keys.AUDIO_INDEX)
        neighbours = metadata.get(keys.AUDIO_NEIGHBOURS)
        if key is None or self.audio_encoder is None:
            return self.encode_driver(driver, audio_index, neighbours)
        _, first, inverse = _unique_first(key)
        codes = self.encode_driver(
            driver[first],
            None if audio_index is None else audio_index[first],
            None if neighbours is None else neighbours[first],
        )
        return codes[inverse]

    def _background_rgb(self, ray_bundle: RayBundle) -> Float[Tensor, "N 3"]:
        n = ray_bundle.directions.shape[0]
        if self.config.background == "white":
            return torch.ones(n, 3, device=self.device)
        if self.config.background == "black":
            return torch.zeros(n, 3, device=self.device)
        proj = ray_bundle.metadata.get(keys.BG_PROJECTION)
        if proj is None:
            return self.background_image.mean(dim=(2, 3)).expand(n, 3)
        hom = (proj.view(-1, 3, 3) @ ray_bundle.directions[..., None])[..., 0]
        # Rays behind the image plane have no background pixel; clamp keeps them finite.
        uv = hom[:, :2] / hom[:, 2:].clamp(min=1e-6)
        grid = (uv * 2.0 - 1.0).view(1, 1, n, 2)
        rgb = F.grid_sample(self.background_image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return rgb[0, :, 0, :].T

    # ------------------------------------------------------------------------------------------
    # Rendering

    def _render_level(
        self,
        field: SAHSFieldBase,
        ray_samples: RaySamples,
        bg_rgb: Float[Tensor, "N 3"],
        bg_depth: Optional[Float[Tensor, "N 1"]] = None,
    ) -> Tuple[Dict[str, Tensor], Float[Tensor, "N S 1"]]:
        outs = field(ray_samples)
        weights = ray_samples.get_weights(outs[FieldHeadNames.DENSITY])
        return self.composite(ray_samples, outs, weights, bg_rgb, bg_depth), weights

    def composite(
        self,
        ray_samples: RaySamples,
        outs: Dict,
        weights: Float[Tensor, "N S 1"],
        bg_rgb: Float[Tensor, "N 3"],
        bg_depth: Optional[Float[Tensor, "N 1"]] = None,
    ) -> Dict[str, Tensor]:
        """One level's per-ray outputs from the field's per-sample ones (``outs``, keyed like ``field(...)``), with
        the background at infinity taking the leftover transmittance in colour, depth and class."""
        acc = weights.sum(dim=-2)
        leftover = (1.0 - acc).clamp(min=0.0)
        rgb = (weights * outs[FieldHeadNames.RGB]).sum(dim=-2) + leftover * bg_rgb
        mids = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
        # The background sits at each ray's far bound (the originals' last sample, at depth ``far``);
        # resampled levels need not end exactly there, so the bound comes from the ray bundle.
        if bg_depth is None:
            bg_depth = ray_samples.frustums.ends[..., -1, :]
        depth = (weights * mids).sum(dim=-2) + leftover * bg_depth
        level: Dict[str, Tensor] = {"rgb": rgb, "accumulation": acc, "depth": depth}
        if FieldHeadNames.SEMANTICS in outs:
            probs = (weights * F.softmax(outs[FieldHeadNames.SEMANTICS], dim=-1)).sum(dim=-2)
            probs = probs.clone()
            probs[:, BACKGROUND] = probs[:, BACKGROUND] + leftover[:, 0]
            level["semantics_probs"] = probs
        level["deformation"] = (weights * outs[DEFORMATION_KEY]).sum(dim=-2)
        ambient = outs[AMBIENT_KEY]
        if ambient.shape[-1] > 0:
            level["ambient"] = (weights * ambient).sum(dim=-2)
        return level

    def prepare_rays(self, ray_bundle: RayBundle) -> Float[Tensor, "N 3"]:
        """Put the per-ray driving code and pose in ``ray_bundle.metadata``; return the background colour."""
        metadata = dict(ray_bundle.metadata)
        n = ray_bundle.directions.shape[0]
        metadata[keys.DRIVING_CODE] = self._driving_code_for_rays(metadata)
        if keys.POSE not in metadata:
            metadata[keys.POSE] = torch.zeros(n, POSE_DIM, device=self.device)
        if self.uses_eye and keys.EYE not in metadata:
            metadata[keys.EYE] = torch.zeros(n, 1, device=self.device)  # eyes open
        ray_bundle.metadata = metadata
        return self._background_rgb(ray_bundle)

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:  # type: ignore[override]
        bg_rgb = self.prepare_rays(ray_bundle)
        samples_coarse = self.sampler_uniform(ray_bundle)
        coarse, weights_coarse = self._render_level(self.field_coarse, samples_coarse, bg_rgb, ray_bundle.fars)
        samples_fine = self.sampler_pdf(ray_bundle, samples_coarse, weights_coarse)
        fine, _ = self._render_level(self.field_fine, samples_fine, bg_rgb, ray_bundle.fars)

        outputs: Dict[str, Tensor] = {f"{k}_coarse": v for k, v in coarse.items()}
        outputs.update(fine)
        if "semantics_probs" in fine:
            outputs["semantics"] = colorize(fine["semantics_probs"].argmax(dim=-1))
        if "ambient" in fine:
            amb = torch.tanh(fine["ambient"]) * 0.5 + 0.5
            outputs["ambient_image"] = torch.cat([amb, amb[:, :1], torch.full_like(amb[:, :1], 0.5)], dim=-1)[:, :3]
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:
        """Render one camera; conditioning absent from its metadata is filled in here (viewer, spiral)."""
        camera = camera.reshape(()) if camera.shape == (1,) else camera
        cams = camera.reshape((1,))
        meta = dict(cams.metadata or {})
        meta.pop("cam_idx", None)
        code = self.driving_code_for_camera(cams, meta)
        new_meta = {
            keys.DRIVING_CODE: code,
            keys.POSE: meta[keys.POSE] if keys.POSE in meta else self.pose_for_camera(cams),
            keys.BG_PROJECTION: cameras_background_projection(cams).to(cams.camera_to_worlds),
        }
        if self.uses_eye:
            new_meta[keys.EYE] = self.eye_for_camera(cams, meta)
        render_cam = Cameras(
            camera_to_worlds=cams.camera_to_worlds,
            fx=cams.fx,
            fy=cams.fy,
            cx=cams.cx,
            cy=cams.cy,
            width=cams.width,
            height=cams.height,
            distortion_params=cams.distortion_params,
            camera_type=cams.camera_type,
            times=cams.times,
            metadata=new_meta,
        )
        outputs = self.get_outputs_for_camera_ray_bundle(
            render_cam.generate_rays(camera_indices=0, keep_shape=True, obb_box=obb_box)
        )
        return display_outputs(outputs)

    def driving_code_for_camera(self, cams: Cameras, meta: Dict[str, Tensor]) -> Float[Tensor, "1 code"]:
        """The code of a dataset camera, or of the training frame nearest the camera's time."""
        device = self.device
        if keys.DRIVING_CODE in meta:
            return meta[keys.DRIVING_CODE].to(device)
        if keys.DRIVER in meta:
            audio_index = meta.get(keys.AUDIO_INDEX)
            return self.encode_driver(
                meta[keys.DRIVER].to(device), None if audio_index is None else audio_index.to(device)
            )
        avatar = getattr(self, "avatar", None)
        code = None if avatar is None else avatar.driving_code(self)
        if code is not None:
            return code
        frame = self.frame_for_time(None if cams.times is None else float(cams.times.flatten()[0]))
        return self.training_frame_code(frame)

    def eye_for_camera(self, cams: Cameras, meta: Dict[str, Tensor]) -> Float[Tensor, "1 1"]:
        """The camera's eye closure, else the viewer panel's, else that of the training frame nearest its time."""
        if keys.EYE in meta:
            return meta[keys.EYE].to(self.device)
        avatar = getattr(self, "avatar", None)
        eye = None if avatar is None else avatar.eye(self)
        if eye is not None:
            return eye
        frame = self.frame_for_time(None if cams.times is None else float(cams.times.flatten()[0]))
        return self.train_eye[frame : frame + 1]

    def training_frame_code(self, frame: int) -> Float[Tensor, "1 code"]:
        """The driving code of training frame ``frame``, smoothed over its own training-set neighbours."""
        return self.encode_driver(
            self.train_drivers[frame : frame + 1],
            self.train_audio_index[frame : frame + 1],
            self.train_audio_neighbours[frame : frame + 1] if self.train_audio_neighbours.numel() else None,
        )

    def pose_for_camera(self, cams: Cameras) -> Float[Tensor, "1 6"]:
        pose = pose_code(cams.camera_to_worlds.to(self.device))
        avatar = getattr(self, "avatar", None)
        return pose if avatar is None else avatar.pose(pose)

    def frame_for_time(self, time: Optional[float]) -> int:
        n = self.train_drivers.shape[0]
        if time is None or n <= 1:
            return 0
        return int(round(min(max(time, 0.0), 1.0) * (n - 1)))

    # ------------------------------------------------------------------------------------------
    # Losses and metrics

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(self.device)[..., :3]
        metrics = {"psnr": psnr(outputs["rgb"].detach(), image)}
        if "rgb_coarse" in outputs:
            metrics["psnr_coarse"] = psnr(outputs["rgb_coarse"].detach(), image)
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(self.device)[..., :3]
        labels = batch["semantics"].to(self.device).long().view(-1) if "semantics" in batch else None
        losses: Dict[str, Tensor] = {}
        per_ray = torch.zeros(image.shape[0], device=self.device)
        # Every rendered level (coarse and fine; sahs-fast renders one level).
        for suffix in [s for s in ("_coarse", "") if "rgb" + s in outputs]:
            se = ((outputs["rgb" + suffix] - image) ** 2).mean(dim=-1)
            per_ray = per_ray + se.detach()
            losses["rgb_loss" + suffix] = se.mean()
            probs = outputs.get("semantics_probs" + suffix)
            if labels is None or probs is None:
                continue
            valid = labels >= 0
            ce = -torch.log(probs.gather(-1, labels.clamp(min=0)[:, None])[:, 0] + EPS)
            ce = torch.where(valid, ce, torch.zeros_like(ce))
            per_ray = per_ray + ce.detach()
            losses["semantic_loss" + suffix] = self.config.semantic_loss_weight * ce.sum() / valid.sum().clamp(min=1)
            mouth = torch.zeros((), device=self.device)
            for cls in MOUTH_CLASSES:
                sel = labels == cls
                if sel.any():
                    mouth = mouth + se[sel].mean() + ce[sel].mean()
            losses["mouth_loss" + suffix] = self.config.mouth_loss_weight * mouth
        if self.training:  # every training batch, so that a batch without labels reads as no rays
            valid = labels >= 0 if labels is not None else torch.zeros_like(per_ray, dtype=torch.bool)
            picked = labels[valid] if labels is not None else torch.zeros(0, dtype=torch.long, device=self.device)
            self.class_loss_sum = torch.zeros(NUM_CLASSES, device=self.device).index_add_(0, picked, per_ray[valid])
            self.class_loss_count = torch.bincount(picked, minlength=NUM_CLASSES).float()
        return losses

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        image = batch["image"].to(self.device)[..., :3]
        rgb = outputs["rgb"]
        labels = batch["semantics"].to(self.device)[..., 0].long() if "semantics" in batch else None
        # Without masks (AD-NeRF), the face rectangle stands in for the mouth region.
        face_rect = batch["face_rect"].to(self.device)[..., 0].bool() if "face_rect" in batch else None
        pred_labels = outputs["semantics_probs"].argmax(dim=-1) if "semantics_probs" in outputs else None
        if self.lpips is not None:
            self.lpips = self.lpips.to(self.device)
        metrics = image_metrics(rgb, image, labels, pred_labels, mouth=face_rect, lpips=self.lpips)
        if "rgb_coarse" in outputs:
            metrics["psnr_coarse"] = float(psnr(outputs["rgb_coarse"], image))
        if self.lip_sync is not None:
            self.lip_sync.add(rgb, image)
        images = {"img": torch.cat([image, rgb], dim=1)}
        images["depth"] = colormaps.apply_depth_colormap(
            outputs["depth"], accumulation=outputs["accumulation"], near_plane=self.near, far_plane=self.far
        )
        if pred_labels is not None:
            if labels is not None:
                images["semantics"] = torch.cat([colorize(labels), colorize(pred_labels)], dim=1)
            else:
                images["semantics"] = colorize(pred_labels)
        return metrics, images


def _unique_first(key: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Distinct values, the index of one occurrence of each, and the inverse map."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    return uniq, first, inverse
