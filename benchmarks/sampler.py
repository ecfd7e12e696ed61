"""Sampler throughput: the fused one-call guidance step against one network call per branch.

    python benchmarks/sampler.py --out=benchmarks/results/sampler_cpu.json
    python benchmarks/sampler.py --models=SiT-XL/2 --batch=64 --steps=50 --dtype=bfloat16   # GPU

For each model and each guidance setting with 1, 2 and 3 branches (none, CFG, CFG+NAG), it
times the whole jitted lax.scan SDE sampler (Euler-Maruyama, "Mean" last step) twice, side by
side in one process: ``fused`` (all active branches as rows of ONE batched network call per step,
what the project ships) and ``per_branch`` (one network call per branch per step, the usual
implementation). Both compute the same guided prediction; the JSON reports images/s of each and
their ratio. Compilation is excluded (AOT compile before the clock). Absolute times are only
meaningful with the device named in the output; compare ratios across machines.

Model FLOPs utilisation (``--peak_tflops``): forward FLOPs per image are counted from XLA's cost
analysis of one network call, times calls per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402
from nag_jax import sampling  # noqa: E402
from nag_jax.config import schema  # noqa: E402
from nag_jax.guidance import branch_inputs, combine  # noqa: E402
from nag_jax.sampling import build, generate

SETTINGS = {1: (1.0, 0.0), 2: (1.5, 0.0), 3: (1.5, 1.0)}  # branches -> (cfg_scale, nag_scale)


def make_config(name, input_size, channels, steps, cfg, nag, dtype, sampler=None, **overrides):
    """Sampling config: SiT linear-velocity (or DiT 1000-step) process, ``sampler`` over
    ``steps`` steps (default: SDE for SiT, DDPM for DiT), guidance scales; ``overrides``
    (hidden_size, depth, ...) go to the model. Completed from the schema and validated
    (nag_jax.config.schema.resolve)."""
    if sampler is None:
        sampler = "ddpm" if name.startswith("DiT") else "sde"
    return schema.resolve(
        dict(
            model=dict(
                name=name,
                input_size=input_size,
                in_channels=channels,
                num_classes=1000,
                learn_sigma=True,
                dtype=dtype,
                **overrides,
            ),
            process=dict(path="linear", prediction="velocity"),
            sample=dict(
                sampler=sampler, num_steps=steps, method="euler", cfg_scale=cfg, nag_scale=nag
            ),
        ),
        mode="sample",
    )


def per_branch_sampler(config, model):
    """Same sampler and guidance algebra, but one network call per branch per step."""
    process = build.build_process(config, for_sampling=True)
    guidance = build.build_guidance(config.sample)
    shape = (model.input_size, model.input_size, model.in_channels)

    def sample_fn(params, keys, y):
        net = build.make_net_fn(model, params, "SiT")

        def pred_fn(x, t, yy):
            outs = {b: net(*branch_inputs(x, t, yy, (b,))) for b in guidance.branches}
            return combine(outs, guidance)

        x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        return sampling.sample_sde(
            pred_fn,
            noise_keys,
            x_init,
            y,
            transport=process,
            num_steps=int(config.sample.num_steps),
        )

    return sample_fn


def time_fn(fn, args, repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls of the AOT-compiled ``fn(*args)`` (warm-up first)."""
    compiled, _ = timing.aot_compile(fn, *args)
    return timing.time_calls(lambda: compiled(*args), repeats).best


def forward_flops(model, params, batch: int) -> float:
    """XLA's FLOP count of one network call, per image."""
    x = jnp.zeros((batch, model.input_size, model.input_size, model.in_channels))
    t, y = jnp.zeros((batch,)), jnp.zeros((batch,), jnp.int32)
    compiled, _ = timing.aot_compile(model.apply, {"params": params}, x, t, y)
    return timing.xla_flops(compiled) / batch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="SiT-S/4,SiT-B/4", help="comma-separated registry names")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="images per sampler call")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--peak_tflops", type=float, default=0.0, help="device peak for MFU (0: datasheet's)"
    )
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    results = []
    args.peak_tflops = args.peak_tflops or timing.peak_bf16_tflops(jax.devices()[0].device_kind)
    for name in args.models.split(","):
        base = make_config(name, args.input_size, args.channels, args.steps, 1.0, 0.0, args.dtype)
        model = build.build_model(base.model)
        params = jax.jit(model.init)(
            jax.random.key(0),
            jnp.zeros((1, args.input_size, args.input_size, args.channels)),
            jnp.zeros((1,)),
            jnp.zeros((1,), jnp.int32),
        )["params"]
        flops = forward_flops(model, params, args.batch)
        keys = generate.per_image_keys(jax.random.key(1), np.arange(args.batch))
        y = jnp.arange(args.batch, dtype=jnp.int32) % 1000
        for branches, (cfg, nag) in SETTINGS.items():
            config = make_config(
                name, args.input_size, args.channels, args.steps, cfg, nag, args.dtype
            )
            fused = time_fn(build.build_sampler(config, model), (params, keys, y), args.repeats)
            split = time_fn(per_branch_sampler(config, model), (params, keys, y), args.repeats)
            calls = args.steps * branches  # network evaluations per image (SDE: one per step)
            row = dict(
                model=name,
                branches=branches,
                cfg_scale=cfg,
                nag_scale=nag,
                fused_images_per_sec=args.batch / fused,
                per_branch_images_per_sec=args.batch / split,
                speedup_fused_over_per_branch=split / fused,
                forward_gflop_per_image=flops / 1e9,
            )
            if args.peak_tflops:
                row["fused_mfu"] = timing.mfu(flops * calls * args.batch, fused, args.peak_tflops)
            results.append(row)
            print(json.dumps(row), flush=True)
    report = timing.report_header(
        "sampler: fused one-call guidance vs one call per branch (SDE Euler)", args
    )
    report["results"] = results
    timing.emit_json(report, args.out)


if __name__ == "__main__":
    main()
