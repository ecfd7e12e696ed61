"""A guidance grid scored with ONE compiled sampler, point by point (mode "sweep").

A ``Point`` is one guidance setting (s_cfg, w_nag, the DoG scale, the CFG and NAG intervals in
noise levels, optionally its own weights). ``sampler_config`` switches on every branch any point
uses; the scales and intervals are traced arguments of that one sampler
(``generate.make_batch_sampler(traced=True)``), so every point and seed run one executable.
``PointScorer`` samples a point on seeds (image i of seed s, ``nag_jax.sampling.generate``: the
same images at every point, so differences between points are guidance only), scores each seed
(``evaluators.score_images``) and writes the point's row atomically to
``<point_dir>/<key>.json``; the key hashes the sampling identity, the params' fingerprint, the
point, the seeds and N, so a rerun reads the row back instead of sampling again.

Time convention: intervals are noise levels (1 = pure noise); models keep their family's time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import jax
import numpy as np

from nag_jax.evaluation import evaluators
from nag_jax.evaluation.results import digest
from nag_jax.evaluation.samples import params_fingerprint, sampling_identity, weights_path
from nag_jax.reporting import stats
from nag_jax.sampling import build, generate
from nag_jax.storage import weights

FULL = (0.0, 1.0)
# sample.* keys of the sampling identity a point shares with every other point
_SAMPLER_KEYS = ("sampler", "num_steps", "method", "diffusion_form", "last_step", "eta")
_SAMPLER_KEYS += ("last_step_size", "cfg_channels", "labels", "dog_call")


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

    @classmethod
    def from_dict(cls, d: dict) -> Point:
        """A point from its ``dataclasses.asdict`` (JSON lists back to interval tuples)."""
        d = dict(d)
        for f in ("cfg_interval", "nag_interval"):
            d[f] = tuple(d[f])
        return cls(**d)

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
    points with w_nag = 0 may use it: `PointParams` checks)."""

    def __init__(self, config, default=None):
        self.config, self._cache = config, {}
        if default is not None:
            self._cache[""] = default

    def __call__(self, path: str):
        if path not in self._cache:
            c = self.config.copy_and_resolve_references()
            if path:
                c.model.weights = path
            params = dict(weights.load_params(weights_path(c))[0])
            if c.model.null_noise == "learned" and "null_noise_token" not in params:
                hidden = int(np.shape(params["x_embedder"]["proj"]["kernel"])[-1])
                params["null_noise_token"] = np.zeros((hidden,), np.float32)
                params["__no_null_token__"] = True
            self._cache[path] = params
        return self._cache[path]


class PointParams:
    """``point -> params`` the one sampler of ``sconf`` takes: the point's weights
    (`ParamsCache`), paired with ``config.model.domain_weights`` under Domain Guidance.
    Refuses a NAG point whose weights have no null noise token."""

    def __init__(self, config, sconf, default=None):
        self.cache = ParamsCache(config, default)
        self.use_dog = float(sconf.sample.dog_scale) != 1.0
        if self.use_dog:
            self.domain = weights.load_params(config.model.domain_weights)[0]

    def __call__(self, point: Point):
        params = dict(self.cache(point.weights))
        if params.pop("__no_null_token__", False) and point.nag_scale != 0.0:
            raise ValueError(
                f"sweep point {point.name!r} uses NAG (w_nag={point.nag_scale}) but its weights "
                f"{point.weights or 'config.model.weights'} have no null noise token (trained "
                "without noise-condition dropout); give it NAG-fine-tuned weights or w_nag=0."
            )
        if self.use_dog:
            return {build.MAIN: params, build.DOMAIN: build.domain_params_like(params, self.domain)}
        return params


class PointScorer:
    """``scorer(point, seeds) -> row``: samples ``num_images`` images per seed with the one
    compiled sampler ``run_batch`` (batches of ``batch_size``), scores each seed against
    ``reference`` and returns (and, on process 0, writes to ``point_dir``) the point's row:
    per-seed metrics, their mean and SE over seeds (``reporting.stats``; one seed: nan), the
    sampling seconds and images/s. A row already on disk is read back instead.
    ``compile_s``: the seconds of the one compilation (None until a point was sampled)."""

    def __init__(self, config, sconf, run_batch, params_of, extractor, reference, point_dir,
                 num_images: int, batch_size: int):  # fmt: skip
        self.config, self.run_batch, self.params_of = config, run_batch, params_of
        self.extractor, self.reference, self.point_dir = extractor, reference, point_dir
        self.n, self.bs = int(num_images), int(batch_size)
        identity = {**sampling_identity(sconf), "extractor": extractor.name}
        identity["reference"] = config.eval.reference
        identity.pop("sample")  # the guidance part is the point's; the rest is kept:
        identity["sampler"] = {
            k: v for k, v in sconf.sample.to_dict().items() if k in _SAMPLER_KEYS
        }
        self.identity = identity
        self.compile_s = None

    def __call__(self, point: Point, seeds: list[int]) -> dict:
        params = self.params_of(point)
        key = digest({**self.identity, "params": params_fingerprint(params),
                      "point": dataclasses.asdict(point), "seeds": seeds,
                      "num_images": self.n})  # fmt: skip
        path = self.point_dir / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        placed = self.run_batch.place(params)
        guide = point.guide()
        if self.compile_s is None:  # the one compilation, timed apart from sampling
            t0 = time.perf_counter()
            jax.block_until_ready(self.run_batch(placed, np.arange(self.bs), seeds[0], guide))
            self.compile_s = time.perf_counter() - t0
        per_seed, sample_s = {}, 0.0
        for seed in seeds:
            t0 = time.perf_counter()
            batches = generate.iterate_batches(
                lambda idx, s=seed: self.run_batch(placed, idx, s, guide), np.arange(self.n),
                self.bs,
            )  # fmt: skip
            got = list(batches)
            sample_s += time.perf_counter() - t0
            images = np.concatenate([b[1] for b in got])
            labels = np.concatenate([b[2] for b in got])
            values = evaluators.score_images(
                self.extractor, self.reference, images, labels, self.config
            )
            for k, v in values.items():
                per_seed.setdefault(k, []).append(float(v))
        row = dict(
            key=key,
            point=dataclasses.asdict(point),
            name=point.name,
            seeds=seeds,
            num_images=self.n,
            per_seed=per_seed,
            mean={k: stats.mean_se(v)[0] for k, v in per_seed.items()},
            se={k: stats.standard_error(v) for k, v in per_seed.items()},
            sample_seconds=round(sample_s, 3),
            images_per_s=len(seeds) * self.n / sample_s,
            extractor=self.extractor.name,
            is_fid_inception=self.extractor.is_fid_inception,
        )
        row = json.loads(json.dumps(row))  # exactly what a resumed run reads back
        if jax.process_index() == 0:
            weights.write_json(path, row, force=True)
        return row
