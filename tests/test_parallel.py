"""Mesh, sharding rules, FSDP equivalence and memory, global batch checks (8 CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nag_jax import parallel
from nag_jax.training import step as step_lib
from nag_jax.training.loop import setup_state
from tests.fixtures import standin_loss, tiny_config, tiny_model


def _cfg(fsdp, **mesh):
    return dict(fsdp=fsdp, mesh=dict(dict(data=-1, fsdp=-1, tensor=1), **mesh))


def test_mesh_shape_fills_and_disables_fsdp():
    assert parallel.mesh_shape(_cfg(False), 8) == (8, 1, 1)
    assert parallel.mesh_shape(_cfg(True), 8) == (1, 8, 1)
    assert parallel.mesh_shape(_cfg(True, data=2), 8) == (2, 4, 1)
    assert parallel.mesh_shape(_cfg(True, data=2, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="do not divide the 8 devices"):
        parallel.mesh_shape(_cfg(True, data=3), 8)
    mesh = parallel.create_mesh(_cfg(True, data=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_partition_rules_fsdp_largest_divisible_dim_and_tensor():
    mesh = parallel.create_mesh(_cfg(True))  # fsdp = 8
    spec = lambda path, shape, m=mesh: parallel.partition_spec(path, shape, m, fsdp_min_size=1)
    assert spec("blocks_0/attn/qkv/kernel", (32, 96)) == P(None, "fsdp")
    assert spec("blocks_0/mlp/fc2/kernel", (128, 32)) == P("fsdp", None)
    assert spec("x_embedder/proj/kernel", (2, 2, 3, 32)) == P(None, None, None, "fsdp")
    assert spec("y_embedder/embedding_table/embedding", (5, 32)) == P(None, "fsdp")
    assert spec("y_embedder/embedding_table/embedding", (5, 6)) == P(None, None)  # no dim / 8
    assert spec("null_noise_token", (32,)) == P()
    assert parallel.partition_spec("a/kernel", (32, 96), mesh, fsdp_min_size=10**6) == P(None, None)
    # Optimizer state leaves carry the param path as a suffix.
    assert spec("0/mu/blocks_0/attn/qkv/kernel", (32, 96)) == P(None, "fsdp")
    tp = parallel.create_mesh(_cfg(True, tensor=2))  # fsdp 4 x tensor 2
    assert spec("blocks_0/attn/qkv/kernel", (32, 96), tp) == P("fsdp", "tensor")
    assert spec("blocks_0/attn/proj/kernel", (32, 32), tp) == P("tensor", "fsdp")
    off = parallel.create_mesh(_cfg(False))
    assert spec("blocks_0/attn/qkv/kernel", (32, 96), off) == P(None, None)


def _setup(fsdp, devices, hidden=32):
    cfg = tiny_config()
    cfg.model.hidden_size = hidden
    cfg.parallel.fsdp = fsdp
    mesh = parallel.create_mesh(cfg.parallel, devices)
    state, shardings, tx = setup_state(cfg, tiny_model(cfg), mesh)
    return cfg, mesh, state, shardings, tx


def test_fsdp_train_step_equals_single_device_step():
    cfg, mesh1, s1, sh1, tx = _setup(False, jax.devices()[:1])
    _, mesh8, s8, sh8, _ = _setup(True, jax.devices())
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(s8.params))
    np.testing.assert_array_equal(  # same init regardless of placement
        np.asarray(s1.params["blocks_0"]["attn"]["qkv"]["kernel"]),
        np.asarray(s8.params["blocks_0"]["attn"]["qkv"]["kernel"]),
    )
    model = tiny_model(cfg)
    rng = np.random.default_rng(0)
    local = {
        "x": rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32),
        "y": rng.integers(0, 4, 8).astype(np.int32),
    }
    outs = []
    for mesh, state, sh in ((mesh1, s1, sh1), (mesh8, s8, sh8)):
        fn = step_lib.jit_train_step(
            sh,
            mesh,
            apply_fn=step_lib.make_apply_fn(model),
            loss_fn=standin_loss,
            tx=tx,
            ema_decay=0.9,
        )
        for _ in range(2):
            state, metrics = fn(state, parallel.global_batch(local, mesh))
        outs.append((jax.device_get(state.params), float(metrics["loss"])))
    (p1, l1), (p8, l8) = outs
    assert l1 == pytest.approx(l8, rel=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp_per_device_bytes_shrink_about_1_over_n():
    _, _, s1, _, _ = _setup(False, jax.devices(), hidden=64)  # replicated over 8
    _, _, s8, _, _ = _setup(True, jax.devices(), hidden=64)
    rep = parallel.per_device_bytes((s1.params, s1.opt_state))
    sh = parallel.per_device_bytes((s8.params, s8.opt_state))
    assert len(rep) == len(sh) == 8
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((s1.params, s1.opt_state)))
    assert max(rep.values()) == total  # every device holds everything without FSDP
    ratio = max(sh.values()) / max(rep.values())
    assert 1 / 8 <= ratio < 1.3 / 8, ratio  # only biases and tiny leaves stay replicated


def test_global_batch_not_divisible_names_numbers_and_fix():
    mesh = parallel.create_mesh(_cfg(True))
    with pytest.raises(
        ValueError, match=r"12 does not divide over the 8 batch shards.*multiple of 8"
    ):
        parallel.check_global_batch(12, mesh)
    assert parallel.check_global_batch(16, mesh) == 16


def test_global_batch_assembles_process_local_arrays():
    mesh = parallel.create_mesh(_cfg(True, data=2))
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.global_batch({"x": x}, mesh)["x"]
    assert g.shape == (16, 3) and g.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(g), x)


_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "JAX_LOCAL_DEVICE_IDS",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "TPU_WORKER_HOSTNAMES",
)


def test_multiprocess_env_detection(monkeypatch):
    for k in _CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: False)
    assert parallel.multiprocess_env() is None
    assert parallel.maybe_initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert parallel.multiprocess_env() == "env"
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel.multiprocess_env() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")  # GKE
    assert parallel.multiprocess_env() == "tpu"
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: True)  # GCE: nothing in the env
    assert parallel.multiprocess_env() == "tpu"


def test_initialize_arguments_per_platform(monkeypatch):
    """Cloud TPU VM and SLURM: jax.distributed.initialize() with no arguments (JAX's own cluster
    detection); the explicit variables are passed on as given."""
    calls = []
    for k in _CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(parallel, "_backends_initialized", lambda: False)
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: True)
    assert parallel.maybe_initialize_distributed() is True
    assert calls == [{}]
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel.maybe_initialize_distributed() is True
    assert calls[-1] == {}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "head:4321")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "1")
    assert parallel.maybe_initialize_distributed() is True
    assert calls[-1] == dict(
        coordinator_address="head:4321", num_processes=4, process_id=3, local_device_ids=[1]
    )
    # A TPU VM whose JAX already runs (a notebook): too late to join, nothing is called.
    for k in _CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: True)
    monkeypatch.setattr(parallel, "_backends_initialized", lambda: True)
    assert parallel.maybe_initialize_distributed() is False and len(calls) == 3


def test_failed_initialize_is_one_user_error_line(monkeypatch):
    from nag_jax.errors import UserError

    def fail(**kw):
        raise RuntimeError("Getting metadata['agent-worker-number'] failed for 6 tries\nmore")

    for k in _CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", fail)
    monkeypatch.setattr(parallel, "_backends_initialized", lambda: False)
    monkeypatch.setattr(parallel, "cloud_tpu_vm", lambda: True)
    with pytest.raises(UserError) as info:
        parallel.maybe_initialize_distributed()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("jax.distributed.initialize() failed for the multi-process job")
    assert "Cloud TPU VM" in msg and "agent-worker-number" in msg and "more" not in msg
