"""Domain Guidance's two networks: one vmapped call over stacked params vs two sequential calls.

    nice -n 10 python benchmarks/two_model.py --out=benchmarks/results/dog/two_model_cpu.json
    python benchmarks/two_model.py --models=SiT-XL/2 --input_size=32 --channels=4 --batch=64 \
        --steps=50 --dtype=bfloat16 --out=benchmarks/results/dog/two_model_gpu.json    # GPU

For each model and each DoG setting (DoG alone: 1 fine-tuned branch + the pre-trained one; DoG +
NAG: 2 + 1, the pre-trained rows padded to 2N in the stacked call; DoG + CFG + NAG: 3 + 1), the
whole jitted SDE sampler (Euler-Maruyama, "Mean" last step) is compiled ahead of time in both
forms (``sample.dog_call`` "stacked" and "sequential") and the two are timed ALTERNATELY in the
same process, ``--rounds`` rounds of ``--repeats`` calls each, so load from other processes hits
both alike. The JSON gives each round's ratio (sequential seconds / stacked seconds: > 1 means
the stacked call is faster) and their median, images/s of both, and the compile seconds of
both. On a shared CPU only the ratios mean something; absolute times need the named device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402
from benchmarks.sampler import make_config  # noqa: E402
from nag_jax.sampling import build, generate  # noqa: E402

# name -> (cfg_scale, nag_scale, dog_scale); main-model branches 1, 2, 3 (+ the pre-trained one)
SETTINGS = {"DoG": (1.0, 0.0, 1.5), "DoG+NAG": (1.0, 1.0, 1.5), "DoG+CFG+NAG": (1.5, 1.0, 1.5)}


def _params(model, size, channels, seed):
    params = jax.jit(model.init)(
        jax.random.key(seed),
        jnp.zeros((1, size, size, channels)),
        jnp.zeros((1,)),
        jnp.zeros((1,), jnp.int32),
    )["params"]
    leaves, tree = jax.tree.flatten(params)  # adaLN-Zero outputs 0 at init: perturb every leaf
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [p + 0.02 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="SiT-S/2", help="comma-separated registry names")
    p.add_argument("--hidden_size", type=int, default=128, help="0: the registry's")
    p.add_argument("--depth", type=int, default=4, help="0: the registry's")
    p.add_argument("--input_size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    overrides = {}
    if args.hidden_size:
        overrides.update(hidden_size=args.hidden_size, num_heads=4)
    if args.depth:
        overrides.update(depth=args.depth)
    results = []
    for name in args.models.split(","):
        base = make_config(
            name, args.input_size, args.channels, args.steps, 1.0, 0.0, args.dtype, **overrides
        )
        model = build.build_model(base.model)
        ft = _params(model, args.input_size, args.channels, 0)
        pre = _params(model, args.input_size, args.channels, 1)
        pair = {build.MAIN: ft, build.DOMAIN: build.domain_params_like(ft, pre)}
        keys = generate.per_image_keys(jax.random.key(1), np.arange(args.batch))
        y = jnp.arange(args.batch, dtype=jnp.int32) % 1000
        for setting, (cfg, nag, dog) in SETTINGS.items():
            compiled, compile_s = {}, {}
            for call in ("stacked", "sequential"):
                c = make_config(
                    name, args.input_size, args.channels, args.steps, cfg, nag, args.dtype,
                    **overrides,
                )  # fmt: skip
                c.sample.update(dog_scale=dog, dog_call=call)
                fn = build.build_sampler(c, model)
                compiled[call], compile_s[call] = timing.aot_compile(fn, pair, keys, y)
            same = np.abs(
                np.asarray(compiled["stacked"](pair, keys, y))
                - np.asarray(compiled["sequential"](pair, keys, y))
            ).max()
            rounds = []
            for r in range(args.rounds):
                order = ("stacked", "sequential") if r % 2 == 0 else ("sequential", "stacked")
                args_ = (pair, keys, y)
                t = {
                    call: timing.time_calls(lambda f=compiled[call], a=args_: f(*a), args.repeats)
                    for call in order
                }
                rounds.append(
                    dict(
                        stacked_s=t["stacked"].median,
                        sequential_s=t["sequential"].median,
                        ratio_sequential_over_stacked=t["sequential"].median / t["stacked"].median,
                    )
                )
            ratios = [rd["ratio_sequential_over_stacked"] for rd in rounds]
            row = dict(
                model=name,
                setting=setting,
                main_branches=1 + (cfg != 1.0) + (nag != 0.0),
                median_ratio_sequential_over_stacked=statistics.median(ratios),
                ratios=ratios,
                stacked_images_per_s=args.batch / statistics.median(r["stacked_s"] for r in rounds),
                sequential_images_per_s=args.batch
                / statistics.median(r["sequential_s"] for r in rounds),
                compile_s=compile_s,
                max_abs_diff_stacked_vs_sequential=float(same),
            )
            results.append(row)
            print(row, flush=True)
    report = timing.report_header(
        "Domain Guidance: stacked (one vmapped call) vs sequential (two calls), SDE", args
    )
    report["results"] = results
    timing.emit_json(report, args.out)


if __name__ == "__main__":
    main()
