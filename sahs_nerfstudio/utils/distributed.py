"""Multi-process training on CPU (gloo) for nerfstudio 1.1.5.

nerfstudio's launcher asserts CUDA in every spawned worker even when the backend would be gloo,
and its pipeline wraps the model in ``DDP(device_ids=[rank])``, which only GPU modules accept.
``ns-train sahs --machine.device-type cpu --machine.num-devices 2`` therefore needs a CPU-aware
worker (installed here into nerfstudio's launcher, for CPU runs only) and the CPU-aware wrap in
:class:`sahs_nerfstudio.pipeline.SAHSPipeline`. GPU runs go through nerfstudio's own code.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Literal

import torch.distributed as dist
from nerfstudio.utils import comms

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
    """nerfstudio's ``_distributed_worker`` without its CUDA assertion when the device is the CPU."""
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
    """Route nerfstudio's multi-process launcher through :func:`distributed_worker` (idempotent)."""
    global _ORIGINAL_WORKER
    import nerfstudio.scripts.train as ns_train

    if ns_train._distributed_worker is not distributed_worker:
        _ORIGINAL_WORKER = ns_train._distributed_worker
        ns_train._distributed_worker = distributed_worker  # type: ignore[assignment]
