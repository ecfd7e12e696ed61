"""Device mesh, parameter sharding rules, global batches and multi-host start-up.

One program for one CPU, one GPU, 8 GPUs or a TPU pod:

- ``create_mesh(parallel_cfg)``: a ``jax.make_mesh`` over ``('data', 'fsdp', 'tensor')``.
  ``parallel_cfg.mesh.{data,fsdp,tensor}`` give the sizes (-1 = fill with the remaining devices);
  with ``parallel_cfg.fsdp = False`` the fsdp axis has size 1 and params are replicated.
- Parameter placement is a short list of (regex over the param path -> tactic) rules, big_vision
  style (``PARAM_RULES``). A tactic is a ``PartitionSpec`` over the *tensor* axis (Megatron style
  column / row split of the attention and MLP kernels); afterwards FSDP shards the largest
  remaining dimension divisible by the fsdp size over ``'fsdp'`` (params of fewer than
  ``fsdp_min_size`` elements stay replicated). The same rules place the optimizer state, whose
  leaves carry the param path as a suffix (``.../mu/blocks_0/attn/qkv/kernel``).
- The batch is sharded over ``('data', 'fsdp')`` on its leading dimension. Each process loads
  only its own slice of the global batch; ``global_batch`` assembles the global ``jax.Array``
  with ``jax.make_array_from_process_local_data``.
- ``maybe_initialize_distributed()`` calls ``jax.distributed.initialize`` when the environment
  describes a multi-process job: explicit ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/
  ``JAX_PROCESS_ID`` (passed on), a SLURM job step with several tasks, or a Cloud TPU VM (no
  arguments: JAX's own cluster detection finds the pod, as MaxText does).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nag_jax.errors import ConfigError, UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex over the '/'-joined param path, tactic). First match wins. The tactic is a PartitionSpec
# over the 'tensor' axis (None entries are free for FSDP) or "replicate". Anything unmatched is
# left to FSDP alone.
PARAM_RULES: tuple[tuple[str, object], ...] = (
    (r"null_noise_token$", "replicate"),  # tiny and trained alone in fine-tuning
    (r"(attn/qkv|mlp/fc1)/kernel$", P(None, "tensor")),  # column parallel: split the outputs
    (r"(attn/qkv|mlp/fc1)/bias$", P("tensor")),
    (r"(attn/proj|mlp/fc2)/kernel$", P("tensor", None)),  # row parallel: split the inputs
    (r".*", P()),
)


def mesh_shape(parallel_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves (data, fsdp, tensor) sizes for ``num_devices``; -1 fills, fsdp off -> 1."""
    mesh_cfg = parallel_cfg["mesh"]
    sizes = {
        "data": int(mesh_cfg["data"]),
        "fsdp": int(mesh_cfg["fsdp"]) if parallel_cfg["fsdp"] else 1,
        "tensor": int(mesh_cfg["tensor"]),
    }
    if sizes["data"] == -1 and sizes["fsdp"] == -1:
        sizes["data"] = 1  # FSDP over every device is the usual choice when both fill
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise ConfigError(
            f"config.parallel.mesh: at most one axis may be -1 (fill), got {sizes}; give the "
            "other axes explicit sizes."
        )
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if fill:
        if num_devices % fixed:
            raise ConfigError(
                f"Mesh sizes {sizes} do not divide the {num_devices} devices; set "
                f"config.parallel.mesh sizes whose product divides {num_devices}."
            )
        sizes[fill[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(
            f"Mesh sizes {sizes} (product {math.prod(sizes.values())}) do not match the "
            f"{num_devices} devices; use -1 for one axis to fill the rest."
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def create_mesh(
    parallel_cfg=None, devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(parallel_cfg, len(devices))
    # Auto axes: XLA propagates shardings from the jit's in/out shardings (make_mesh's default
    # in recent JAX is Explicit, which asks every op for an out_sharding).
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def path_str(path) -> str:
    """A jax key path -> 'a/b/c' (dict keys, attribute names and sequence indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _fsdp_spec(shape, spec: tuple, fsdp_size: int, min_size: int) -> tuple:
    """Puts 'fsdp' on the largest free dimension divisible by ``fsdp_size``."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return spec
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp_size == 0]
    if not free:
        return spec
    best = max(free, key=lambda i: (shape[i], -i))
    return spec[:best] + ("fsdp",) + spec[best + 1 :]


def partition_spec(
    path: str,
    shape: Sequence[int],
    mesh: jax.sharding.Mesh,
    *,
    rules=PARAM_RULES,
    fsdp_min_size: int = 2**10,
) -> P:
    """The PartitionSpec for one array: first matching rule, then FSDP on a free dim."""
    shape = tuple(shape)
    tactic = next((t for pattern, t in rules if re.search(pattern, path)), P())
    if tactic == "replicate" or not shape:
        return P()
    spec = tuple(tactic) + (None,) * (len(shape) - len(tuple(tactic)))
    spec = spec[len(spec) - len(shape) :] if len(spec) > len(shape) else spec
    tensor = mesh.shape.get("tensor", 1)
    spec = tuple(
        None if (a == "tensor" and (tensor == 1 or shape[i] % tensor)) else a
        for i, a in enumerate(spec)
    )
    spec = _fsdp_spec(shape, spec, mesh.shape.get("fsdp", 1), fsdp_min_size)
    return P(*spec)


def tree_shardings(tree, mesh: jax.sharding.Mesh, *, rules=PARAM_RULES, fsdp_min_size=2**10):
    """NamedShardings for every array leaf of ``tree`` (params, opt state, abstract or real)."""

    def leaf(path, x):
        return NamedSharding(
            mesh,
            partition_spec(
                path_str(path), np.shape(x), mesh, rules=rules, fsdp_min_size=fsdp_min_size
            ),
        )

    return jax.tree_util.tree_map_with_path(leaf, tree)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dimension over ('data', 'fsdp'); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_global_batch(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """Checks the global batch divides over batch shards and processes; returns the local size."""
    shards, procs = batch_shards(mesh), jax.process_count()
    if global_batch_size % shards:
        lo = global_batch_size // shards * shards
        raise ConfigError(
            f"Global batch size {global_batch_size} does not divide over the {shards} batch shards "
            f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} devices). Set "
            f"config.data.global_batch_size to a multiple of {shards}, e.g. {max(lo, shards)} "
            f"or {lo + shards}."
        )
    if global_batch_size % procs:
        raise ConfigError(
            f"Global batch size {global_batch_size} does not divide over the {procs} processes; "
            f"set config.data.global_batch_size to a multiple of {procs}."
        )
    return global_batch_size // procs


def global_batch(local_batch, mesh: jax.sharding.Mesh):
    """Process-local numpy arrays (leading dim = local batch) -> global sharded jax.Arrays.

    Every process passes its own slice; the global batch is the concatenation in process order.
    """
    sharding = batch_sharding(mesh)
    procs = jax.process_count()

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("global_batch expects arrays with a leading batch dimension.")
        check_global_batch(x.shape[0] * procs, mesh)
        return jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * procs,) + x.shape[1:]
        )

    return jax.tree.map(one, local_batch)


