"""Guidance rows scored on paired seeds: the demo's table and the demo study's protocol.

A ``Row`` is one guidance setting (s_cfg, w_nag, the NAG interval, the sampler's steps).
``RowSampler`` samples image 0..N-1 of a seed under a row (image identity of
``nag_jax.sampling.generate``: key ``image_keys(seed, i)``, label ``i % num_classes``), so every
row draws the SAME images and rows differ only by guidance: a difference between rows is
measured per seed (paired, ``nag_jax.reporting.stats``). ``evaluate_rows`` scores rows x seeds
with a scorer (the demo's proxy, ``nag_jax.evaluation.proxy.ProxyScorer``); ``scale_curves``
chooses scales on validation seeds and ``report_table`` reports rows on held-out seeds.

Why here and not in ``sampling``: this is the evaluation protocol over seeds (which images, which
rows, how scored and compared); the sampler itself is ``build.build_sampler``.

Time convention: SiT, t = 0 noise, t = 1 data; NAG intervals are noise levels (1 = noise).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.reporting import stats, tables
from nag_jax.sampling import build, generate

METRICS = tables.ROW_METRICS  # what a scorer returns: class_accuracy, proxy_fd, precision, recall
COMPARISONS = (("NAG", "none"), ("CFG", "none"), ("CFG+NAG", "CFG"), ("CFG+NAG", "NAG"))


@dataclasses.dataclass(frozen=True)
class Row:
    """One guidance setting: scales, the NAG interval (noise levels) and the sampler's steps."""

    name: str
    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    nag_interval: tuple[float, float] = (0.0, 1.0)
    num_steps: int | None = None  # None: config.sample.num_steps
    nag_mode: str = "token"  # "token" (the null noise token) or "classifier" (sample.estimator)
    # A control: this row's images, then ``nag_jax.evaluation.controls`` (``"unsharp"`` with
    # amount ``strength``, ``"noise"`` with sigma ``strength``); "" = none. No guidance made it.
    transform: str = ""
    strength: float = 0.0

    @property
    def sampling_key(self) -> tuple:
        """What fixes the sampled images (not the transform): rows with equal keys draw equal
        images on a seed."""
        return (self.cfg_scale, self.nag_scale, tuple(self.nag_interval), self.num_steps,
                self.nag_mode)  # fmt: skip

    @classmethod
    def from_config(cls, entry) -> Row:
        """``(name, s_cfg, w_nag)`` or a dict with Row's fields -> Row."""
        if isinstance(entry, dict) or hasattr(entry, "to_dict"):
            d = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
            if "nag_interval" in d:
                d["nag_interval"] = tuple(float(v) for v in d["nag_interval"])
            return cls(**d)
        name, cfg_scale, nag_scale = entry
        return cls(str(name), float(cfg_scale), float(nag_scale))


def image_batch(seed: int, num_images: int, num_classes: int):
    """(keys (N,), labels (N,) int32) of images 0..N-1 of ``seed``: the
    ``nag_jax.sampling.generate`` identity with the class table cycled (label = i % num_classes,
    every class equally often)."""
    indices = np.arange(num_images)
    labels = generate.image_labels(seed, indices, num_classes, range(num_classes))
    return generate.image_keys(seed, indices), labels


