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

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.config import schema
from nag_jax.evaluation import evaluators, samples
from nag_jax.evaluation import metrics as metrics_lib
from nag_jax.evaluation.results import digest, metric_names
from nag_jax.sampling import build, generate
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.utils import save_figure, to_uint8

FULL = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Point:
    """One guidance setting of the sweep (intervals in noise levels, 1 = noise)."""

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    dog_scale: float = 1.0
    cfg_interval: tuple[float, float] = FULL
    nag_interval: tuple[float, float] = FULL
    name: str = ""
    weights: str = ""  # '' = config.model.weights

    def __post_init__(self):
        for f in ("cfg_interval", "nag_interval"):
            lo, hi = (float(v) for v in getattr(self, f))
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"sweep point {f}={(lo, hi)}: expected 0 <= lo <= hi <= 1.")
            object.__setattr__(self, f, (lo, hi))
        for f in ("cfg_scale", "nag_scale", "dog_scale"):
            object.__setattr__(self, f, float(getattr(self, f)))
        if not self.name:
            object.__setattr__(self, "name", self.label())

    def label(self) -> str:
        parts = [f"cfg={self.cfg_scale:g}", f"nag={self.nag_scale:g}"]
        if self.dog_scale != 1.0:
            parts.append(f"dog={self.dog_scale:g}")
        if self.cfg_interval != FULL and self.cfg_scale != 1.0:
            parts.append("cfg_on=[{:g},{:g}]".format(*self.cfg_interval))
        if self.nag_interval != FULL and self.nag_scale != 0.0:
            parts.append("nag_on=[{:g},{:g}]".format(*self.nag_interval))
        return " ".join(parts)

    def guide(self) -> dict:
        """The traced arguments of the one compiled sampler."""
        return dict(
            scales=np.array([self.cfg_scale, self.nag_scale, self.dog_scale], np.float32),
            intervals=np.array([self.cfg_interval, self.nag_interval], np.float32),
        )

    @property
    def unguided(self) -> bool:
        return self.cfg_scale == 1.0 and self.nag_scale == 0.0 and self.dog_scale == 1.0


def points_of(sw) -> list[Point]:
    """``config.sweep`` -> its points: ``sweep.points`` (dicts of Point's fields) when set, else
    the grid in order cfg_scales, nag_scales, dog_scales, cfg_intervals, nag_intervals."""
    if sw.points:
        return [Point(**dict(p)) for p in sw.points]
    grid = itertools.product(
        sw.cfg_scales, sw.nag_scales, sw.dog_scales, sw.cfg_intervals, sw.nag_intervals
    )
    points, seen = [], set()
    for s, w, d, ci, ni in grid:
        # an interval of an off term does not change the samples: one point, not several
        ci = tuple(ci) if float(s) != 1.0 else FULL
        ni = tuple(ni) if float(w) != 0.0 else FULL
        p = Point(s, w, d, ci, ni)
        if p.name not in seen:
            seen.add(p.name)
            points.append(p)
    return points


def select_best(rows: list[dict], metric: str) -> dict:
    """The row with the lowest finite ``row["mean"][metric]`` (ties: the first); ValueError if
    no row has a finite value of ``metric``."""
    finite = [r for r in rows if math.isfinite(r["mean"].get(metric, float("nan")))]
    if not finite:
        raise ValueError(
            f"no sweep point has a finite {metric!r}; metrics present: "
            f"{sorted(rows[0]['mean']) if rows else []}. Set config.sweep.metric to one of them."
        )
    return min(finite, key=lambda r: r["mean"][metric])


def sampler_config(config, points: list[Point]):
    """``config`` with every branch a point uses switched on (the scales' values are traced)."""
    c = config.copy_and_resolve_references()
    c.sample.cfg_scale = 2.0 if any(p.cfg_scale != 1.0 for p in points) else 1.0
    c.sample.nag_scale = 1.0 if any(p.nag_scale != 0.0 for p in points) else 0.0
    c.sample.dog_scale = 2.0 if any(p.dog_scale != 1.0 for p in points) else 1.0
    c.sample.cfg_interval = FULL
    c.sample.nag_interval = FULL
    return c


class ParamsCache:
    """The params of each weights path (a point may name its own), paired with the pre-trained
    ones under Domain Guidance; a tree without the null noise token gets a zero one (only
    points with w_nag = 0 may use it)."""

    def __init__(self, config, default=None):
        self.config, self._cache = config, {}
        if default is not None:
            self._cache[""] = default

    def __call__(self, path: str):
        if path not in self._cache:
            c = self.config.copy_and_resolve_references()
            if path:
                c.model.weights = path
            params = dict(weights.load_params(samples.weights_path(c))[0])
            if c.model.null_noise == "learned" and "null_noise_token" not in params:
                params["null_noise_token"] = np.zeros((_hidden(params),), np.float32)
                params["__no_null_token__"] = True
            self._cache[path] = params
        return self._cache[path]


def _hidden(params) -> int:
    return int(np.shape(params["x_embedder"]["proj"]["kernel"])[-1])


