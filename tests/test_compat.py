"""Each workaround in ``sahs_nerfstudio.compat`` against the library it works around.

Every test states an assumption the workaround makes about a library's internals (a private name,
a signature, a behaviour) and fails when an upgrade breaks it: the place to look after changing
the pinned nerfstudio / viser / torch.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import pickle
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dill
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from sahs_nerfstudio.compat import checkpoints, cpu_ddp, encodings, shared_tensor, viser_camera
from sahs_nerfstudio.compat.shared_tensor import SharedVector
from sahs_nerfstudio.kernels.hash_grid_torch import INSTANT_NGP_PRIMES

# ----------------------------------------------------------------------------------------------
# Versions


def test_installed_libraries_are_the_versions_the_workarounds_target():
    nerfstudio = importlib.metadata.version("nerfstudio")
    for module in (checkpoints, cpu_ddp, encodings, shared_tensor):
        assert module.NERFSTUDIO_VERSION == nerfstudio == "1.1.5", module.__name__
        assert f"nerfstudio {nerfstudio}" in (module.__doc__ or ""), module.__name__
    viser = importlib.metadata.version("viser")
    assert viser_camera.VISER_VERSION == viser == "0.2.7"
    assert f"viser {viser}" in (viser_camera.__doc__ or "")


# ----------------------------------------------------------------------------------------------
# Checkpoint safe globals


def _nerfstudio_like_checkpoint() -> bytes:
    # What nerfstudio's trainer saves next to the weights: numpy scalars (from schedulers/optimizers) and dtypes.
    buf = io.BytesIO()
    state = {"step": np.int64(3), "lr": np.float64(5e-4), "dtype": np.dtype("float32"), "w": torch.ones(2)}
    torch.save(state, buf)
    return buf.getvalue()


def test_weights_only_loading_refuses_numpy_until_allowed():
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        data = _nerfstudio_like_checkpoint()
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(data))  # torch's default is weights-only: the reason for the workaround
        checkpoints.allow_nerfstudio_checkpoints()
        checkpoints.allow_nerfstudio_checkpoints()  # idempotent
        loaded = torch.load(io.BytesIO(data))
        assert loaded["step"] == 3 and loaded["lr"] == 5e-4 and loaded["dtype"] == np.dtype("float32")
        assert torch.equal(loaded["w"], torch.ones(2))
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_nerfstudio_loaders_use_torch_default_loading():
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.utils import eval_utils

    from sahs_nerfstudio.compat import eval_checkpoint

    # Once a SAHS run was loaded in this process, eval_utils holds the plugin's replacement: check nerfstudio's own.
    eval_load_checkpoint = eval_checkpoint._original_eval_load or eval_utils.eval_load_checkpoint
    for loader in (Trainer._load_checkpoint, eval_load_checkpoint):
        source = inspect.getsource(loader)
        assert 'torch.load(load_path, map_location="cpu")' in source and "weights_only" not in source


def test_importing_the_method_registers_nothing_but_building_a_pipeline_does():
    probe = (
        "import numpy as np, torch\n"
        "import sahs_nerfstudio.sahs_config\n"
        "before = np.dtype in torch.serialization.get_safe_globals()\n"
        "from sahs_nerfstudio.compat.checkpoints import allow_nerfstudio_checkpoints\n"
        "allow_nerfstudio_checkpoints()\n"
        "print(before, np.dtype in torch.serialization.get_safe_globals())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
    from sahs_nerfstudio import pipeline

    assert "allow_nerfstudio_checkpoints()" in inspect.getsource(pipeline.SAHSPipeline.__init__)


# ----------------------------------------------------------------------------------------------
# CPU DDP


def test_nerfstudio_worker_still_needs_the_swap_and_matches_its_signature():
    import nerfstudio.scripts.train as ns_train

    original = cpu_ddp._ORIGINAL_WORKER or ns_train._distributed_worker
    assert original is not cpu_ddp.distributed_worker
    ours, theirs = inspect.signature(cpu_ddp.distributed_worker), inspect.signature(original)
    assert list(ours.parameters) == list(theirs.parameters)
    for name, param in theirs.parameters.items():
        assert ours.parameters[name].default == param.default, name
    # The CUDA assertion the swap removes for CPU runs, and launch() finding the worker by module attribute.
    assert "assert torch.cuda.is_available()" in inspect.getsource(original)
    assert "_distributed_worker" in ns_train.launch.__code__.co_names
    current = ns_train._distributed_worker
    try:
        cpu_ddp.enable_cpu_distributed_training()
        cpu_ddp.enable_cpu_distributed_training()  # idempotent: the original is kept, not our own worker
        assert ns_train._distributed_worker is cpu_ddp.distributed_worker
        assert cpu_ddp._ORIGINAL_WORKER is original
    finally:
        ns_train._distributed_worker = current  # type: ignore[assignment]


def test_vanilla_pipeline_wraps_with_device_ids_which_cpu_modules_reject(tmp_path):
    from nerfstudio.pipelines.base_pipeline import VanillaPipeline

    source = inspect.getsource(VanillaPipeline.__init__)
    assert "if world_size > 1:" in source and "DDP(self._model, device_ids=[local_rank]" in source
    assert cpu_ddp.pipeline_world_size("cpu", 2) == 1 and cpu_ddp.pipeline_world_size("cuda", 2) == 2
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="device_ids"):
            nn.parallel.DistributedDataParallel(nn.Linear(2, 2), device_ids=[0])
        module = nn.Linear(2, 2)
        wrapped = cpu_ddp.wrap_cpu_ddp(module, "cpu", 2)  # type: ignore[arg-type]
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and wrapped.module is module
        assert cpu_ddp.wrap_cpu_ddp(module, "cpu", 1) is module  # type: ignore[arg-type]
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Shared tensor


def test_parallel_datamanager_workers_use_pathos_whose_pickling_copies_tensors():
    from nerfstudio.data.datamanagers import parallel_datamanager
    from pathos.helpers import mp as pathos_mp

    assert parallel_datamanager.mp is pathos_mp and parallel_datamanager.mp is not torch.multiprocessing
    assert issubclass(parallel_datamanager.DataProcessor, pathos_mp.Process)
    assert 'mp.set_start_method("spawn")' in inspect.getsource(parallel_datamanager)
    plain = torch.zeros(3, dtype=torch.float64)
    copy = dill.loads(dill.dumps(plain))
    plain += 1.0
    assert float(copy.sum()) == 0.0  # an ordinary tensor is not shared: the reason for SharedVector

    vector = SharedVector(3, prefix="sahs_test")
    attached = dill.loads(dill.dumps(vector))
    assert attached.path == vector.path and vector.owner and not attached.owner
    vector.tensor[1] = 5.0
    assert attached.tensor.tolist() == [0.0, 5.0, 0.0]
    attached.tensor[2] = 7.0  # both ways
    assert float(vector.tensor[2]) == 7.0
    path = vector.path
    vector.close()
    assert not Path(path).exists()
    orphan = pickle.loads(pickle.dumps(attached))  # the owner is gone: a private snapshot, no new file
    assert orphan.tensor.tolist() == [0.0, 5.0, 7.0] and not Path(path).exists()


def test_shared_vector_lives_in_dev_shm_and_is_removed_with_its_owner():
    expected = "/dev/shm" if Path("/dev/shm").is_dir() else None
    vector = SharedVector(4)
    if expected is not None:
        assert vector.path.startswith(expected + "/")
    path = vector.path
    assert Path(path).stat().st_size == 4 * 8
    del vector
    assert not Path(path).exists()


# ----------------------------------------------------------------------------------------------
# Encodings


def test_nerf_encoding_dispatches_to_pytorch_fwd_and_is_imprecise_without_the_subclass():
    from nerfstudio.field_components.encodings import NeRFEncoding

    assert "self.pytorch_fwd(in_tensor, covs)" in inspect.getsource(NeRFEncoding.forward)
    x = torch.rand(200, 3) * 2 - 1
    exact = encodings.ExactNeRFEncoding(in_dim=3, num_frequencies=15, include_input=True)
    k = torch.arange(15, dtype=torch.float64)
    scaled = (x.double()[..., None] * 2.0**k).flatten(-2)
    reference = torch.cat([torch.sin(scaled), torch.cos(scaled), x.double()], dim=-1)
    assert exact.get_out_dim() == reference.shape[-1] == 93
    assert (exact(x).double() - reference).abs().max() < 1e-5
    # nerfstudio's own torch path with the same arguments: the 2 pi rounding the subclass avoids.
    stock = NeRFEncoding(3, 15, exact.min_freq, exact.max_freq, include_input=True, implementation="torch")
    assert (stock(x).double() - reference).abs().max() > 1e-4


def test_hash_encoding_internals_and_the_class_swap():
    from nerfstudio.field_components.encodings import HashEncoding
    from nerfstudio.fields.density_fields import HashMLPDensityField

    enc = HashEncoding(num_levels=3, min_res=4, max_res=32, log2_hashmap_size=8, implementation="torch")
    assert enc.tcnn_encoding is None and enc.hash_table_size == 256
    assert enc.scalings.shape == (3,) and enc.hash_offset.tolist() == [0, 256, 512]
    assert tuple(enc.hash_table.shape) == (3 * 256, enc.features_per_level)
    assert "return self.pytorch_fwd(in_tensor)" in inspect.getsource(HashEncoding.forward)
    cell = torch.tensor([[[3, 5, 7]] * 3])
    p = INSTANT_NGP_PRIMES  # the reference hash (kernels/hash_grid_torch.py) must be nerfstudio's
    expected = [((3 * p[0]) ^ (5 * p[1]) ^ (7 * p[2])) % 256 + 256 * level for level in range(3)]
    assert enc.hash_fn(cell).flatten().tolist() == expected

    torch.manual_seed(0)
    field = HashMLPDensityField(torch.tensor([[-1.0] * 3, [1.0] * 3]), num_levels=3, max_res=32, implementation="torch")
    keys = list(field.state_dict())
    x = torch.rand(64, 3) * 2 - 1
    before = field.encoding(x)
    encodings.use_fast_torch_hashing(field)
    assert type(field.encoding) is encodings.TorchHashEncoding and list(field.state_dict()) == keys
    assert torch.allclose(field.encoding(x), before, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# viser camera state


def test_viser_camera_state_is_private_and_zero_until_reported():
    import viser._viser as viser_impl

    fields = {f.name for f in viser_impl._CameraHandleState.__dataclass_fields__.values()}
    assert "update_timestamp" in fields
    assert "client.camera._state = _CameraHandleState(" in inspect.getsource(viser_impl.ViserServer.__init__)
    client = SimpleNamespace(_websock_connection=SimpleNamespace(queue_message=lambda message: None))
    camera = viser_impl.CameraHandle(client)  # type: ignore[arg-type]
    assert not viser_camera.camera_reported(camera)
    with pytest.raises(AssertionError):
        camera.update_timestamp  # noqa: B018  (no public "has reported" query: every getter asserts)
    start = time.time()
    camera.fov = 0.8  # what the server's setters (and the client's first message) do
    assert viser_camera.camera_reported(camera) and camera.update_timestamp >= start