class RowSampler:
    """Samples rows with one compiled sampler per branch set (the scales are traced).

    CFG and NAG branches are switched on statically by whether a row uses them (an off branch is
    not computed); the scale values are run-time arguments, so a sweep over scales compiles once.
    Keys and labels are sharded along the batch over the local devices
    (``parallel.create_mesh(config.parallel)``), params replicated.
    """

    def __init__(self, config, model):
        self.config, self.model = config, model
        self._compiled = {}
        self.mesh = parallel.create_mesh(config.parallel, jax.local_devices())
        self._placed = (None, None)  # (the params given, their replicated copy)
        self._images = {}  # (sampling key, seed, N) -> (params, (images, labels, images/s))

    def _replicated(self, params):
        if self._placed[0] is not params:
            self._placed = (params, jax.device_put(params, parallel.replicated(self.mesh)))
        return self._placed[1]

    def _fn(self, row: Row, params, keys, labels):
        steps = int(row.num_steps or self.config.sample.num_steps)
        sig = (row.cfg_scale != 1.0, row.nag_scale != 0.0, row.nag_interval, steps, len(labels))
        sig += (row.nag_mode,)
        if sig not in self._compiled:
            c = self.config.copy_and_resolve_references()
            c.sample.cfg_scale = 2.0 if sig[0] else 1.0  # any value that switches the branch on
            c.sample.nag_scale = 1.0 if sig[1] else 0.0
            c.sample.nag_mode = row.nag_mode
            c.sample.nag_interval = row.nag_interval
            c.sample.num_steps = steps
            fn = jax.jit(build.build_sampler(c, self.model))
            scales = (jnp.float32(1.0), jnp.float32(0.0))
            start = time.perf_counter()
            compiled = fn.lower(params, keys, labels, scales).compile()
            logging.info(
                "compiled sampler %s in %.1fs",
                dict(zip(("cfg", "nag", "interval", "steps", "batch"), sig)),
                time.perf_counter() - start,
            )
            self._compiled[sig] = compiled
        return self._compiled[sig]

    def __call__(self, row: Row, params, seed: int, num_images: int):
        """(images (N, H, W, C) numpy float32, labels (N,) numpy, images/s of the sampler).

        A control row (``row.transform``) takes the images of its sampling settings (sampled
        once per seed and kept: the control of "none" reuses the "none" row's images) and
        applies the transform (``nag_jax.evaluation.controls.apply``; the noise control's key
        derives from the seed)."""
        cache_key = (row.sampling_key, int(seed), int(num_images))
        held = self._images.get(cache_key)
        if held is None or held[0] is not params:  # the memo holds the params it was made with
            if len(self._images) >= 64:  # a bounded memo: the oldest goes first
                self._images.pop(next(iter(self._images)))
            self._images[cache_key] = held = (params, self._sample(row, params, seed, num_images))
        images, labels, ips = held[1]
        if row.transform:
            from nag_jax.evaluation import controls

            key = controls.noise_key(seed)
            images = np.asarray(controls.apply(row.transform, images, row.strength, key))
        return images, labels, ips

    def _sample(self, row: Row, params, seed: int, num_images: int):
        params = self._replicated(params)
        keys, labels = jax.device_put(
            image_batch(seed, num_images, int(self.model.num_classes)),
            parallel.batch_sharding(self.mesh),
        )
        fn = self._fn(row, params, keys, labels)
        scales = (jnp.float32(row.cfg_scale), jnp.float32(row.nag_scale))
        start = time.perf_counter()
        images = jax.block_until_ready(fn(params, keys, labels, scales))
        seconds = time.perf_counter() - start
        return np.asarray(images), np.asarray(labels), num_images / seconds


def evaluate_rows(
    sampler: RowSampler, params, rows, seeds, num_images: int, scorer, on_images=None
) -> dict:
    """Samples every row on every seed and scores it: {row name: {row, per_seed: {metric:
    [value per seed]}}} (metrics: ``METRICS`` and images_per_sec).

    The same seed gives the same images (keys, labels) in every row, so per-seed differences
    between rows are paired. ``on_images(row, seed, images, labels)``, if given, sees every batch
    (the demo draws its grids from the first seed's images instead of sampling them again).
    """
    metrics = getattr(scorer, "metrics", METRICS)
    out = {}
    for row in rows:
        per = {m: [] for m in (*metrics, "images_per_sec")}
        for seed in seeds:
            images, labels, ips = sampler(row, params, seed, num_images)
            if on_images is not None:
                on_images(row, seed, images, labels)
            for m, v in scorer(images, labels).items():
                per.setdefault(m, []).append(float(v))
            per["images_per_sec"].append(float(ips))
        out[row.name] = dict(row=dataclasses.asdict(row), per_seed=per)
        ms = {m: stats.mean_se(per[m]) for m in metrics}
        logging.info(
            "%-10s %s", row.name, ", ".join(f"{m} {v[0]:.4g}+-{v[1]:.2g}" for m, v in ms.items())
        )
    return out


def report_table(
    sampler, params, rows, seeds, n, scorer, comparisons=COMPARISONS, on_images=None
) -> dict:
    """Rows on ``seeds``: {results, summary (``stats.summarize_rows``), table (markdown)}.
    The metrics are the scorer's (``scorer.metrics``; the demo's proxy: ``METRICS``);
    ``on_images`` as in ``evaluate_rows``."""
    metrics = getattr(scorer, "metrics", METRICS)
    res = evaluate_rows(sampler, params, rows, seeds, n, scorer, on_images)
    summary = stats.summarize_rows(res, comparisons, metrics)
    table = tables.guidance_rows_table(res, summary, len(seeds), n, metrics)
    return dict(results=res, summary=summary, table=table)


