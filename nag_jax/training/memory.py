"""Will a train step fit a chip? Ahead-of-time compiles for a topology, and their per-chip memory.

The library half of ``mode = "compile"`` (nag_jax.jobs.compile) and of ``benchmarks/memory.py``:
- `resolve_target`: ``"v5e:4x4"`` / ``"v4:2x2x1"`` / ``"cpu:8"`` -> compile-only devices (TPU
  through libtpu's ``jax.experimental.topologies``, as MaxText's train_compile.py), their chips and
  HBM per device;
- `compile_train_step` / `compile_sampler`: the configured programs lowered from abstract shapes
  (nothing is allocated) and compiled for those devices;
- `memory`, `flops`, `row`, `train_row`: XLA's per-device bytes (``memory_analysis``: arguments,
  outputs, aliased, temporaries, code; peak = args + out - aliased + temp + code) and FLOPs;
- `peak_points`, `largest_batch`, `shrink_until_two_points`, `does_not_fit_message`: the largest
  per-chip batch that fits, extrapolated linearly in the batch (said so wherever it is shown), and
  the one line a config that does not fit stops with.

Time convention: that of the model family (nag_jax.diffusion.family); nothing here runs a step.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import time

import jax
import jax.numpy as jnp

from nag_jax import parallel
from nag_jax.errors import ConfigError, UserError

GIB = 2**30

# HBM per chip, GiB (Google Cloud's TPU system architecture pages):
#   v4:  32 GiB HBM2 per chip    https://cloud.google.com/tpu/docs/v4  ("HBM2 capacity: 32 GiB")
#   v5e: 16 GiB HBM2 per chip    https://cloud.google.com/tpu/docs/v5e ("HBM2 capacity: 16 GiB")
#   v5p: 95 GiB HBM2e per chip   https://cloud.google.com/tpu/docs/v5p ("HBM2e capacity: 95 GiB")
#   v6e: 32 GiB HBM per chip     https://cloud.google.com/tpu/docs/v6e ("HBM capacity: 32 GiB")
HBM_GIB_PER_CHIP = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}

MEGACORE_CHIPS = ("v4", "v5p")  # two TensorCores a chip, compiled for as one device a chip

TPU_INSTALL = (
    'python -m venv ~/venv-tpu && . ~/venv-tpu/bin/activate && pip install -e . "jax[tpu]==0.10.2"'
)
_TOPOLOGY = re.compile(r"^(?P<chip>[a-z0-9]+):(?P<dims>\d+(x\d+){1,2})$")
_CPU = re.compile(r"^cpu(:(?P<n>\d+))?$")


@dataclasses.dataclass
class Target:
    """Devices to compile for. ``chips``: physical chips (a v4 chip may show as 2 devices);
    ``hbm_bytes``: memory per device (None: unknown, nothing is checked)."""

    name: str
    devices: list
    chips: int
    hbm_bytes: int | None
    kind: str


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def resolve_target(topology: str | None, hbm_gib: float | None = None) -> Target:
    """``compile.topology`` -> the devices to compile for; UserError / ConfigError (one line)
    for a name that is not a topology, an unknown chip or a missing libtpu."""
    hbm_override = int(float(hbm_gib) * GIB) if hbm_gib else None
    if topology in (None, ""):
        devices = jax.devices()
        return Target("local", devices, len(devices), hbm_override, devices[0].device_kind)
    m = _CPU.match(topology)
    if m:
        n = int(m.group("n") or len(jax.devices("cpu")))
        have = jax.devices("cpu")
        if n > len(have):
            raise ConfigError(
                f"config.compile.topology={topology!r} asks for {n} CPU devices but JAX has "
                f"{len(have)}: set XLA_FLAGS=--xla_force_host_platform_device_count={n} before "
                "starting."
            )
        return Target(topology, have[:n], n, hbm_override, "cpu")
    m = _TOPOLOGY.match(topology)
    if not m or (m.group("chip") not in HBM_GIB_PER_CHIP and hbm_override is None):
        raise ConfigError(
            f"config.compile.topology={topology!r} is not a topology this job knows: expected "
            f"CHIP:AxB[xC] with CHIP in {sorted(HBM_GIB_PER_CHIP)} (e.g. v5e:4x4, v4:2x2x1, "
            "v5p:2x2x1, v6e:2x2; another chip with config.compile.hbm_gib) or cpu:N."
        )
    if not libtpu_available():
        raise UserError(
            f"config.compile.topology={topology!r} compiles with the TPU compiler, which needs "
            f"libtpu (not installed here); install it in a separate venv: {TPU_INSTALL}"
        )
    from jax.experimental import topologies

    try:
        # v4 and v5p chips hold two TensorCores: one device per chip ("megacore", as MaxText's
        # train_compile.py asks for), else jax.make_mesh refuses the second core's device.
        chip_config = "megacore" if m.group("chip") in MEGACORE_CHIPS else "default"
        devices = list(
            topologies.get_topology_desc(
                topology, platform="tpu", chip_config_name=chip_config
            ).devices
        )
    except Exception as e:  # noqa: BLE001 - libtpu's own message names what it rejects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "lockfile" in first:  # another process holds libtpu (one per machine by default)
            raise UserError(
                f"config.compile.topology={topology!r}: libtpu is in use by another process on "
                "this machine; wait for it, or run with ALLOW_MULTIPLE_LIBTPU_LOAD=1 (compiling "
                "only, no TPU is attached)."
            ) from None
        raise ConfigError(
            f"config.compile.topology={topology!r} was refused by libtpu ({first}); use a "
            "topology of a real slice, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2."
        ) from None
    chips = math.prod(int(d) for d in m.group("dims").split("x"))
    per_chip = max(1, len(devices) // chips)
    hbm = hbm_override or int(HBM_GIB_PER_CHIP[m.group("chip")] * GIB / per_chip)
    return Target(topology, devices, chips, hbm, devices[0].device_kind)


# ----------------------------------------------------------------------------------------------
# The programs, from abstract shapes


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def memory(compiled) -> dict:
    """Per-device bytes of a compiled program (``memory_analysis``) and their peak estimate."""
    m = compiled.memory_analysis()
    keys = ("argument", "output", "alias", "temp", "generated_code")
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) if m else 0 for k in keys}
    out["peak"] = (
        out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    )
    return out


def flops(compiled) -> float | None:
    """FLOPs of one call of the per-device program (``cost_analysis``); None if unknown."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends have none
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if value is not None and value >= 0 else None


