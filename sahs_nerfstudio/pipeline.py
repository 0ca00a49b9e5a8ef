"""nerfstudio's VanillaPipeline, made safe for multi-process training on the CPU."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import torch
import torch.distributed as dist
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class SAHSPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline whose DDP wrap also works for CPU processes (gloo)."""

    _target: Type = field(default_factory=lambda: SAHSPipeline)


class SAHSPipeline(VanillaPipeline):
    """Identical to VanillaPipeline on GPUs; on CPUs, wraps DDP without ``device_ids``."""

    def __init__(
        self,
        config: VanillaPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        on_cpu = torch.device(device).type == "cpu"
        # nerfstudio passes device_ids=[rank] to DDP, which CPU modules reject: build unwrapped, wrap below.
        super().__init__(config, device, test_mode, 1 if on_cpu else world_size, local_rank, grad_scaler)
        self.world_size = world_size
        if on_cpu and world_size > 1:
            self._model = typing.cast(Model, DDP(self._model, find_unused_parameters=True))
            dist.barrier()