def _fd(point: dict) -> float:
    return point["proxy_fd"]


def _point(row: Row, res: dict, axis: str) -> dict:
    per = res["per_seed"]
    fd_mean, fd_se = stats.mean_se(per["proxy_fd"])
    return dict(
        value=row.cfg_scale if axis == "cfg" else row.nag_scale,
        proxy_fd=fd_mean,
        proxy_fd_se=fd_se,
        class_accuracy=float(np.mean(per["class_accuracy"])),
        precision=float(np.mean(per["precision"])),
        recall=float(np.mean(per["recall"])),
    )


def scale_curves(sampler, params, seeds, n, scorer, study) -> dict:
    """Validation curves on ``seeds`` and the choice of scales (``study``: config.study with
    cfg_scales, nag_scales, nag_intervals): {curves: {axis: [points]}, choice, per_seed}.

    Each row's scale is the one with the lowest mean proxy FD among the scales that switch its
    guidance ON (s > 1, w > 0): the off value is the baseline row, not a candidate. The NAG
    interval is chosen at the best w; CFG+NAG on a 2 x 2 grid of each best scale and its half
    (guidance terms add up, so the joint optimum is usually at smaller scales than each alone).
    """
    curves, results = {}, {}
    axes = {
        "cfg": [Row(f"cfg={s:g}", cfg_scale=s) for s in study.cfg_scales],
        "nag": [Row(f"nag={w:g}", nag_scale=w) for w in study.nag_scales],
    }
    for axis, rows in axes.items():
        res = evaluate_rows(sampler, params, rows, seeds, n, scorer)
        results.update(res)
        curves[axis] = [_point(r, res[r.name], axis) for r in rows]
    best_s = min((p for p in curves["cfg"] if p["value"] != 1.0), key=_fd)["value"]
    best_w = min((p for p in curves["nag"] if p["value"] != 0.0), key=_fd)["value"]
    rows = [
        Row(f"nag={best_w:g} in {tuple(iv)}", nag_scale=best_w, nag_interval=tuple(iv))
        for iv in study.nag_intervals
    ]
    res = evaluate_rows(sampler, params, rows, seeds, n, scorer)
    results.update(res)
    curves["nag_interval"] = [
        dict(_point(r, res[r.name], "nag"), interval=list(r.nag_interval)) for r in rows
    ]
    best_iv = tuple(min(curves["nag_interval"], key=_fd)["interval"])
    cfg_grid = sorted({best_s, 1.0 + (best_s - 1.0) / 2})
    nag_grid = sorted({best_w, best_w / 2})
    grid = [
        Row(f"cfg={s:g}+nag={w:g}", cfg_scale=s, nag_scale=w, nag_interval=best_iv)
        for s in cfg_grid
        for w in nag_grid
    ]
    res = evaluate_rows(sampler, params, grid, seeds, n, scorer)
    results.update(res)
    curves["cfg_nag"] = [dict(_point(r, res[r.name], "cfg"), nag_scale=r.nag_scale) for r in grid]
    best_joint = min(curves["cfg_nag"], key=_fd)
    choice = dict(
        cfg_scale=best_s,
        nag_scale=best_w,
        nag_interval=list(best_iv),
        cfg_nag=(best_joint["value"], best_joint["nag_scale"]),
    )
    logging.info("validation choice (lowest mean proxy FD on seeds %s): %s", list(seeds), choice)
    return dict(curves=curves, choice=choice, per_seed=results)


def table_rows(choice: dict) -> list[Row]:
    """none / CFG / NAG / CFG+NAG at the scales of ``choice`` (`scale_curves`)."""
    s, w = choice["cfg_scale"], choice["nag_scale"]
    iv = tuple(choice["nag_interval"])
    js, jw = choice["cfg_nag"]
    return [
        Row("none"),
        Row("CFG", cfg_scale=s),
        Row("NAG", nag_scale=w, nag_interval=iv),
        Row("CFG+NAG", cfg_scale=js, nag_scale=jw, nag_interval=iv),
    ]
