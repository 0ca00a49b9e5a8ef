"""Stage II: the 2-D texture refiner applied to Stage-I renders (identity-conditioned SPADE).

Modules, one job each: :mod:`.networks` (the refiner), :mod:`.io` (frame folders and pairs),
:mod:`.audio` (audio windows of the audio variant), :mod:`.checkpoints`, :mod:`.training`,
:mod:`.inference` (refining frames and videos), :mod:`.evaluation` (before/after metrics),
:mod:`.stage_one` (Stage-I renders of a trained SAHS run), :mod:`.runtime` (device, progress bar),
:mod:`.pipeline` (all of Stage II on a trained run in one call: :func:`run_stage_two`).
Bad input raises :class:`~sahs_nerfstudio.errors.FormatError`.
"""

from sahs_nerfstudio.refinement.checkpoints import find_latest_checkpoint, read_checkpoint
from sahs_nerfstudio.refinement.evaluation import evaluate_refiner
from sahs_nerfstudio.refinement.inference import LoadedRefiner, load_refiner, refine_frames
from sahs_nerfstudio.refinement.io import FramePair, pair_frames
from sahs_nerfstudio.refinement.networks import (
    SPADE,
    AudioEncoder,
    IdentityEncoder,
    RefinerNetwork,
    RefinerNetworkConfig,
    SPADEResBlock,
    pad_to_stride,
)
from sahs_nerfstudio.refinement.pipeline import run_stage_two
from sahs_nerfstudio.refinement.stage_one import release_stage_one_pipeline, render_stage_one
from sahs_nerfstudio.refinement.training import RefinerTrainConfig, TrainResult, lr_factor, train_refiner

__all__ = [
    "AudioEncoder",
    "FramePair",
    "IdentityEncoder",
    "LoadedRefiner",
    "RefinerNetwork",
    "RefinerNetworkConfig",
    "RefinerTrainConfig",
    "SPADE",
    "SPADEResBlock",
    "TrainResult",
    "evaluate_refiner",
    "find_latest_checkpoint",
    "load_refiner",
    "lr_factor",
    "pad_to_stride",
    "pair_frames",
    "read_checkpoint",
    "refine_frames",
    "release_stage_one_pipeline",
    "render_stage_one",
    "run_stage_two",
    "train_refiner",
]
