"""Multi-process training on the CPU (gloo) for nerfstudio 1.1.5 (written against nerfstudio 1.1.5, torch 2.14).

Two things in nerfstudio 1.1.5 stop ``ns-train ... --machine.device-type cpu --machine.num-devices 2``:

* ``nerfstudio.scripts.train._distributed_worker`` asserts ``torch.cuda.is_available()`` in every
  spawned worker, even when the backend it picks is gloo. :func:`enable_cpu_distributed_training`
  replaces that module attribute (``launch`` looks it up by name when it spawns) with
  :func:`distributed_worker`, which is nerfstudio's worker minus the CUDA assertions for CPU runs
  and hands everything else to nerfstudio's own;
* ``VanillaPipeline.__init__`` wraps the model in ``DDP(model, device_ids=[local_rank])`` whenever
  ``world_size > 1``, and DDP rejects ``device_ids`` for CPU modules. The SAHS pipeline builds
  through nerfstudio with :func:`pipeline_world_size` (1 on the CPU, so nerfstudio does not wrap)
  and wraps afterwards with :func:`wrap_cpu_ddp`.

GPU runs go through nerfstudio's own code unchanged.
"""

from __future__ import annotations

import typing
from datetime import timedelta
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from nerfstudio.models.base_model import Model
from nerfstudio.utils import comms
from torch.nn.parallel import DistributedDataParallel as DDP

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release whose launcher and pipeline this works around."""

_ORIGINAL_WORKER: Callable[..., Any] | None = None


def distributed_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta = timedelta(minutes=30),
    device_type: Literal["cpu", "cuda", "mps"] = "cuda",
) -> Any:
    """nerfstudio's ``_distributed_worker`` (same signature) without its CUDA assertions when the device is the CPU."""
    if device_type != "cpu":
        import nerfstudio.scripts.train as ns_train

        original = _ORIGINAL_WORKER or ns_train._distributed_worker
        return original(
            local_rank,
            main_func,
            world_size,
            num_devices_per_machine,
            machine_rank,
            dist_url,
            config,
            timeout,
            device_type,
        )
    global_rank = machine_rank * num_devices_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    for i in range(world_size // num_devices_per_machine):
        group = dist.new_group(list(range(i * num_devices_per_machine, (i + 1) * num_devices_per_machine)))
        if i == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    output = main_func(local_rank, world_size, config, global_rank)
    comms.synchronize()
    dist.destroy_process_group()
    return output


def enable_cpu_distributed_training() -> None:
    """Route nerfstudio's multi-process launcher through :func:`distributed_worker` (idempotent).

    Call it once ``nerfstudio.scripts.train`` is fully imported (``ns-train`` imports the method
    configs while that module is still loading).
    """
    global _ORIGINAL_WORKER
    import nerfstudio.scripts.train as ns_train

    if ns_train._distributed_worker is not distributed_worker:
        _ORIGINAL_WORKER = ns_train._distributed_worker
        ns_train._distributed_worker = distributed_worker  # type: ignore[assignment]


def pipeline_world_size(device: str, world_size: int) -> int:
    """The ``world_size`` to hand ``VanillaPipeline.__init__``: 1 on the CPU, so that it does not wrap DDP itself."""
    return 1 if torch.device(device).type == "cpu" else world_size


def wrap_cpu_ddp(model: Model, device: str, world_size: int) -> Model:
    """The model wrapped in DDP without ``device_ids`` for a multi-process CPU run; unchanged otherwise.

    ``find_unused_parameters`` as nerfstudio's own wrap (the audio networks are idle in expression runs).
    """
    if torch.device(device).type != "cpu" or world_size <= 1:
        return model
    wrapped = typing.cast(Model, DDP(model, find_unused_parameters=True))
    dist.barrier()
    return wrapped
