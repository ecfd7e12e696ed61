"""Compile time of the big programs (unrolled vs ``DiT.scan_blocks``) and the sampler's noise cost.

    python benchmarks/compile_time.py --out benchmarks/results/compile_time_cpu.json
    python benchmarks/compile_time.py --model SiT-B/2 --dtype float32 --repeats 3

Part "compile": AOT compile seconds (``jax.jit(f).lower(...).compile()``, from abstract shapes: no
parameter memory is allocated) of the model's forward, of the fused CFG+NAG SDE sampler and of the
project's train step (jit_train_step: AdamW + EMA, stand-in flow-matching loss), each with the
blocks unrolled (default) and scanned, ``--repeats`` times in one process, who goes first
alternating, so the ratio is side by side.

Part "rng": the SDE loop's cost of drawing noise, with a trivial network (``pred = -x``) so that
only the noise and the update remain: one PRNG key per image (what the project's samplers use:
image i depends on its own key alone), one key for the batch, and injected zeros (no drawing).

Absolute seconds depend on the machine and its load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.sampler import make_config  # noqa: E402
from nag_jax import parallel, sampling  # noqa: E402
from nag_jax.sampling import build, generate


def compile_times(args) -> list[dict]:
    from nag_jax.training import step as step_lib
    from nag_jax.training.state import create_optimizer, init_state
    from tests.fixtures import standin_loss

    config = make_config(args.model, 32, 4, 8, 1.5, 1.0, args.dtype)
    n = args.batch
    x = jax.ShapeDtypeStruct((n, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((n,), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    rows = []
    for rep in range(args.repeats):
        for scan in (False, True) if rep % 2 == 0 else (True, False):  # alternate who goes first
            model = build.build_model(config.model).clone(scan_blocks=scan)
            params = jax.eval_shape(
                lambda k, m=model: m.init(
                    k, jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
                )["params"],
                jax.random.key(0),
            )
            row = dict(model=args.model, dtype=args.dtype, scan_blocks=scan, repeat=rep)
            fwd = lambda p, x, t, y, m=model: m.apply({"params": p}, x, t, y)
            row["forward_s"] = timing.aot_compile(fwd, params, x, t, y)[1]
            keys = jax.ShapeDtypeStruct((n,), jax.random.key(0).dtype)
            sample_fn = build.build_sampler(config, model)
            row["sampler_cfg_nag_s"] = timing.aot_compile(sample_fn, params, keys, y)[1]
            tx = create_optimizer(config_optim(), params)
            state = jax.eval_shape(
                lambda p, tx=tx: init_state(p, tx, jax.random.PRNGKey(0)), params
            )
            mesh = parallel.create_mesh(None, jax.devices()[:1])
            rep_sharding = parallel.replicated(mesh)
            shardings = jax.tree.map(lambda _, r=rep_sharding: r, state)
            step = step_lib.jit_train_step(
                shardings,
                mesh,
                apply_fn=step_lib.make_apply_fn(model),
                loss_fn=standin_loss,
                tx=tx,
                ema_decay=0.9999,
            )
            batch = {"x": x, "y": y}
            t0 = time.perf_counter()
            step.lower(state, batch).compile()
            row["train_step_s"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def config_optim():
    import ml_collections

    return ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=0.0, trainable="all"))


def rng_cost(args) -> list[dict]:
    from nag_jax.diffusion import Transport

    transport, steps, n = Transport(), args.rng_steps, args.rng_batch
    shape = (32, 32, 4)
    pred = lambda x, t, y: -x

    def per_image(keys):
        x0 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        return sampling.sample_sde(pred, noise_keys, x0, None, transport=transport, num_steps=steps)

    def one_key(key):
        x0 = jax.random.normal(key, (n,) + shape)
        k = jax.random.fold_in(key, 1)
        return sampling.sample_sde(pred, k, x0, None, transport=transport, num_steps=steps)

    def injected(key):
        x0 = jax.random.normal(key, (n,) + shape)
        z = jnp.zeros((steps - 1, n) + shape)
        return sampling.sample_sde(
            pred, None, x0, None, transport=transport, num_steps=steps, noise=z
        )

    keys = generate.per_image_keys(jax.random.key(1), np.arange(n))
    variants = (
        ("per_image_keys", per_image, keys),
        ("one_key", one_key, jax.random.key(0)),
        ("injected_zeros", injected, jax.random.key(0)),
    )
    compiled = {name: timing.aot_compile(f, a) for name, f, a in variants}
    rows = []
    for rep in range(args.repeats):
        row = dict(repeat=rep, steps=steps, batch=n)
        for name, _, a in variants:
            c = compiled[name][0]
            row[f"{name}_ms"] = timing.time_calls(lambda c=c, a=a: c(a), 5).median * 1e3
            row[f"{name}_compile_s"] = compiled[name][1]
        row["per_image_over_one_key"] = row["per_image_keys_ms"] / row["one_key_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="SiT-XL/2")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=4, help="images in the compiled programs")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rng_steps", type=int, default=32)
    p.add_argument("--rng_batch", type=int, default=64)
    p.add_argument("--parts", default="compile,rng")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    report = timing.report_header("compile time (unrolled vs scan_blocks) and SDE noise cost", args)
    if "compile" in args.parts:
        rows = compile_times(args)
        report["compile"] = rows
        for key in ("forward_s", "sampler_cfg_nag_s", "train_step_s"):
            u = [r[key] for r in rows if not r["scan_blocks"]]
            s = [r[key] for r in rows if r["scan_blocks"]]
            report[f"{key}_scan_over_unrolled"] = float(np.median(s) / np.median(u))
    if "rng" in args.parts:
        report["rng"] = rng_cost(args)
    timing.emit_json(report, args.out)


if __name__ == "__main__":
    main()