def compile_train_step(config, model, mesh, per_device_batch: int):
    """AOT-compiles the configured train step for ``mesh`` at ``per_device_batch`` images per batch
    shard (global batch = that x mesh data x fsdp). Returns (compiled, seconds)."""
    from nag_jax.training import step as step_lib
    from nag_jax.training.loop import init_params_fn
    from nag_jax.training.state import create_optimizer, init_state

    rng = jax.random.PRNGKey(int(config.seed))
    init_key, state_key = jax.random.split(rng)  # as training.loop.setup_state
    params = jax.eval_shape(init_params_fn(config, model), init_key)
    tx = create_optimizer(config.optim, params)
    state = jax.eval_shape(lambda p: init_state(p, tx, state_key), params)
    shardings = parallel.tree_shardings(
        state, mesh, fsdp_min_size=int(config.parallel.fsdp_min_size)
    )
    fn = step_lib.jit_train_step_from_config(config, model, shardings, mesh, tx)
    n = per_device_batch * parallel.batch_shards(mesh)
    s, c = int(config.model.input_size), int(config.model.in_channels)
    batch_sharding = parallel.batch_sharding(mesh)
    batch = {
        "x": jax.ShapeDtypeStruct((n, s, s, c), jnp.float32, sharding=batch_sharding),
        "y": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sharding),
    }
    t0 = time.perf_counter()
    compiled = fn.lower(_abstract(state, shardings), batch).compile()
    return compiled, time.perf_counter() - t0


