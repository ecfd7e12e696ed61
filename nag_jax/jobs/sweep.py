"""mode "sweep": a guidance search with ONE compiled sampler, resumable point by point.

    python -m nag_jax.main --config=configs/sweep_demo.py --workdir=runs/sweep_demo
    python -m nag_jax.main --config=configs/sweep_sit_xl.py --workdir=runs/sweep_sit_xl \
        --config.model.weights=ckpt/sit_xl2_256_nag --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.eval.inception_path=fid.npz --config.eval.reference=VIRTUAL_imagenet256_labeled.npz

Points (``config.sweep``): the full grid ``cfg_scales x nag_scales x dog_scales x cfg_intervals
x nag_intervals`` or, when ``sweep.points`` is set, that explicit list (e.g. the fine-grained
table's six rows, each optionally with its own ``weights``).

Why a grid and not successive halving or a Bayesian search: (1) FID is biased in N (it falls as
N grows), so the rungs of successive halving at small N rank points with a bias that differs
from the final N's, and a bandit's early eliminations are exactly where that bias and FID's
seed noise are largest; every grid point is scored at the same N on the same images (paired:
image i of seed s is ``nag_jax.sampling.generate`` image i, whatever the point), so differences
between
points are guidance only. (2) The curves FID(s_cfg), FID(w_nag) per interval are an output the
paper's question (how to choose w_nag) needs, and only a grid draws them. (3) Points are
independent, so the sweep resumes point by point and shards like eval. The cost that a search
would save is bounded here by compiling once: a point costs its sampling and scoring only.

One compiled sampler: the sampler is built with every branch that any point uses (CFG, NAG,
DoG) and its scales and intervals are traced run-time arguments (``build.build_sampler``'s
``scales`` / ``intervals``; ``generate.make_batch_sampler(traced=True)`` also takes the seed at
run time), so every point and every seed run the same executable; a term that is off at a
point (scale off, or the step outside its interval) skips its branch at run time (lax.switch).

Library parts: ``nag_jax.evaluation.guidance_grid`` (points, the one sampler's config, scoring
and resuming a point), ``nag_jax.reporting`` (table.md, curves.png).

Metric: ``config.eval``'s extractor and reference (nag_jax.evaluation.evaluators): FID on
``sweep.num_images`` images per seed with the FID Inception, or the demo's proxy classifier on
CPU (then also class accuracy; numbers named ``proxy_*``, never FID). Each point's row is
written atomically (``weights.write_json``) to ``<workdir>/sweep/points/<key>.json`` once all its
seeds are scored; a rerun skips every point whose file exists (the key hashes the sampling
identity, the params' fingerprint, the point, seeds, N, extractor and reference).

Selection: the point with the lowest mean ``sweep.metric`` over ``sweep.val_seeds`` (ties: the
first in grid order); it is then scored on the disjoint ``sweep.report_seeds`` (held out), with
the unguided point beside it when the grid has one. Table mode (``sweep.val_seeds = ()``): no
selection; every point is scored on ``sweep.report_seeds`` (pre-registered rows, e.g. the
fine-grained table of configs/finetune_fine_grained.py). Writes ``<workdir>/sweep/table.md``,
``results.json`` and ``curves.png`` (metric against s_cfg, one line per w_nag, per interval).
Cost: the one compilation's seconds and each point's sampling images/s are recorded.

Time conventions: none of its own (nag_jax.sampling.build: SiT float t, 0 = noise; DiT integer step,
0 = least noise); intervals are noise levels (1 = pure noise).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from absl import logging

from nag_jax import parallel
from nag_jax.config import schema
from nag_jax.evaluation import evaluators
from nag_jax.evaluation.guidance_grid import (
    Point,
    PointParams,
    PointScorer,
    points_of,
    sampler_config,
    select_best,
)
from nag_jax.evaluation.results import metric_names
from nag_jax.reporting import figures, stats, tables
from nag_jax.sampling import build, generate
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path


def run(config, workdir: str, **overrides) -> dict:
    """mode "sweep" (see the module docstring). Returns results.json's content.

    ``overrides`` (tests): model, params (the default weights' tree), mesh, extractor,
    reference (a ReferenceStats), on_point(n_done) called after each point is written.
    """
    schema.validate(config)
    parallel.maybe_initialize_distributed()
    sw = config.sweep
    points = points_of(sw)
    val_seeds, rep_seeds = stats.held_out_seeds(sw, "sweep")
    n = int(sw.num_images)
    out_dir = as_path(workdir) / "sweep"
    mesh = overrides.pop("mesh", None) or parallel.create_mesh(config.parallel)
    sconf = sampler_config(config, points)
    model = overrides.pop("model", None) or build.build_model(config.model)
    extractor = overrides.pop("extractor", None) or evaluators.build_extractor(config)
    ref = overrides.pop("reference", None) or evaluators.load_reference(config, extractor, workdir)
    on_point: Callable | None = overrides.pop("on_point", None)
    params_of = PointParams(config, sconf, overrides.pop("params", None))
    decode = build.build_decoder(config)
    bs = generate.padded_batch_size(int(config.eval.batch_size), mesh)
    run_batch = generate.make_batch_sampler(
        sconf, model, params_of(points[0]), mesh, decode=decode, traced=True
    )
    score_point = PointScorer(
        config, sconf, run_batch, params_of, extractor, ref, out_dir / "points", n, bs
    )
    metric = str(sw.metric)
    table_mode = not val_seeds
    rows = []
    for i, point in enumerate(points):
        row = score_point(point, rep_seeds if table_mode else val_seeds)
        rows.append(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(row["mean"].items()))
        logging.info("sweep %d/%d %-40s %s", i + 1, len(points), point.name, shown)
        if on_point is not None:
            on_point(i + 1)
    best = select_best(rows, metric)
    best_point = Point.from_dict(best["point"])
    held_out = [] if table_mode else [score_point(best_point, rep_seeds)]
    base = next((p for p in points if p.unguided and p.weights == best_point.weights), None)
    if not table_mode and base is not None and base != best_point:
        held_out.append(score_point(base, rep_seeds))
    results = dict(
        metric=metric,
        metric_name=metric_names({metric: 0}, extractor.is_fid_inception).popitem()[0],
        val_seeds=val_seeds,
        report_seeds=rep_seeds,
        num_images=n,
        points=rows,
        best=dict(name=best["name"], point=best["point"], validation=best["mean"]),
        held_out=[dict(name=r["name"], mean=r["mean"], se=r["se"]) for r in held_out],
        cost=dict(
            compile_s=score_point.compile_s,  # None when every point was already done
            compilations=1,
            images_per_s=[r["images_per_s"] for r in rows],
        ),
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    )
    if jax.process_index() == 0:
        weights.write_json(out_dir / "results.json", results, force=True)
        table = tables.sweep_table(results)
        (out_dir / "table.md").write_text(table + "\n")
        figures.sweep_curves(results, out_dir / "curves.png")
        print(table, flush=True)
    return results
