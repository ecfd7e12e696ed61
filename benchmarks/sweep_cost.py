"""Cost per point of the guidance sweep: one traced sampler for every point vs one eval-style
sampler compiled per point.

    nice -n 10 python benchmarks/sweep_cost.py --out=benchmarks/results/sweep/cost_cpu.json

Both sides draw through ``nag_jax.sampling.generate.make_batch_sampler`` (the sharded sampler of
eval and
sweep), for the same points, seed and images: ``sweep`` is built once with every branch on and
``traced=True`` (scales, intervals and seed are run-time arguments, what mode "sweep" runs);
``separate`` builds the sampler of each point with static scales and intervals (what K separate
``eval`` runs compile). For each point: compile seconds (first call minus a warm call of the same
batch) and sampling images/s (``--images`` per point, batches of ``--batch``), and the max
absolute difference between the two sides' images (they must agree). The model is the demo's
size with random weights (cost does not depend on the weights). Order alternates per point, so
load from other processes hits both sides alike; on a shared CPU read the ratios only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402
from benchmarks.two_model import _params  # noqa: E402
from nag_jax import parallel  # noqa: E402
from nag_jax.config.schema import base_config  # noqa: E402
from nag_jax.evaluation.guidance_grid import Point, sampler_config  # noqa: E402
from nag_jax.sampling import build, generate

POINTS = (
    Point(),
    Point(cfg_scale=1.25),
    Point(nag_scale=1.0, nag_interval=(0.0, 0.5)),
    Point(cfg_scale=1.125, nag_scale=1.0, nag_interval=(0.0, 0.5)),
)


def demo_like_config(steps: int):
    c = base_config()
    c.model.update(
        name="SiT-S/2", input_size=16, in_channels=3, num_classes=16, learn_sigma=False,
        hidden_size=128, depth=4, num_heads=4,
    )  # fmt: skip
    c.sample.update(sampler="sde", num_steps=steps)
    c.parallel.update(fsdp=False, mesh=dict(data=-1, fsdp=1, tensor=1))
    return c


def _sample(run_batch, indices, batch, *traced):
    t0 = time.perf_counter()
    out = [imgs for _, imgs, _ in generate.iterate_batches(
        lambda idx: run_batch(*traced[:1], idx, *traced[1:]), indices, batch)]  # fmt: skip
    return np.concatenate(out), time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    config = demo_like_config(args.steps)
    config.seed = args.seed
    model = build.build_model(config.model)
    params = _params(model, 16, 3, 0)
    mesh = parallel.create_mesh(config.parallel)
    idx = np.arange(args.images)
    first = np.arange(args.batch)

    def compile_and_warm(run_batch, *traced):
        t0 = time.perf_counter()
        jax.block_until_ready(run_batch(traced[0], first, *traced[1:]))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(run_batch(traced[0], first, *traced[1:]))
        return cold - (time.perf_counter() - t0)

    sweep_sampler = generate.make_batch_sampler(
        sampler_config(config, list(POINTS)), model, params, mesh, traced=True
    )
    sweep_compile = None
    rows = []
    for i, point in enumerate(POINTS):
        sides = ("sweep", "separate") if i % 2 == 0 else ("separate", "sweep")
        row = dict(point=point.name)
        images = {}
        for side in sides:
            if side == "sweep":
                traced = (params, args.seed, point.guide())
                if sweep_compile is None:
                    sweep_compile = compile_and_warm(sweep_sampler, *traced)
                images[side], secs = _sample(sweep_sampler, idx, args.batch, *traced)
                row["sweep_images_per_s"] = args.images / secs
            else:
                c = config.copy_and_resolve_references()
                c.sample.update(
                    cfg_scale=point.cfg_scale,
                    nag_scale=point.nag_scale,
                    cfg_interval=point.cfg_interval,
                    nag_interval=point.nag_interval,
                )
                run_batch = generate.make_batch_sampler(c, model, params, mesh)
                row["separate_compile_s"] = compile_and_warm(run_batch, params)
                images[side], secs = _sample(run_batch, idx, args.batch, params)
                row["separate_images_per_s"] = args.images / secs
        row["max_abs_uint8_diff"] = int(
            np.abs(images["sweep"].astype(int) - images["separate"].astype(int)).max()
        )
        row["sampling_speed_ratio_sweep_over_separate"] = (
            row["sweep_images_per_s"] / row["separate_images_per_s"]
        )
        rows.append(row)
        print(row, flush=True)
    k = len(POINTS)
    sep_compile = sum(r["separate_compile_s"] for r in rows)
    sample_s = {
        side: sum(args.images / r[f"{side}_images_per_s"] for r in rows)
        for side in ("sweep", "separate")
    }
    summary = dict(
        points=k,
        compilations=dict(sweep=1, separate=k),
        sweep_compile_s=sweep_compile,
        separate_compile_s_total=sep_compile,
        compile_ratio_separate_over_sweep=sep_compile / sweep_compile,
        cost_per_point_s=dict(
            sweep=(sweep_compile + sample_s["sweep"]) / k,
            separate=(sep_compile + sample_s["separate"]) / k,
        ),
        median_sampling_speed_ratio_sweep_over_separate=statistics.median(
            r["sampling_speed_ratio_sweep_over_separate"] for r in rows
        ),
    )
    summary["cost_ratio_separate_over_sweep"] = (
        summary["cost_per_point_s"]["separate"] / summary["cost_per_point_s"]["sweep"]
    )
    report = timing.report_header(
        "sweep: one traced sampler for every point vs one compiled sampler per point", args
    )
    report["points"] = rows
    report["summary"] = summary
    timing.emit_json(report, args.out)


if __name__ == "__main__":
    main()