def compile_sampler(config, model, mesh):
    """AOT-compiles ``build_sampler(config, model)`` at ``sample.batch_size`` (padded to the batch
    shards) with the params sharded as the sampling jobs shard them. Returns (compiled, seconds,
    global batch)."""
    from nag_jax.sampling import build
    from nag_jax.training.loop import init_params_fn

    params = jax.eval_shape(init_params_fn(config, model), jax.random.PRNGKey(0))
    if float(config.sample.dog_scale) != 1.0:
        params = {"main": params, "domain": params}
    shardings = parallel.tree_shardings(params, mesh)
    shards = parallel.batch_shards(mesh)
    n = max(shards, -(-int(config.sample.batch_size) // shards) * shards)
    bs = parallel.batch_sharding(mesh)
    keys = jax.ShapeDtypeStruct((n,), jax.random.key(0).dtype, sharding=bs)
    y = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=bs)
    fn = jax.jit(
        build.build_sampler(config, model), in_shardings=(shardings, bs, bs), out_shardings=bs
    )
    t0 = time.perf_counter()
    compiled = fn.lower(_abstract(params, shardings), keys, y).compile()
    return compiled, time.perf_counter() - t0, n


# ----------------------------------------------------------------------------------------------
# Report


def _gb(b) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"


def row(program: str, compiled, seconds: float, target: Target, **extra) -> dict:
    mem = memory(compiled)
    f = flops(compiled)
    r = dict(program=program, **extra, compile_s=round(seconds, 1), bytes_per_device=mem)
    r["flops_per_device"] = f
    r["flops_total"] = f * len(target.devices) if f is not None else None
    r["hbm_bytes_per_device"] = target.hbm_bytes
    r["fits"] = None if target.hbm_bytes is None else mem["peak"] <= target.hbm_bytes
    return r


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # XLA's HumanReadableNumBytes
_OOM = re.compile(r"temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def compiler_oom(error: Exception) -> dict | None:
    """The TPU compiler refuses a program whose temporaries exceed the HBM (RESOURCE_EXHAUSTED):
    its first line, and the bytes it names (temporaries required, HBM available) when given;
    None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    line = next((s for s in text.splitlines() if "memory" in s.lower()), text.splitlines()[0])
    out = {"compiler_error": line.strip()[:400]}
    m = _OOM.search(text)
    if m:
        out["temp_required_bytes"] = int(float(m.group(1)) * _UNITS[m.group(2)])
        out["hbm_available_bytes"] = int(float(m.group(3)) * _UNITS[m.group(4)])
    return out


def train_row(config, model, mesh, b: int, target: Target) -> dict:
    """The train step's row at per-device batch ``b``; a compiler out-of-memory is a row with
    ``fits=False`` and no bytes (other errors raise)."""
    shards = parallel.batch_shards(mesh)
    try:
        compiled, seconds = compile_train_step(config, model, mesh, b)
    except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory is a result
        oom = compiler_oom(e)
        if oom is None:
            raise
        return dict(
            program="train",
            per_device_batch=b,
            global_batch=b * shards,
            compile_s=None,
            bytes_per_device=None,
            flops_per_device=None,
            flops_total=None,
            hbm_bytes_per_device=target.hbm_bytes,
            fits=False,
            **oom,
        )
    r = row("train", compiled, seconds, target, per_device_batch=b, global_batch=b * shards)
    del compiled
    return r


def peak_points(rows: list[dict]) -> list[tuple[int, int]]:
    """(per-device batch, peak bytes) of the train rows, largest batch first: compiled rows as
    measured; a compiler out-of-memory row estimated from a compiled row as that row's peak with
    its temporaries replaced by those the compiler asked for."""
    compiled = [r for r in rows if r["bytes_per_device"] is not None]
    points = {r["per_device_batch"]: r["bytes_per_device"]["peak"] for r in compiled}
    for r in rows:
        if r["bytes_per_device"] is None and "temp_required_bytes" in r and compiled:
            ref = compiled[0]["bytes_per_device"]
            points[r["per_device_batch"]] = ref["peak"] - ref["temp"] + r["temp_required_bytes"]
    return sorted(points.items(), reverse=True)


def format_row(r: dict, target: Target) -> str:
    m = r["bytes_per_device"]
    if m is None:
        return f"{r['program']:<10} batch/chip {r['per_device_batch']:>4}  {r['compiler_error']}"
    hbm = f" of {_gb(target.hbm_bytes)} HBM" if target.hbm_bytes else ""
    f = f"{r['flops_total'] / 1e12:.2f} TFLOP" if r["flops_total"] is not None else "? FLOP"
    return (
        f"{r['program']:<10} batch/chip {r['per_device_batch']:>4}  args {_gb(m['argument'])}  "
        f"out {_gb(m['output'])}  aliased {_gb(m['alias'])}  temp {_gb(m['temp'])}  "
        f"code {_gb(m['generated_code'])}  peak {_gb(m['peak'])}{hbm}  {f}/step  "
        f"compile {r['compile_s']:.1f}s"
    )


def largest_batch(b1: int, peak1: int, b2: int, peak2: int, hbm: int) -> int:
    """Largest per-device batch b with peak(b) <= hbm, peak linear in b through the two compiles
    (0 when even the fixed part does not fit)."""
    slope = (peak1 - peak2) / (b1 - b2)
    fixed = peak1 - slope * b1
    if slope <= 0:
        return b1 if peak1 <= hbm else 0
    return max(0, int(math.floor((hbm - fixed) / slope)))


def does_not_fit_message(config, target, mesh, b: int, peak: int | None, b_max: int, b2: int):
    name, hbm = config.model.name, target.hbm_bytes
    shards = parallel.batch_shards(mesh)
    gbs = b * shards
    parts = []
    if b_max >= 1:
        parts.append(
            f"per-chip batch <= {b_max} fits (global {b_max * shards}; linear extrapolation "
            f"from the compiler's bytes at {b2} and {b})"
        )
        per_chip = max(1, len(target.devices) // target.chips)  # v4: 2 devices a chip
        devices = -(-gbs // b_max) * (len(target.devices) // shards)  # x the tensor axis
        chips = -(-devices // per_chip)
        parts.append(f"or global {gbs} on >= {chips} chips")
    else:
        parts.append(
            f"not even per-chip batch 1 fits (extrapolated from batches {b2} and {b}): "
            "more chips (FSDP shards the state)"
        )
    if not config.model.remat:
        parts.append("or model.remat=True (recomputes each block's activations)")
    need = f"~{_gb(peak)}" if peak else "more than the HBM"
    return (
        f"{name} train step at per-chip batch {b} (global {gbs}) needs {need} per chip on "
        f"{target.name} ({target.kind}, {_gb(hbm)} HBM): does not fit; " + ", ".join(parts) + "."
    )


def shrink_until_two_points(config, model, mesh, b: int, target: Target, rows: list[dict]):
    """After the train step at per-device batch ``b`` did not fit (``rows`` holds its row), compile
    it at b/2, then b/4, until two batches give peak bytes (`peak_points`); appends those rows.
    Returns (largest fitting per-device batch, the second batch used, peak at ``b`` or None):
    the extrapolation uses the compiler's own "available HBM" when it refused a batch (v5e: 15.75
    GiB of 16)."""
    tries = [b // 2, b // 4] if b > 1 else [2]
    for b2 in dict.fromkeys(max(1, v) for v in tries if v != b):
        rows.append(train_row(config, model, mesh, b2, target))
        if len(peak_points(rows)) >= 2:
            break
    points = peak_points(rows)
    if len(points) < 2:
        return 0, rows[-1]["per_device_batch"], None
    (b1, p1), (b2, p2) = points[0], points[1]
    said = [r["hbm_available_bytes"] for r in rows if "hbm_available_bytes" in r]
    return largest_batch(b1, p1, b2, p2, min([target.hbm_bytes] + said)), b2, dict(points).get(b)