def _check_point_params(point: Point, params) -> dict:
    params = dict(params)
    if params.pop("__no_null_token__", False) and point.nag_scale != 0.0:
        raise ValueError(
            f"sweep point {point.name!r} uses NAG (w_nag={point.nag_scale}) but its weights "
            f"{point.weights or 'config.model.weights'} have no null noise token (trained without "
            "noise-condition dropout); give it NAG-fine-tuned weights or w_nag=0."
        )
    return params


def run(config, workdir: str, **overrides) -> dict:
    """mode "sweep" (see the module docstring). Returns results.json's content.

    ``overrides`` (tests): model, params (the default weights' tree), mesh, extractor,
    reference (a ReferenceStats), on_point(n_done) called after each point is written.
    """
    schema.validate(config)
    parallel.maybe_initialize_distributed()
    sw = config.sweep
    points = points_of(sw)
    val_seeds = [int(s) for s in sw.val_seeds]
    rep_seeds = [int(s) for s in sw.report_seeds]
    if set(val_seeds) & set(rep_seeds):
        raise ValueError(
            f"config.sweep.val_seeds {val_seeds} and report_seeds {rep_seeds} overlap: the best "
            "point is chosen on val_seeds and reported on held-out seeds; make them disjoint."
        )
    n = int(sw.num_images)
    out_dir = as_path(workdir) / "sweep"
    point_dir = out_dir / "points"
    mesh = overrides.pop("mesh", None) or parallel.create_mesh(config.parallel)
    sconf = sampler_config(config, points)
    model = overrides.pop("model", None) or build.build_model(config.model)
    extractor = overrides.pop("extractor", None) or evaluators.build_extractor(config)
    ref = overrides.pop("reference", None) or evaluators.load_reference(config, extractor, workdir)
    on_point: Callable | None = overrides.pop("on_point", None)
    params_of = ParamsCache(config, overrides.pop("params", None))
    use_dog = float(sconf.sample.dog_scale) != 1.0
    if use_dog:
        domain = weights.load_params(config.model.domain_weights)[0] if use_dog else None

    def sampling_params(point: Point):
        p = _check_point_params(point, params_of(point.weights))
        if use_dog:
            return {build.MAIN: p, build.DOMAIN: build.domain_params_like(p, domain)}
        return p

    first = sampling_params(points[0])
    decode = build.build_decoder(config)
    bs = generate.padded_batch_size(int(config.eval.batch_size), mesh)
    run_batch = generate.make_batch_sampler(sconf, model, first, mesh, decode=decode, traced=True)
    identity = {**samples.sampling_identity(sconf), "extractor": extractor.name}
    identity["reference"] = config.eval.reference
    identity.pop("sample")  # the guidance part is the point's; the rest is kept:
    identity["sampler"] = {
        k: v
        for k, v in sconf.sample.to_dict().items()
        if k in ("sampler", "num_steps", "method", "diffusion_form", "last_step", "eta")
        or k in ("last_step_size", "cfg_channels", "labels", "dog_call")
    }
    timing = {"compile_s": None, "points": {}}

    def score_point(point: Point, seeds: list[int]) -> dict:
        params = sampling_params(point)
        fp = samples.params_fingerprint(params)
        key = digest({**identity, "params": fp, "point": dataclasses.asdict(point),
                      "seeds": seeds, "num_images": n})  # fmt: skip
        path = point_dir / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        placed = run_batch.place(params)
        guide = point.guide()
        if timing["compile_s"] is None:  # the one compilation, timed apart from sampling
            t0 = time.perf_counter()
            jax.block_until_ready(run_batch(placed, np.arange(bs), seeds[0], guide))
            timing["compile_s"] = time.perf_counter() - t0
        per_seed, sample_s = {}, 0.0
        for seed in seeds:
            t0 = time.perf_counter()
            batches = generate.iterate_batches(
                lambda idx, s=seed: run_batch(placed, idx, s, guide), np.arange(n), bs
            )
            got = list(batches)
            sample_s += time.perf_counter() - t0
            images = np.concatenate([b[1] for b in got])
            labels = np.concatenate([b[2] for b in got])
            for k, v in score_images(extractor, ref, images, labels, config).items():
                per_seed.setdefault(k, []).append(float(v))
        row = dict(
            key=key,
            point=dataclasses.asdict(point),
            name=point.name,
            seeds=seeds,
            num_images=n,
            per_seed=per_seed,
            mean={k: float(np.mean(v)) for k, v in per_seed.items()},
            se={k: _se(v) for k, v in per_seed.items()},
            sample_seconds=round(sample_s, 3),
            images_per_s=len(seeds) * n / sample_s,
            extractor=extractor.name,
            is_fid_inception=extractor.is_fid_inception,
        )
        row = json.loads(json.dumps(row))  # exactly what a resumed run reads back
        if jax.process_index() == 0:
            weights.write_json(path, row, force=True)
        return row

    metric = str(sw.metric)
    table_mode = not val_seeds
    rows = []
    for i, point in enumerate(points):
        row = score_point(point, rep_seeds if table_mode else val_seeds)
        rows.append(row)
        logging.info("sweep %d/%d %-40s %s", i + 1, len(points), point.name, _fmt(row["mean"]))
        if on_point is not None:
            on_point(i + 1)
    best = select_best(rows, metric)
    best_point = Point(**_point_fields(best["point"]))
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
            compile_s=timing["compile_s"],  # None when every point was already done
            compilations=1,
            images_per_s=[r["images_per_s"] for r in rows],
        ),
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    )
    if jax.process_index() == 0:
        weights.write_json(out_dir / "results.json", results, force=True)
        table = format_table(results)
        (out_dir / "table.md").write_text(table + "\n")
        plot_curves(results, out_dir / "curves.png")
        print(table, flush=True)
    return results