def per_device_bytes(tree) -> dict[str, int]:
    """Bytes each device holds for ``tree`` (from the arrays' addressable shards)."""
    out: dict[str, int] = {}
    for x in jax.tree.leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        for shard in x.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.size * shard.data.dtype.itemsize
    return out


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def cloud_tpu_vm() -> bool:
    """Whether this process runs on a Cloud TPU VM with libtpu (GCE or GKE).

    JAX decides this itself when it is imported (``jax._src.cloud_tpu_init``: TPU chips on the
    PCI bus and libtpu installed, or ``JAX_FORCE_TPU_INIT``); we read its answer rather than a
    second guess. A CPU jaxlib on a TPU VM gives False (nothing to initialise then).
    """
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # a JAX without the module: no Cloud TPU support to ask
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def multiprocess_env() -> str | None:
    """How the environment describes a multi-process JAX job, or None for a single process.

    ``"env"``: explicit ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` > 1 (launch/
    slurm_gpu.sh, any hand-made launcher); ``"slurm"``: a SLURM job step with several tasks;
    ``"tpu"``: a Cloud TPU VM (GCE: JAX finds the pod through the metadata server; GKE:
    ``TPU_WORKER_HOSTNAMES``). A single-host TPU VM is ``"tpu"`` too: JAX's detection then finds
    one process, as MaxText relies on.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and (_env_int("JAX_NUM_PROCESSES") or 1) > 1:
        return "env"
    if (_env_int("SLURM_STEP_NUM_TASKS") or _env_int("SLURM_NTASKS") or 1) > 1 and os.environ.get(
        "SLURM_JOB_ID"
    ):
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if cloud_tpu_vm() or len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return None


def distributed_kwargs(kind: str) -> dict:
    """The arguments of ``jax.distributed.initialize`` for ``multiprocess_env()``'s ``kind``.

    Only the explicit path passes any: SLURM and Cloud TPU are JAX's own cluster detection
    (``jax._src.clusters``: SlurmCluster, GceTpuCluster, GkeTpuCluster), so on a TPU VM the call
    has no arguments at all.
    """
    if kind != "env":
        return {}
    kwargs = dict(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=_env_int("JAX_NUM_PROCESSES"),
        process_id=_env_int("JAX_PROCESS_ID"),
    )
    if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        kwargs["local_device_ids"] = [int(i) for i in os.environ["JAX_LOCAL_DEVICE_IDS"].split(",")]
    return kwargs


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


_HOW = {
    "env": "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID",
    "slurm": "the SLURM job (SLURM_NTASKS > 1)",
    "tpu": "this Cloud TPU VM (JAX's pod detection: the GCE metadata server, or "
    "TPU_WORKER_HOSTNAMES on GKE)",
}


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize`` once when the env says multi-process; True if it did.

    Explicit variables win (``JAX_COORDINATOR_ADDRESS`` host:port, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``, optional ``JAX_LOCAL_DEVICE_IDS`` comma list); SLURM and Cloud TPU VMs
    call it without arguments (JAX's cluster detection). A failure raises UserError: one line
    naming what described the job and JAX's first line (the traceback behind ``--verbose``).
    ``NAG_JAX_HEARTBEAT_TIMEOUT`` (seconds, JAX's default 100): a process silent that long is
    declared lost and every other stops (nag_jax.main prints that as one line).
    """
    kind = multiprocess_env()
    if jax.distributed.is_initialized() or kind is None:
        return False
    if kind == "tpu" and _backends_initialized():
        # A notebook or test on a (single-host) TPU VM that already used JAX: too late to join a
        # pod, and there is none to join when JAX already runs here alone.
        logging.info("Cloud TPU VM: JAX already initialised, jax.distributed not started")
        return False
    try:
        kwargs = distributed_kwargs(kind)
        if os.environ.get("NAG_JAX_HEARTBEAT_TIMEOUT"):  # how long a silent process is waited for
            kwargs["heartbeat_timeout_seconds"] = int(os.environ["NAG_JAX_HEARTBEAT_TIMEOUT"])
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here is the environment's, reported as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"jax.distributed.initialize() failed for the multi-process job described by "
            f"{_HOW[kind]}: {type(e).__name__}: {first}. Start the same command on every "
            "host (launch/tpu_pod.sh, launch/slurm_gpu.sh), check that the coordinator is "
            "reachable, or unset these variables for a single-process run."
        ) from e
    logging.info(
        "jax.distributed initialised (%s): process %d of %d, %d local / %d global devices",
        kind,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def any_across_processes(flag: bool) -> bool:
    """True when ``flag`` is True on any process (a tiny all-reduce; free when single-process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(jnp.asarray([int(bool(flag))], jnp.int32))
    return bool(np.asarray(flags).any())


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
    """A barrier through the coordination service (no device collective): every process waits
    here until all arrive. Between compiling the train step and its first run, it keeps a slow
    compile on one process (a loaded host) from running out the CPU collectives' 30 s connection
    timeout on the others. Free with one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
