"""Shared timing, FLOP and memory helpers of the benchmark scripts (sampler, train, vae,
accelerator_check): one way to compile ahead of time, time a call, count FLOPs and read MFU.

Timing rules: compile before the clock (``aot_compile`` reports its seconds apart), one untimed
warm-up call (allocations, autotuning), then ``repeats`` timed calls, each blocked on its result.
Wall seconds and this process's CPU seconds are both kept: on a shared CPU the wall time includes
waiting for cores, the CPU time does not.

FLOP counts are per image and per network forward (one branch). ``transformer_forward_flops`` is
the analytic matmul count of the DiT/SiT backbone (237.2 GFLOP for XL/2 on 32x32x4 latents, the
DiT paper's 118.6 "Gflops" being multiply-adds); ``xla_flops`` reads XLA's cost analysis of a
compiled call, as a cross-check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

import jax

# NVIDIA H200 SXM datasheet (nvidia.com/en-us/data-center/h200, "H200 SXM" column): BF16 Tensor
# Core 1,979 TFLOPS *with sparsity*; dense is half of it. The same chip rate as the H100 SXM.
PEAK_BF16_DENSE_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4}


def report_header(benchmark: str, args) -> dict:
    """The head of a benchmark's JSON report: what was measured, on which devices and platform,
    with which JAX, and the script's settings (``vars(args)``); add the results after it."""
    import platform

    return dict(
        benchmark=benchmark,
        device=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        platform=platform.platform(),
        jax=jax.__version__,
        settings=dict(vars(args)),
    )


def emit_json(report: dict, out: str | None) -> None:
    """Prints a benchmark's JSON report and, when ``out`` is given, also writes it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")


def peak_bf16_tflops(device_kind: str) -> float | None:
    """Datasheet dense bf16 peak (TFLOP/s) of a device kind, or None when not tabled."""
    return PEAK_BF16_DENSE_TFLOPS.get(device_kind)


def aot_compile(fn: Callable, *args, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs).lower(*args).compile()`` and its wall seconds."""
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - start


@dataclasses.dataclass
class Timing:
    """Wall and process-CPU seconds of each timed call."""

    walls: list[float]
    cpus: list[float]

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    def summary(self, items: int | None = None, unit: str = "images") -> dict:
        """JSON row: every wall time, best, median, CPU s per call, ``{unit}_per_s`` of median."""
        row = {
            "wall_s": [round(w, 5) for w in self.walls],
            "best_s": round(self.best, 5),
            "median_s": round(self.median, 5),
            "cpu_s_per_call": round(statistics.median(self.cpus), 5),
        }
        if items is not None:
            row[f"{unit}_per_s"] = items / self.median
        return row


def time_calls(call: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Times ``call()`` (its result blocked on) ``repeats`` times after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; time at least one call.")
    for _ in range(warmup):
        jax.block_until_ready(call())
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(call())
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return Timing(walls, cpus)


def xla_flops(compiled) -> float:
    """FLOPs of one call of a compiled function from XLA's cost analysis (0.0 if not given)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def transformer_forward_flops(model) -> float:
    """Analytic FLOPs (2 per multiply-add) of one DiT/SiT forward, per image.

    Per block on T tokens of width D (MLP ratio r): qkv 6TD^2, attention scores and values 4T^2D,
    projection 2TD^2, MLP 4rTD^2, adaLN 12D^2; plus the patch conv 2T p^2 C D, the final adaLN
    4D^2 and linear 2TD p^2 C_out, the time MLP 2(256 D + D^2). Elementwise work is not counted.
    """
    d, p = model.hidden_size, model.patch_size
    tokens = (model.input_size // p) ** 2
    mlp = int(d * model.mlp_ratio)
    block = 8 * tokens * d * d + 4 * tokens * mlp * d + 4 * tokens * tokens * d + 12 * d * d
    embed = 2 * tokens * p * p * model.in_channels * d + 2 * (256 * d + d * d)
    final = 4 * d * d + 2 * tokens * d * p * p * model.out_channels
    return float(model.depth * block + embed + final)


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: ``flops / seconds`` over the peak (None without a peak)."""
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)


def peak_memory_bytes(device=None) -> int | None:
    """``peak_bytes_in_use`` of the device's allocator (None where the backend reports none)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (CPU backends raise or return None)
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def train_steps(config, mesh, batch, steps: int):
    """(run, compile seconds, model) for ``config``'s jitted, donated train step on ``batch``
    (``nag_jax.training.step.jit_train_step_from_config``, fresh state): ``run()`` makes
    ``steps`` steps, carrying the state between calls, blocks on the last metrics and returns
    them. Compiled ahead of time (the seconds apart), not yet run."""
    from nag_jax.sampling import build
    from nag_jax.training import step as step_lib
    from nag_jax.training.loop import setup_state

    model = build.build_model(config.model)
    state, shardings, tx = setup_state(config, model, mesh)
    fn = step_lib.jit_train_step_from_config(config, model, shardings, mesh, tx)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        for _ in range(steps):
            holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)
        return metrics

    return run, compile_s, model


def step_variants(attention: list, dense: list, cpu_dots: list = (None,)) -> list[dict]:
    """Config overrides (dotted keys) to time side by side: the first attention, dense and CPU
    dot-library choices together (the headline), then each other choice of one of them with the
    headline's others. Entries are names of ``nag_jax.models.attention`` /
    ``nag_jax.models.linear`` implementations and ``train.cpu_dot_library`` choices,
    None for the platform's default."""
    head = {
        "model.attention_impl": attention[0],
        "model.dense_impl": dense[0],
        "train.cpu_dot_library": cpu_dots[0],
    }
    return (
        [head]
        + [dict(head, **{"model.attention_impl": a}) for a in attention[1:]]
        + [dict(head, **{"model.dense_impl": d}) for d in dense[1:]]
        + [dict(head, **{"train.cpu_dot_library": c}) for c in cpu_dots[1:]]
    )


def apply_variant(config, variant: dict) -> None:
    """Sets a `step_variants` entry's dotted keys on ``config`` in place."""
    for dotted, value in variant.items():
        section, key = dotted.split(".")
        config[section][key] = value


def variant_label(model, config, mesh) -> str:
    """A variant's resolved choices as its label: "attention=explicit dense=transposed_input
    cpu_dots=onednn" (cpu_dots "-" off CPU)."""
    from nag_jax.training.step import compiler_options

    dots = "-"
    if mesh.devices.flat[0].platform == "cpu":
        opts = compiler_options(config.train.get("cpu_dot_library"), mesh)
        dots = "onednn" if opts else "xla"
    return f"attention={model.attention_impl} dense={model.dense_impl} cpu_dots={dots}"
