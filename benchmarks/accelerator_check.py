"""Accelerator check: one command that proves the project on a GPU (sized for one H200, <= 8 min).

    bash benchmarks/accelerator_check.sh                 # on the GPU machine (bootstrap + this)
    python benchmarks/accelerator_check.py --out DIR      # the same, packages already there
    python benchmarks/accelerator_check.py --smoke --out /tmp/acc   # every part, tiny, CPU, seconds

Writes ``DIR/accelerator_check.json`` (rewritten after every measured row, so a timeout keeps what
was measured) and ``DIR/accelerator_check.log``. DIR defaults to ``$OUT`` when set, else
``benchmarks/results/accelerator/<device kind>``. Parts, in this order (``--parts`` selects):

1. ``environment``: devices, jax / jaxlib / CUDA versions, packages, nvidia-smi, and the two
   ceilings measured here: a bf16 matrix product (TFLOP/s) and a device copy (TB/s).
2. ``numerics``: SiT-S/2 and DiT-S/2 float32 forward on the accelerator vs the CPU (relative
   error ||a - b|| / ||b||, default and "highest" matmul precision); bfloat16 compute vs float32
   (forward, and a 50-step SDE CFG+NAG sample); ``attention_impl="cudnn"`` vs XLA.
3. ``sampler``: SiT-XL/2, bf16, 32x32x4 latents, SDE Euler-Maruyama, batch 256 and 64, 1/2/3
   branches (none, CFG, CFG+NAG), fused (the project's one call per step) vs one call per
   branch. Each sampler runs ``steps`` network steps per timed call (the scan is compiled once,
   so time per step is constant); images/s for SDE-250 = batch / (time per step x 250). MFU
   against ``GFLOP_PER_FORWARD`` (237 GFLOP per image per branch-forward, SiT-XL/2). Compile
   time apart. Then forward-only diagnostics at batch 768: XLA vs cuDNN attention, unrolled vs
   scanned blocks (``DiT.scan_blocks``).
4. ``train``: SiT-XL/2 NAG train step (the project's jitted, donated step: bf16 compute, f32
   params, AdamW, EMA), per-device batch 64 and 32, without and with remat: steps/s, MFU
   (3 x forward FLOPs per example, remat's recompute not counted), memory (XLA's memory
   analysis of the step, and the allocator's process peak).
5. ``train_vs_pytorch``: the SiT release's PyTorch train loop against the project's step on the
   same work (SiT-S/2, 32x32x4, batch 32, float32, AdamW + EMA; benchmarks/vs_pytorch.py part
   train): seconds per step, the ratio, GFLOP/s against measured matmul ceilings. Needs torch
   with CUDA on a GPU (recorded as skipped otherwise).
6. ``ddpm``: DiT-XL/2 DDPM with CFG+NAG (3 branches), images/s of DDPM-250 from the time per
   step of a shorter respaced run (same network batch every step).
7. ``vae``: SD-VAE decode at batch 64 (benchmarks/vae.py's measurement), bf16 then f32.

Every item is timed after an untimed warm-up call; the median of ``repeats`` calls is used.
Budgets: a global deadline (``--deadline``, seconds from start) and a per-part budget; a part may
use time left over by earlier parts but not the budgets of the parts after it. An item that would
not fit (estimated from the items before it) is recorded under ``skipped`` with the reason, never
silently dropped. A failing item records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import json
import logging
import os
import platform
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("environment", "numerics", "sampler", "train", "train_vs_pytorch", "ddpm", "vae")

# 237 GFLOP per image per branch-forward of SiT-XL/2 / DiT-XL/2 on 32x32x4 latents: the DiT paper's
# 118.6 GFLOPs are multiply-adds; benchmarks.timing.transformer_forward_flops counts 237.2e9.
GFLOP_PER_FORWARD = 237.0

# name -> sizes. "full" is sized for one H200 in under 8 minutes; "smoke" runs the same code on a
# CPU in seconds (tiny widths, depths and batches; overrides go to build.build_model).
TINY = dict(hidden_size=32, depth=2, num_heads=2)
SIZES = {
    "full": dict(
        deadline=450.0,
        budgets=dict(
            environment=25,
            numerics=70,
            sampler=150,
            train=105,
            train_vs_pytorch=30,
            ddpm=40,
            vae=30,
        ),
        env=dict(matmul=8192, copy_mib=2048),
        numerics=dict(
            models=("SiT-S/2", "DiT-S/2"),
            overrides={},
            input_size=32,
            batch=8,
            sample_steps=50,
            precisions=("default", "highest"),
            xl_check="SiT-XL/2",
        ),
        sampler=dict(
            model="SiT-XL/2",
            overrides={},
            input_size=32,
            batches=(256, 64),
            steps=8,
            repeats=2,
            full_steps=250,
        ),
        train=dict(
            model="SiT-XL/2", overrides={}, input_size=32, batches=(64, 32), steps=8, repeats=1
        ),
        train_vs_pytorch=dict(
            size="S", overrides={}, input_size=32, batch=32, steps=5, repeats=2, ceiling_n=4096
        ),
        ddpm=dict(
            model="DiT-XL/2",
            overrides={},
            input_size=32,
            batch=256,
            steps=6,
            full_steps=250,
            repeats=2,
        ),
        vae=dict(batch=64, latent_size=32, config=None, dtypes=("bfloat16", "float32"), repeats=3),
    ),
    "smoke": dict(  # generous: the smoke run must reach every item even on a loaded CI machine
        deadline=4200.0,  # the sum of the budgets below: every part keeps its own
        budgets=dict(
            environment=600,
            numerics=600,
            sampler=600,
            train=600,
            train_vs_pytorch=600,
            ddpm=600,
            vae=600,
        ),
        env=dict(matmul=128, copy_mib=4),
        numerics=dict(
            models=("SiT-S/2", "DiT-S/2"),
            overrides=TINY,
            input_size=8,
            batch=2,
            sample_steps=4,
            precisions=("highest",),  # = the CPU reference's program: one compile less
            xl_check=None,
        ),
        sampler=dict(
            model="SiT-S/2",
            overrides=dict(TINY, depth=1),
            input_size=8,
            batches=(4,),
            steps=3,
            repeats=1,
            full_steps=250,
        ),
        train=dict(
            model="SiT-S/2", overrides=dict(TINY, depth=1), input_size=8, batches=(4,), steps=2
        ),
        train_vs_pytorch=dict(
            size="S",
            overrides=dict(TINY, depth=1),
            input_size=8,
            batch=2,
            steps=1,
            repeats=1,
            ceiling_n=128,
        ),
        ddpm=dict(
            model="DiT-S/2",
            overrides=dict(TINY, depth=1),
            input_size=8,
            batch=2,
            steps=3,
            full_steps=250,
        ),
        vae=dict(
            batch=2,
            latent_size=4,
            config=dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4),
            dtypes=("bfloat16", "float32"),
            repeats=1,
        ),
    ),
}
CHANNELS = 4
# --smoke: LLVM's optimisation passes are most of a CPU compile; the smoke run times nothing that
# matters, so it skips them (about 2.5x faster compiles, measured side by side on this CPU).
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
BRANCH_SETTINGS = {1: (1.0, 0.0), 2: (1.5, 0.0), 3: (1.5, 1.0)}  # branches -> (s_cfg, w_nag)

log = logging.getLogger("accelerator_check")


# ---------------------------------------------------------------------------------------------
# Report, budget


class Report:
    """The JSON document; ``save()`` rewrites it atomically (called after every row)."""

    def __init__(self, out_dir: str, argv):
        self.path = os.path.join(out_dir, "accelerator_check.json")
        self.data = {
            "benchmark": "accelerator_check",
            "argv": list(argv),
            "started": datetime.datetime.now(datetime.UTC).isoformat(),
            "parts": {},
        }

    def part(self, name: str) -> dict:
        return self.data["parts"].setdefault(
            name, {"status": "running", "rows": [], "skipped": [], "errors": []}
        )

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=_json_default)
        os.replace(tmp, self.path)


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


class Budget:
    """Global deadline plus per-part budgets; later parts keep their budgets reserved."""

    def __init__(self, deadline: float, budgets: dict, parts, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.deadline = float(deadline)
        self.budgets = budgets
        self.parts = list(parts)
        self.part_end = self.deadline
        self.part_name = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def start(self, part: str):
        later = self.parts[self.parts.index(part) + 1 :]
        self.part_name = part
        self.part_end = self.deadline - sum(float(self.budgets.get(p, 0)) for p in later)

    def skip_reason(self, estimate_s: float = 0.0) -> str | None:
        """Why the next item (estimated ``estimate_s``) must be skipped, or None."""
        now = self.elapsed()
        if now + estimate_s > self.part_end:
            return (
                f"budget: {now:.0f}s spent, next item estimated {estimate_s:.0f}s, part "
                f"'{self.part_name}' must end by {self.part_end:.0f}s (global deadline "
                f"{self.deadline:.0f}s minus the budgets of the later parts)"
            )
        return None


class Part:
    """One part's rows, skips and errors; ``item()`` runs a measurement under the budget."""

    def __init__(self, name: str, report: Report, budget: Budget):
        self.name, self.report, self.budget = name, report, budget
        self.rec = report.part(name)
        self.last_cost = 0.0
        self.t0 = time.perf_counter()

    def item(self, label: str, fn, *, estimate: float | None = None, **meta):
        est = self.last_cost if estimate is None else estimate
        reason = self.budget.skip_reason(est)
        if reason is not None:
            self.skip(label, reason)
            return None
        t0 = time.perf_counter()
        try:
            row = fn()
            if row is not None:
                row = {"item": label, **meta, **row}
        except Exception as e:  # noqa: BLE001  (record and go on: one failure must not end the run)
            self.rec["errors"].append(
                dict(item=label, error=f"{type(e).__name__}: {e}"[:2000], traceback=_tb())
            )
            log.error("%s / %s failed: %s", self.name, label, e)
            self.report.save()
            return None
        finally:
            self.last_cost = time.perf_counter() - t0
        if row is None:
            return None
        row["item_wall_s"] = round(self.last_cost, 2)
        self.rec["rows"].append(row)
        log.info("%s / %s: %s", self.name, label, _short(row))
        self.report.save()
        return row

    def skip(self, label: str, reason: str):
        self.rec["skipped"].append(dict(item=label, reason=reason))
        log.warning("%s / %s skipped: %s", self.name, label, reason)
        self.report.save()

    def finish(self):
        rec = self.rec
        rec["wall_s"] = round(time.perf_counter() - self.t0, 2)
        if rec["rows"] and not (rec["skipped"] or rec["errors"]):
            rec["status"] = "ok"
        elif rec["rows"]:
            rec["status"] = "partial"
        elif rec["errors"]:
            rec["status"] = "error"
        else:
            rec["status"] = "skipped"
        self.report.save()