def _point_fields(d: dict) -> dict:
    d = dict(d)
    for f in ("cfg_interval", "nag_interval"):
        d[f] = tuple(d[f])
    return d


def _se(values) -> float | None:
    """Standard error over seeds (None for one seed)."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None


def _fmt(mean: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(mean.items()))


def score_images(extractor, reference, images, labels, config) -> dict:
    """Metrics of uint8 images (N, H, W, 3) against ``reference`` (evaluation machinery); with
    the demo's proxy classifier also ``class_accuracy`` (its logits' argmax == the label)."""
    ec = config.eval
    images = to_uint8(images) if images.dtype != np.uint8 else images
    feats = metrics_lib.extract_features(extractor, images, batch_size=int(ec.feature_batch_size))
    values = metrics_lib.compute_metrics(
        feats,
        reference,
        k=int(ec.pr_k),
        num_splits=min(int(ec.is_splits), len(images)),
        block_size=int(ec.pr_block_size),
    )
    if extractor.name.startswith("shapes_proxy") and "logits" in feats:
        values["class_accuracy"] = float(np.mean(np.argmax(feats["logits"], -1) == labels))
    return values


def format_table(results: dict) -> str:
    """Markdown: every point on the validation seeds, the choice, the held-out rows."""
    metric = results["metric"]
    keys = sorted(results["points"][0]["mean"]) if results["points"] else []
    shown = [k for k in (metric, "class_accuracy", "precision", "recall") if k in keys]
    head = " | ".join(results["metric_name"] if k == metric else k for k in shown)
    if results["val_seeds"]:
        what = (
            f"Validation seeds {results['val_seeds']} x {results['num_images']} images; "
            f"selection: lowest mean {metric} ({results['metric_name']})."
        )
    else:
        what = (
            f"Pre-registered points on report seeds {results['report_seeds']} x "
            f"{results['num_images']} images (mean +- SE over seeds); {metric} is "
            f"{results['metric_name']}."
        )
    lines = [
        what,
        "",
        f"| point | {head} | images/s |",
        "|---|" + "---|" * (len(shown) + 1),
    ]
    for r in results["points"]:
        cells = [_cell(r, k) for k in shown]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['images_per_s']:.1f} |")
    if not results["val_seeds"]:
        return "\n".join(lines)
    lines += [
        "",
        f"Best on validation: **{results['best']['name']}**",
        "",
        f"Held out (report seeds {results['report_seeds']}):",
        "",
        f"| point | {head} |",
        "|---|" + "---|" * len(shown),
    ]
    for r in results["held_out"]:
        cells = [_cell(r, k) for k in shown]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    se = row["se"][key]
    return f"{row['mean'][key]:.4g}" + (f" +- {se:.2g}" if se is not None else "")


def plot_curves(results: dict, path: str) -> None:
    """metric against s_cfg, one line per (w_nag, dog, intervals); and against w_nag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    rows = results["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, x_key, group_keys in (
        (axes[0], "cfg_scale", ("nag_scale", "dog_scale", "nag_interval")),
        (axes[1], "nag_scale", ("cfg_scale", "dog_scale", "nag_interval")),
    ):
        groups = {}
        for r in rows:
            p = r["point"]
            groups.setdefault(tuple(str(p[k]) for k in group_keys), []).append(r)
        if x_key == "nag_scale":  # w_nag = 0 has no interval: it starts every interval's line
            for r in rows:
                p = r["point"]
                for g, rs in groups.items():
                    same = g[:2] == (str(p["cfg_scale"]), str(p["dog_scale"]))
                    if p["nag_scale"] == 0.0 and same and r not in rs:
                        rs.append(r)
        for g, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["point"][x_key])
            if len(rs) < 2:
                continue
            label = ", ".join(f"{k.split('_')[0]}={v}" for k, v in zip(group_keys, g))
            ax.errorbar(
                [r["point"][x_key] for r in rs],
                [r["mean"][metric] for r in rs],
                yerr=[r["se"][metric] or 0.0 for r in rs],
                fmt="-o",
                ms=3,
                capsize=2,
                label=label,
            )
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{results['metric_name']} (validation seeds)")
        if ax.has_data():
            ax.legend(fontsize=6)
    fig.suptitle(f"best: {results['best']['name']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


__all__ = ["Point", "points_of", "select_best", "run"]