def _tb() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-12:])


def _short(row: dict) -> str:
    keep = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
    return json.dumps(keep, default=_json_default)[:600]


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _imports():
    """The project modules every part uses (imported after the platform is chosen)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import timing
    from benchmarks.sampler import make_config, per_branch_sampler
    from nag_jax.sampling import build

    return jax, jnp, np, timing, build, make_config, per_branch_sampler


def per_image_keys(key, indices):
    """nag_jax.sampling.generate.per_image_keys (image identity), imported after the platform."""
    from nag_jax.sampling import generate

    return generate.per_image_keys(key, indices)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64 (Frobenius norms over all elements)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_params(model, seed: int, scale: float = 0.02):
    """Every parameter N(0, scale^2) (0.02 is about the releases' Xavier scale at XL width; a fresh
    model's adaLN-Zero output would be exactly 0). Shapes from ``jax.eval_shape(model.init)`` and
    ONE normal draw split into the leaves: compiling ``model.init`` itself takes minutes on a CPU
    for B-sized models (thousands of small RNG ops), this takes a second."""
    import math

    import jax
    import jax.numpy as jnp

    s = model.input_size
    x = jnp.zeros((1, s, s, model.in_channels))
    shapes = jax.eval_shape(
        lambda k: model.init(k, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"],
        jax.random.key(0),
    )
    leaves, tree = jax.tree.flatten(shapes)
    sizes = [math.prod(leaf.shape) for leaf in leaves]

    def make(key):
        flat = scale * jax.random.normal(key, (sum(sizes),), jnp.float32)
        out, start = [], 0
        for leaf, n in zip(leaves, sizes):
            out.append(flat[start : start + n].reshape(leaf.shape).astype(leaf.dtype))
            start += n
        return jax.tree.unflatten(tree, out)

    return jax.jit(make)(jax.random.key(seed))


def model_inputs(model, batch: int, family: str, seed: int = 0):
    """x (N, H, W, C) standard normal, t in the family's convention, y labels (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s = model.input_size
    x = rng.standard_normal((batch, s, s, model.in_channels)).astype(np.float32)
    if family == "SiT":
        t = rng.uniform(0.0, 1.0, batch).astype(np.float32)
    else:
        t = rng.integers(0, 1000, batch).astype(np.float32)
    y = rng.integers(0, model.num_classes, batch).astype(np.int32)
    return x, t, y


def _config(make_config, name, size, steps, cfg, nag, dtype, overrides, sampler=None):
    return make_config(name, size, CHANNELS, steps, cfg, nag, dtype, sampler=sampler, **overrides)


def _save_hlo(out_dir: str, name: str, compiled) -> str | None:
    """Gzipped optimised HLO of a compiled program (what XLA fused, which kernels it called)."""
    try:
        text = compiled.as_text()
    except Exception:  # noqa: BLE001
        return None
    path = os.path.join(out_dir, f"{name}.hlo.txt.gz")
    with gzip.open(path, "wt") as f:
        f.write(text)
    return os.path.basename(path)


# ---------------------------------------------------------------------------------------------
# 1. environment


def part_environment(p: Part, sizes: dict, ctx: dict):
    jax, jnp, np, timing, *_ = _imports()
    import importlib.metadata as md

    def versions():
        names = (
            "jax",
            "jaxlib",
            "flax",
            "optax",
            "orbax-checkpoint",
            "ml_collections",
            "numpy",
            "scipy",
        )
        out = {}
        for n in names:
            try:
                out[n] = md.version(n)
            except md.PackageNotFoundError:
                out[n] = None
        for dist in md.distributions():
            n = (dist.metadata["Name"] or "").lower()
            if n.startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu", "nvidia-cudnn")):
                out[n] = dist.version
        return out

    def missing_modules():
        import importlib

        out = []
        for mod in ("flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "scipy"):
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001
                out.append(f"{mod}: {type(e).__name__}: {e}")
        return out

    def devices():
        devs = jax.devices()
        try:
            platform_version = devs[0].client.platform_version  # e.g. "cuda 12080"
        except Exception as e:  # noqa: BLE001
            platform_version = f"unknown ({e})"
        mem = None
        with contextlib.suppress(Exception):
            mem = devs[0].memory_stats()
        return dict(
            backend=jax.default_backend(),
            device_count=jax.device_count(),
            devices=[f"{d.platform}:{d.id} {d.device_kind}" for d in devs],
            device_kind=devs[0].device_kind,
            platform_version=platform_version,
            bytes_limit=(mem or {}).get("bytes_limit"),
            python=sys.version.split()[0],
            platform=platform.platform(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            versions=versions(),
            missing_modules=missing_modules(),
            peak_bf16_dense_tflops=ctx["peak_tflops"],
            peak_source=(
                "NVIDIA H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity, dense = half "
                "(benchmarks/timing.py PEAK_BF16_DENSE_TFLOPS)"
            ),
        )

    p.item("devices", devices)

    def nvidia_smi():
        import shutil
        import subprocess

        if not shutil.which("nvidia-smi"):
            p.skip("nvidia_smi", "skipped: nvidia-smi not on PATH")
            return None
        q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return dict(query=q, answer=out.stdout.strip(), stderr=out.stderr.strip()[:500])

    p.item("nvidia_smi", nvidia_smi)

    def matmul():
        n = int(sizes["matmul"])
        k1, k2 = jax.random.split(jax.random.key(0))
        a = jax.random.normal(k1, (n, n), jnp.bfloat16)
        b = jax.random.normal(k2, (n, n), jnp.bfloat16)
        compiled, compile_s = timing.aot_compile(jnp.matmul, a, b)
        t = timing.time_calls(lambda: compiled(a, b), repeats=10, warmup=2)
        tflops = 2 * n**3 / t.median / 1e12
        return dict(
            n=n,
            compile_s=compile_s,
            **t.summary(),
            tflops=tflops,
            fraction_of_peak=timing.mfu(2 * n**3, t.median, ctx["peak_tflops"]),
        )

    row = p.item("bf16_matmul_ceiling", matmul)
    if row:
        ctx["measured_matmul_tflops"] = row["tflops"]

    def copy():
        n = int(sizes["copy_mib"]) * 2**20 // 2
        x = jax.random.normal(jax.random.key(1), (n,), jnp.bfloat16)
        compiled, _ = timing.aot_compile(lambda v: v + jnp.bfloat16(1), x)
        t = timing.time_calls(lambda: compiled(x), repeats=10, warmup=2)
        return dict(mib=sizes["copy_mib"], **t.summary(), tb_per_s=2 * 2 * n / t.median / 1e12)

    p.item("copy_bandwidth", copy)


# ---------------------------------------------------------------------------------------------
# 2. numerics


def part_numerics(p: Part, sizes: dict, ctx: dict):
    jax, jnp, np, timing, build, make_config, _ = _imports()
    cpu = jax.devices("cpu")[0]
    acc = jax.devices()[0]
    size, n, ov = int(sizes["input_size"]), int(sizes["batch"]), sizes["overrides"]
    note = dict(accelerator=f"{acc.platform}:{acc.device_kind}", reference="cpu float32 highest")

    jitted = {}

    def forward(model, params, inputs, device, precision=None):
        params, inputs = jax.device_put((params, inputs), device)
        if model not in jitted:
            jitted[model] = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
        with jax.default_matmul_precision(precision):
            return np.asarray(jitted[model](params, *inputs))

    for name in sizes["models"]:
        family = name.split("-")[0]

        def gpu_vs_cpu(name=name, family=family):
            cfg = _config(make_config, name, size, 2, 1.0, 0.0, "float32", ov)
            model = build.build_model(cfg.model)
            params = jax.device_get(random_params(model, seed=1))
            inputs = model_inputs(model, n, family)
            ref = forward(model, params, inputs, cpu, "highest")
            row = dict(note, model=name, out_norm=float(np.linalg.norm(ref)))
            for prec in sizes["precisions"]:
                out = forward(model, params, inputs, acc, None if prec == "default" else prec)
                row[f"rel_err_{prec}_precision"] = rel_err(out, ref)
            return row

        p.item(f"f32_forward_accelerator_vs_cpu {name}", gpu_vs_cpu)

    name = sizes["models"][0]
    steps = int(sizes["sample_steps"])

    def bf16_vs_f32():
        rows = {}
        c32 = _config(make_config, name, size, steps, 1.5, 1.0, "float32", ov)
        c16 = _config(make_config, name, size, steps, 1.5, 1.0, "bfloat16", ov)
        m32, m16 = build.build_model(c32.model), build.build_model(c16.model)
        params = random_params(m32, seed=2)
        inputs = jax.device_put(model_inputs(m32, n, "SiT"))
        ref = forward(m32, params, inputs, acc, "highest")
        rows["forward_rel_err"] = rel_err(forward(m16, params, inputs, acc), ref)
        keys = per_image_keys(jax.random.key(3), np.arange(n))
        y = jnp.asarray(inputs[2])
        with jax.default_matmul_precision("highest"):
            s32 = jax.jit(build.build_sampler(c32, m32))(params, keys, y)
        s16 = jax.jit(build.build_sampler(c16, m16))(params, keys, y)
        rows["sample_rel_err"] = rel_err(s16, s32)
        rows["sample_norm"] = float(np.linalg.norm(np.asarray(s32)))
        rows["sample_finite"] = bool(np.isfinite(np.asarray(s16)).all())
        return dict(model=name, sampler=f"SDE Euler {steps} steps, s_cfg 1.5, w_nag 1", **rows)

    p.item(f"bf16_vs_f32 {name}", bf16_vs_f32)

    def cudnn_vs_xla():
        if acc.platform != "gpu":
            p.skip(
                "cudnn_vs_xla", f"skipped: cuDNN attention needs a CUDA GPU (have {acc.platform})"
            )
            return None
        cfg = _config(make_config, name, size, 2, 1.0, 0.0, "bfloat16", ov)
        m_xla = build.build_model(cfg.model)
        m_cudnn = m_xla.clone(attention_impl="cudnn")
        params = random_params(m_xla, seed=4)
        inputs = jax.device_put(model_inputs(m_xla, n, "SiT"))
        out_x = forward(m_xla, params, inputs, acc)
        out_c = forward(m_cudnn, params, inputs, acc)
        m32 = m_xla.clone(dtype=jnp.float32)
        ref = forward(m32, params, inputs, acc, "highest")
        return dict(
            model=name,
            dtype="bfloat16",
            rel_err_cudnn_vs_xla=rel_err(out_c, out_x),
            rel_err_cudnn_vs_f32=rel_err(out_c, ref),
            rel_err_xla_vs_f32=rel_err(out_x, ref),
        )

    p.item("cudnn_vs_xla", cudnn_vs_xla)

    if sizes.get("xl_check"):
        xl = sizes["xl_check"]

        def xl_bf16():
            c32 = _config(make_config, xl, size, 2, 1.0, 0.0, "float32", {})
            m32 = build.build_model(c32.model)
            m16 = m32.clone(dtype=jnp.bfloat16)
            params = random_params(m32, seed=5)
            inputs = jax.device_put(model_inputs(m32, n, "SiT"))
            ref = forward(m32, params, inputs, acc, "highest")
            return dict(
                model=xl,
                rel_err_bf16_vs_f32=rel_err(forward(m16, params, inputs, acc), ref),
                rel_err_f32_default_vs_highest=rel_err(forward(m32, params, inputs, acc), ref),
            )

        p.item(f"bf16_vs_f32 forward {xl}", xl_bf16)


# ---------------------------------------------------------------------------------------------
# 3. sampler


def _sampler_row(jax, timing, compiled, compile_s, args, batch, branches, steps, sizes, ctx):
    t = timing.time_calls(lambda: compiled(*args), repeats=int(sizes.get("repeats", 2)))
    per_step = t.median / steps  # one network call (all branches) per SDE step
    flops = steps * branches * batch * ctx["gflop_per_forward"] * 1e9
    full = int(sizes.get("full_steps", 250))
    return dict(
        compile_s=round(compile_s, 2),
        **t.summary(batch),
        ms_per_step=per_step * 1e3,
        **{f"sde{full}_images_per_s": batch / (per_step * full)},
        tflops=flops / t.median / 1e12,
        mfu=timing.mfu(flops, t.median, ctx["peak_tflops"]),
    )


def part_sampler(p: Part, sizes: dict, ctx: dict):
    jax, jnp, np, timing, build, make_config, per_branch_sampler = _imports()
    name, size, ov, steps = sizes["model"], sizes["input_size"], sizes["overrides"], sizes["steps"]
    base = _config(make_config, name, size, steps, 1.0, 0.0, "bfloat16", ov)
    model = build.build_model(base.model)
    params = random_params(model, seed=0)
    ctx["gflop_per_forward"] = (
        ctx.get("gflop_override") or timing.transformer_forward_flops(model) / 1e9
    )
    p.rec["gflop_per_forward"] = ctx["gflop_per_forward"]
    p.rec["gflop_per_forward_analytic"] = timing.transformer_forward_flops(model) / 1e9

    plan = []
    for batch in sizes["batches"]:
        order = [(3, "fused"), (1, "fused"), (2, "fused"), (2, "per_branch"), (3, "per_branch")]
        plan += [(batch, br, how) for br, how in order]
        if batch == sizes["batches"][0]:
            plan.append((batch, 0, "forward"))  # forward diagnostics after the first batch
    for batch, branches, how in plan:
        keys = per_image_keys(jax.random.key(1), np.arange(batch))
        y = jnp.arange(batch, dtype=jnp.int32) % model.num_classes
        if how == "forward":
            forward_diagnostics(p, model, params, batch * 3, sizes, ctx)
            continue
        cfg, nag = BRANCH_SETTINGS[branches]
        config = _config(make_config, name, size, steps, cfg, nag, "bfloat16", ov)

        def run(config=config, batch=batch, branches=branches, how=how, keys=keys, y=y):
            make = build.build_sampler if how == "fused" else per_branch_sampler
            compiled, compile_s = timing.aot_compile(make(config, model), params, keys, y)
            if how == "fused" and branches == 3 and batch == sizes["batches"][0]:
                p.rec["hlo"] = _save_hlo(ctx["out"], f"sampler_b{batch}_br3", compiled)
            row = _sampler_row(
                jax,
                timing,
                compiled,
                compile_s,
                (params, keys, y),
                batch,
                branches,
                steps,
                sizes,
                ctx,
            )
            if how == "per_branch" and ctx.get("fused", {}).get((batch, branches)):
                row["fused_speedup"] = row["median_s"] / ctx["fused"][(batch, branches)]
            if how == "fused":
                ctx.setdefault("fused", {})[(batch, branches)] = row["median_s"]
            return row

        p.item(
            f"{how} b{batch} br{branches}",
            run,
            model=name,
            batch=batch,
            branches=branches,
            mode=how,
            steps_timed=steps,
        )

    def rng():
        from benchmarks.compile_time import rng_cost

        batch = sizes["batches"][0]
        args = argparse.Namespace(rng_steps=max(steps, 2), rng_batch=batch, repeats=1)
        (row,) = rng_cost(args)
        return row

    p.item("sde noise cost (trivial network)", rng, mode="rng")


def forward_diagnostics(p: Part, model, params, rows: int, sizes: dict, ctx: dict):
    """Forward-only timing at ``rows`` images: XLA vs cuDNN vs the explicit attention
    (nag_jax.models.attention, CPU's default), unrolled vs scanned."""
    jax, jnp, np, timing, *_ = _imports()
    x, t, y = model_inputs(model, rows, "SiT")
    x, t, y = jax.device_put((x, t, y))
    variants = [
        ("xla", dict(attention_impl="xla")),
        ("explicit", dict(attention_impl="explicit")),  # the CPU default: is it good here too?
        ("xla scan_blocks", dict(attention_impl="xla", scan_blocks=True)),
    ]
    if jax.devices()[0].platform == "gpu":
        variants.insert(1, ("cudnn", dict(attention_impl="cudnn")))
    else:
        p.skip(f"forward cudnn rows{rows}", "skipped: cuDNN attention needs a CUDA GPU")
    for label, change in variants:
        m = model.clone(**change)

        def run(m=m):
            fn = lambda prm, x, t, y: m.apply({"params": prm}, x, t, y)
            compiled, compile_s = timing.aot_compile(fn, params, x, t, y)
            tm = timing.time_calls(lambda: compiled(params, x, t, y), int(sizes.get("repeats", 2)))
            flops = rows * ctx["gflop_per_forward"] * 1e9
            return dict(
                compile_s=round(compile_s, 2),
                **tm.summary(rows),
                tflops=flops / tm.median / 1e12,
                mfu=timing.mfu(flops, tm.median, ctx["peak_tflops"]),
                xla_gflop_per_image=timing.xla_flops(compiled) / rows / 1e9,
            )

        p.item(f"forward {label} rows{rows}", run, mode="forward", variant=label, batch=rows)


# ---------------------------------------------------------------------------------------------
# 4. train


def part_train(p: Part, sizes: dict, ctx: dict):
    jax, jnp, np, timing, build, *_ = _imports()
    from nag_jax import parallel
    from nag_jax.config.release import release_config
    from nag_jax.training import step as step_lib
    from nag_jax.training.loop import setup_state

    name = sizes["model"]
    ndev = jax.device_count()
    gflop = None
    variants = [(b, remat, False) for b in sizes["batches"] for remat in (False, True)]
    variants.append((sizes["batches"][0], False, True))  # last: scanned blocks (compile time)
    for per_device, remat, scan in variants:

        def run(per_device=per_device, remat=remat, scan=scan):
            nonlocal gflop
            config = release_config(name)
            config.model.update(
                remat=remat, input_size=int(sizes["input_size"]), **sizes["overrides"]
            )
            config.data.global_batch_size = per_device * ndev
            model = build.build_model(config.model).clone(scan_blocks=scan)
            gflop = ctx.get("gflop_override") or timing.transformer_forward_flops(model) / 1e9
            mesh = parallel.create_mesh(config.parallel)
            state, shardings, tx = setup_state(config, model, mesh)
            fn = step_lib.jit_train_step_from_config(config, model, shardings, mesh, tx)
            x, _, y = model_inputs(model, per_device * ndev, "SiT")
            batch = parallel.global_batch({"x": x, "y": y}, mesh)
            t0 = time.perf_counter()
            compiled = fn.lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            if per_device == sizes["batches"][0] and not (remat or scan):
                p.rec["hlo"] = _save_hlo(ctx["out"], f"train_b{per_device}", compiled)
            mem = _memory_analysis(compiled)
            holder = {"state": state}

            def one_step():
                holder["state"], metrics = compiled(holder["state"], batch)
                return metrics

            steps = int(sizes["steps"])

            def many():
                for _ in range(steps):
                    m = one_step()
                return m

            t = timing.time_calls(many, repeats=int(sizes.get("repeats", 1)), warmup=1)
            metrics = jax.device_get(one_step())
            step_s = t.median / steps
            flops = 3 * gflop * 1e9 * per_device * ndev
            holder.clear()
            return dict(
                compile_s=round(compile_s, 2),
                steps_timed=steps,
                **t.summary(),
                steps_per_s=1.0 / step_s,
                examples_per_s=per_device * ndev / step_s,
                mfu=timing.mfu(flops, step_s * ndev, ctx["peak_tflops"]),
                memory_analysis=mem,
                allocator_peak_bytes_so_far=timing.peak_memory_bytes(),
                loss_finite=bool(np.isfinite(metrics["loss"])),
            )

        p.item(
            f"train b{per_device} remat={remat}" + (" scan_blocks" if scan else ""),
            run,
            model=name,
            per_device_batch=per_device,
            devices=ndev,
            remat=remat,
            scan_blocks=scan,
            param_dtype="float32",
            compute_dtype="bfloat16",
            optimizer="adamw",
        )


def _memory_analysis(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
    out = {k: int(getattr(m, k, 0) or 0) for k in keys + ("temp_size_in_bytes",)}
    out["peak_estimate_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        - out["alias_size_in_bytes"]
        + out["temp_size_in_bytes"]
    )
    return out


# ---------------------------------------------------------------------------------------------
# 5. DiT DDPM


def part_ddpm(p: Part, sizes: dict, ctx: dict):
    jax, jnp, np, timing, build, make_config, _ = _imports()
    name, steps, batch = sizes["model"], int(sizes["steps"]), int(sizes["batch"])
    size = int(sizes["input_size"])
    config = _config(
        make_config, name, size, steps, 1.5, 1.0, "bfloat16", sizes["overrides"], "ddpm"
    )

    def run():
        model = build.build_model(config.model)
        gflop = ctx.get("gflop_override") or timing.transformer_forward_flops(model) / 1e9
        params = random_params(model, seed=6)
        keys = per_image_keys(jax.random.key(2), np.arange(batch))
        y = jnp.arange(batch, dtype=jnp.int32) % model.num_classes
        compiled, compile_s = timing.aot_compile(
            build.build_sampler(config, model), params, keys, y
        )
        t = timing.time_calls(lambda: compiled(params, keys, y), int(sizes.get("repeats", 1)))
        per_step = t.median / steps
        full = int(sizes["full_steps"])
        flops = steps * 3 * batch * gflop * 1e9
        return dict(
            compile_s=round(compile_s, 2),
            **t.summary(batch),
            ms_per_step=per_step * 1e3,
            **{f"ddpm{full}_images_per_s": batch / (per_step * full)},
            mfu=timing.mfu(flops, t.median, ctx["peak_tflops"]),
        )

    p.item(
        f"ddpm cfg+nag b{batch}",
        run,
        model=name,
        batch=batch,
        branches=3,
        s_cfg=1.5,
        w_nag=1.0,
        steps_timed=steps,
    )


# ---------------------------------------------------------------------------------------------
# 6. VAE


def part_vae(p: Part, sizes: dict, ctx: dict):
    from benchmarks import vae as vae_bench

    for dtype in sizes["dtypes"]:

        def run(dtype=dtype):
            args = argparse.Namespace(
                mode="decode",
                batch=int(sizes["batch"]),
                latent_size=int(sizes["latent_size"]),
                dtype=dtype,
                chunk_size=0,
                repeats=int(sizes["repeats"]),
                warmup=1,
                seed=0,
                torch=False,
                vae_config=sizes["config"],
            )
            res = vae_bench.run(args)
            res["decode_images_per_s"] = res["decode"]["images_per_s"]
            return res

        p.item(f"decode b{sizes['batch']} {dtype}", run, dtype=dtype)


def part_train_vs_pytorch(p: Part, sizes: dict, ctx: dict):
    """The SiT release's train.py loop (PyTorch) against the project's jitted step on the same work
    (benchmarks/vs_pytorch.py ``train_side_by_side``: SiT-S/2, float32, AdamW + EMA), torch on
    the accelerator when it has CUDA. Skipped with the reason when torch is missing (the
    bootstrap does not install it) or cannot reach the GPU JAX runs on."""
    import jax

    label = f"train SiT-{sizes['size']}/2 b{sizes['batch']} jax vs torch"
    try:
        import torch
    except ImportError:
        p.skip(label, "torch is not installed (pip install torch with CUDA for this row)")
        return
    backend = jax.default_backend()
    torch_device = None
    if backend == "gpu":
        if not torch.cuda.is_available():
            p.skip(label, "torch has no CUDA here while JAX runs on the GPU: no fair pair")
            return
        torch_device = "cuda"
    elif backend != "cpu":
        p.skip(label, f"torch cannot run on JAX's {backend} backend (CUDA or CPU only)")
        return
    from benchmarks.vs_pytorch import train_side_by_side

    def run():
        row = train_side_by_side(
            sizes["size"],
            batch=int(sizes["batch"]),
            input_size=int(sizes["input_size"]),
            steps=int(sizes["steps"]),
            repeats=int(sizes["repeats"]),
            overrides=sizes["overrides"],
            torch_device=torch_device,
            ceiling_n=int(sizes["ceiling_n"]),
        )
        row["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
        row["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
        return row

    p.item(label, run, estimate=float(sizes.get("estimate_s", 20.0)))


PART_FNS = dict(
    environment=part_environment,
    numerics=part_numerics,
    sampler=part_sampler,
    train=part_train,
    train_vs_pytorch=part_train_vs_pytorch,
    ddpm=part_ddpm,
    vae=part_vae,
)


# ---------------------------------------------------------------------------------------------
# main


def default_out_dir() -> str:
    if os.environ.get("OUT"):
        return os.environ["OUT"]
    import jax

    kind = jax.devices()[0].device_kind.replace(" ", "_").replace("/", "_")
    return os.path.join(ROOT, "benchmarks", "results", "accelerator", kind)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (default $OUT, else results/...)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, every part")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list from {PARTS}")
    p.add_argument("--deadline", type=float, default=None, help="seconds (default per size)")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="dense bf16 peak for MFU (default: the datasheet value of the device kind)",
    )
    p.add_argument("--profile", action="store_true", help="jax.profiler trace of one sampler call")
    args = p.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    bad = [s for s in parts if s not in PARTS]
    if bad:
        p.error(f"--parts has {bad}; choose from {PARTS}")
    args.parts = [s for s in PARTS if s in parts]
    return args


def main(argv=None) -> dict:
    t_start = time.perf_counter()  # the deadline counts jax's start-up too
    args = parse_args(argv)
    if args.smoke:  # before jax is imported: CPU only, and quick (unoptimised) CPU code
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = " ".join(
            [os.environ.get("XLA_FLAGS", ""), SMOKE_XLA_FLAGS]
        ).strip()
    sys.path.insert(0, ROOT)
    import jax

    from benchmarks import timing

    sizes = SIZES["smoke" if args.smoke else "full"]
    out = args.out or default_out_dir()
    os.makedirs(out, exist_ok=True)
    _setup_logging(out)
    report = Report(out, sys.argv[1:] if argv is None else argv)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or timing.peak_bf16_tflops(kind)
    ctx = dict(out=out, peak_tflops=peak)
    if not args.smoke and sizes["sampler"]["model"].startswith(("SiT-XL/2", "DiT-XL/2")):
        ctx["gflop_override"] = GFLOP_PER_FORWARD
    report.data.update(
        mode="smoke" if args.smoke else "full",
        device=f"{jax.device_count()} x {kind}",
        peak_bf16_dense_tflops=peak,
        gflop_per_forward_xl2=GFLOP_PER_FORWARD,
        sizes=sizes,
    )
    budget = Budget(args.deadline or sizes["deadline"], sizes["budgets"], args.parts, t_start)
    log.info("accelerator check (%s) on %s -> %s", report.data["mode"], report.data["device"], out)
    for name in args.parts:
        budget.start(name)
        part = Part(name, report, budget)
        reason = budget.skip_reason(0.0)
        if reason:
            part.skip(name, reason)
        else:
            try:
                key = {"environment": "env"}.get(name, name)
                PART_FNS[name](part, sizes[key], ctx)
            except KeyboardInterrupt:
                part.skip(name, "interrupted (outer timeout)")
                part.finish()
                break
            except Exception as e:  # noqa: BLE001
                part.rec["errors"].append(dict(item=name, error=f"{e}"[:2000], traceback=_tb()))
        part.finish()
        log.info("part %s: %s in %.1fs", name, part.rec["status"], part.rec["wall_s"])
        if name == "sampler" and args.profile:
            _profile_sampler(out, sizes["sampler"], report)
    report.data["total_wall_s"] = round(budget.elapsed(), 2)
    report.data["summary"] = summarize(report.data)
    report.save()
    log.info("summary: %s", json.dumps(report.data["summary"], default=_json_default))
    return report.data


def _profile_sampler(out: str, sizes: dict, report: Report):
    """A jax.profiler trace of one fused 3-branch sampler call (xplane file, gzipped)."""
    jax, jnp, np, timing, build, make_config, _ = _imports()
    import glob
    import shutil
    import tempfile

    batch, ov = sizes["batches"][0], sizes["overrides"]
    config = _config(make_config, sizes["model"], sizes["input_size"], 2, 1.5, 1.0, "bfloat16", ov)
    model = build.build_model(config.model)
    params = random_params(model, 0)
    keys = per_image_keys(jax.random.key(1), np.arange(batch))
    y = jnp.arange(batch, dtype=jnp.int32) % model.num_classes
    fn = jax.jit(build.build_sampler(config, model))
    jax.block_until_ready(fn(params, keys, y))
    tmp = tempfile.mkdtemp()
    with jax.profiler.trace(tmp):
        jax.block_until_ready(fn(params, keys, y))
    files = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
    if files:
        with (
            open(files[0], "rb") as src,
            gzip.open(os.path.join(out, "profile.xplane.pb.gz"), "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    report.data["profile"] = "profile.xplane.pb.gz" if files else "no trace written"
    report.save()


def summarize(data: dict) -> dict:
    """The headline numbers (issue 14's targets) in one flat dict."""
    s = {}
    parts = data["parts"]
    for name, rec in parts.items():
        s[f"{name}_status"] = rec["status"]
    for row in parts.get("sampler", {}).get("rows", []):
        if row.get("mode") in ("fused", "per_branch"):
            key = f"sampler_{row['mode']}_b{row['batch']}_br{row['branches']}"
            s[key + "_mfu"] = row.get("mfu")
            s[key + "_sde250_images_per_s"] = row.get("sde250_images_per_s")
    for row in parts.get("train", {}).get("rows", []):
        s[f"train_b{row['per_device_batch']}_remat{int(row['remat'])}_mfu"] = row.get("mfu")
    for row in parts.get("train_vs_pytorch", {}).get("rows", []):
        s["train_speedup_jax_over_torch"] = row.get("speedup_jax_over_torch")
        s["train_jax_fraction_of_ceiling"] = row.get("jax_fraction_of_ceiling")
    for row in parts.get("ddpm", {}).get("rows", []):
        s["ddpm250_images_per_s"] = row.get("ddpm250_images_per_s")
    for row in parts.get("vae", {}).get("rows", []):
        s[f"vae_decode_{row['dtype']}_images_per_s"] = row.get("decode_images_per_s")
    return s


def _setup_logging(out: str):
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in (
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(os.path.join(out, "accelerator_check.log")),
    ):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False


if __name__ == "__main__":
    main()
