"""Table 1 in miniature on real images: the real-image study's protocol (mode=study with
``study.scorer = "inception"``; configs/fmnist_study.py, nag_jax/jobs/study.py).

Rows are ``guidance_rows.Row`` sampled by a ``guidance_rows.RowSampler`` (image i of seed k is
the same image in every row: differences between rows are paired per seed) and scored by a
scorer with ``.metrics`` (``nag_jax.evaluation.real_scorer.RealImageScorer``: FID and KID with the
FID Inception against the test set and against train images, precision / recall, a classifier's
accuracy, the high-frequency energy relative to real images).

1. ``validate``: on the VALIDATION seeds only, each row's scale is the one with the lowest mean
   ``study.select`` (FID) among the scales that switch its guidance on:
   - CFG alone: s in ``study.cfg_scales``; NAG alone: w in ``study.nag_scales`` on the whole
     interval, then the interval (``study.nag_intervals``) at that w;
   - CFG + NAG **at the CFG row's s** (equal s: the pair compares adding NAG, not less CFG):
     w in {w_NAG / 2, w_NAG} on NAG's interval;
   - classifier-based NAG (a noise-level estimator's gradient, ``sample.nag_mode =
     "classifier"``): w in ``study.cls_nag_scales`` on ``study.cls_nag_interval``;
   - the controls: the unsharp-mask amount and the i.i.d. noise sigma (where NAG adds
     high-frequency energy) or the blur amount (where it removes some) that give the unguided
     images (validation seeds) the high-frequency energy (mean squared Laplacian,
     ``controls.laplacian_energy``) of the chosen NAG row's images. No guidance made them: a
     metric that rewards them as much as NAG cannot tell NAG from a texture change.
2. ``report_rows``: none, CFG, NAG, CFG+NAG (same s), cls-NAG and the three controls, at
   the validation choice, sampled on the REPORT seeds (the choice is written, and committed,
   before they are sampled: run the study with ``study.stop_after="validation"`` first).
3. ``verdict``: the rule stated before the run (``VERDICT_RULE``).

Time convention: SiT, t = 0 noise, t = 1 data; NAG intervals are noise levels (1 = noise).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from nag_jax.evaluation.guidance_rows import Row, evaluate_rows
from nag_jax.reporting import stats

# Paired comparisons of the report table ("a - b" over the same report seeds).
COMPARISONS = (
    ("NAG", "none"),
    ("CFG", "none"),
    ("CFG+NAG", "CFG"),
    ("NAG", "CFG"),
    ("cls-NAG", "none"),
    ("none + unsharp", "none"),
    ("none + noise", "none"),
    ("none + blur", "none"),
)
CONTROLS = ("none + unsharp", "none + noise", "none + blur")
# The claims the verdict tests: (difference, what it says when it holds).
CLAIMS = (
    ("NAG - none", "NAG alone improves on unguided sampling"),
    ("CFG+NAG - CFG", "adding NAG to CFG at the same s improves on CFG"),
    ("cls-NAG - none", "classifier-based NAG improves on unguided sampling"),
)
VERDICT_METRICS = ("fid", "kid")
VERDICT_RULE = (
    "A guidance row is said to help only where its paired gain (lower is better) in FID AND in "
    "KID against the test set exceeds 3 standard errors of the paired difference AND exceeds "
    "the gain of every control (none + unsharp mask, none + i.i.d. noise, none + blur, each "
    "matched to NAG's high-frequency energy on the validation seeds) in that metric. Otherwise "
    "the result is reported as null (or negative, where the row is worse by more than 3 SE)."
)


def _mean(res: dict, name: str, metric: str) -> float:
    return float(np.mean(res[name]["per_seed"][metric]))


def _best(res: dict, rows: list[Row], metric: str) -> Row:
    return min(rows, key=lambda r: _mean(res, r.name, metric))


def _curve(res: dict, rows: list[Row], metric: str, value) -> list[dict]:
    out = []
    for r in rows:
        m, se = stats.mean_se(res[r.name]["per_seed"][metric])
        out.append(dict(name=r.name, value=value(r), mean=m, se=se, interval=list(r.nag_interval)))
    return out


def validate(sampler, params, seeds, n: int, scorer, study) -> dict:
    """The validation choice (module docstring, step 1) on ``seeds`` x ``n`` images:
    ``{choice, curves: {axis: [{name, value, mean, se, interval}]}, per_seed}``; ``choice`` holds
    every scale, interval and control strength of ``report_rows``."""
    metric = str(study.select)
    res: dict = {}

    def run(rows):
        todo = list({r.name: r for r in rows if r.name not in res}.values())  # each row once
        res.update(evaluate_rows(sampler, params, todo, seeds, n, scorer))

    none = Row("none")
    cfg = [none] + [Row(f"cfg={s:g}", cfg_scale=float(s)) for s in study.cfg_scales if s != 1.0]
    nag = [none] + [Row(f"nag={w:g}", nag_scale=float(w)) for w in study.nag_scales if w != 0.0]
    run(cfg + nag)
    best_s = _best(res, cfg[1:], metric).cfg_scale
    best_w = _best(res, nag[1:], metric).nag_scale
    ivs = [tuple(float(v) for v in iv) for iv in study.nag_intervals]
    by_iv = [
        Row(f"nag={best_w:g}", nag_scale=best_w)
        if iv == (0.0, 1.0)
        else Row(f"nag={best_w:g} in {iv}", nag_scale=best_w, nag_interval=iv)
        for iv in ivs
    ]
    run(by_iv)
    nag_row = _best(res, by_iv, metric)
    iv = tuple(nag_row.nag_interval)
    joint = [
        Row(f"cfg={best_s:g}+nag={w:g}", cfg_scale=best_s, nag_scale=w, nag_interval=iv)
        for w in sorted({best_w / 2, best_w})
    ]
    cls_iv = tuple(float(v) for v in study.cls_nag_interval)
    cls = [
        Row(f"cls-nag={w:g}", nag_scale=float(w), nag_interval=cls_iv, nag_mode="classifier")
        for w in study.cls_nag_scales
    ]
    run(joint + cls)
    joint_w = _best(res, joint, metric).nag_scale
    cls_w = _best(res, cls, metric).nag_scale

    # Controls: match NAG's high-frequency energy on the same validation images.
    strengths, energies = match_controls(sampler, params, none, nag_row, seeds, n)
    choice = dict(
        select=metric,
        cfg_scale=best_s,
        nag_scale=best_w,
        nag_interval=list(iv),
        cfg_nag=[best_s, joint_w],
        cls_nag_scale=cls_w,
        cls_nag_interval=list(cls_iv),
        unsharp_amount=strengths["unsharp"],
        noise_sigma=strengths["noise"],
        blur_amount=strengths["blur"],
        hf_energy=energies,
    )
    logging.info("validation choice (lowest mean %s on seeds %s): %s", metric, list(seeds), choice)
    curves = dict(
        cfg=_curve(res, cfg, metric, lambda r: r.cfg_scale),
        nag=_curve(res, nag, metric, lambda r: r.nag_scale),
        nag_interval=_curve(res, by_iv, metric, lambda r: r.nag_scale),
        cfg_nag=_curve(res, joint, metric, lambda r: r.nag_scale),
        cls_nag=_curve(res, cls, metric, lambda r: r.nag_scale),
    )
    return dict(choice=choice, curves=curves, per_seed=res)


def match_controls(sampler, params, none: Row, nag: Row, seeds, n: int) -> tuple[dict, dict]:
    """The control strengths that give the ``none`` row's images the mean squared Laplacian of
    the ``nag`` row's images (``seeds`` x ``n`` images, pooled): ``({"unsharp": amount,
    "noise": sigma, "blur": amount}, {"none", "nag", "none + <control>": energy})``.

    A trivial transform on the guidance's side of the unguided images' energy: where NAG adds
    high-frequency energy, the unsharp mask and the noise are matched (blur 0); where it removes
    some, the blur is matched (unsharp and noise 0). A control that saturates (the clip to
    [-1, 1]) short of the target gets its largest strength, and its energy shows it. The noise
    is drawn with ``controls.noise_key(0)`` here; the report's noise rows use each seed's key
    (same sigma, other noise)."""
    from nag_jax.evaluation import controls

    # in [-1, 1], as scored (the samples overshoot it a little; every metric clips)
    none_images = np.clip(np.concatenate([sampler(none, params, s, n)[0] for s in seeds]), -1, 1)
    nag_images = np.clip(np.concatenate([sampler(nag, params, s, n)[0] for s in seeds]), -1, 1)
    target = float(controls.laplacian_energy(nag_images))
    base = float(controls.laplacian_energy(none_images))
    strengths, energies = {}, dict(none=base, nag=target)
    for transform, hi in (("unsharp", 8.0), ("noise", 0.5), ("blur", 1.0)):
        key = None if transform != "noise" else controls.noise_key(0)
        fn = lambda x, a, transform=transform, key=key: controls.apply(transform, x, a, key)  # noqa: E731
        if transform == "blur":  # energy falls with the amount: match 1 - amount
            up = lambda x, s, fn=fn: fn(x, 1.0 - s)  # noqa: E731
            strength = 0.0 if target >= base else 1.0 - _match(up, none_images, target, 1.0)
        else:
            strength = 0.0 if target <= base else _match(fn, none_images, target, hi)
        strengths[transform] = strength
        energies[f"none + {transform}"] = float(
            controls.laplacian_energy(fn(none_images, strength))
        )
    return strengths, energies


def _match(fn, images, target: float, hi: float) -> float:
    """`controls.match_strength` on [0, hi], or the end of [0, hi] nearest the target where the
    transform cannot reach it (saturation)."""
    from nag_jax.evaluation import controls

    if controls.laplacian_energy(fn(images, hi)) < target:
        return hi
    if controls.laplacian_energy(fn(images, 0.0)) > target:
        return 0.0
    return float(controls.match_strength(fn, images, target, lo=0.0, hi=hi))


def report_rows(choice: dict) -> list[Row]:
    """The report table's rows at the validation ``choice`` (module docstring, step 2)."""
    s, w = float(choice["cfg_scale"]), float(choice["nag_scale"])
    iv = tuple(float(v) for v in choice["nag_interval"])
    js, jw = (float(v) for v in choice["cfg_nag"])
    cls_iv = tuple(float(v) for v in choice["cls_nag_interval"])
    return [
        Row("none"),
        Row("CFG", cfg_scale=s),
        Row("NAG", nag_scale=w, nag_interval=iv),
        Row("CFG+NAG", cfg_scale=js, nag_scale=jw, nag_interval=iv),
        Row(
            "cls-NAG",
            nag_scale=float(choice["cls_nag_scale"]),
            nag_interval=cls_iv,
            nag_mode="classifier",
        ),  # fmt: skip
        Row("none + unsharp", transform="unsharp", strength=float(choice["unsharp_amount"])),
        Row("none + noise", transform="noise", strength=float(choice["noise_sigma"])),
        Row("none + blur", transform="blur", strength=float(choice.get("blur_amount", 0.0))),
    ]


def verdict(summary: dict, metrics=VERDICT_METRICS, z: float = 3.0) -> dict:
    """``VERDICT_RULE`` applied to a report table's ``summary`` (``stats.summarize_rows``):
    ``{claim: {holds, reason, gains: {metric: {gain, se, t, dof, control_gain}}}}`` plus the
    NAG-vs-CFG comparison ("NAG w/o CFG ~ CFG": equal within 3 SE, or which is lower).

    Gains are minus the paired difference (lower FID / KID is better); the controls' gain is
    the larger of the two controls' gains over "none"."""
    diffs = summary["differences"]
    out = {}
    for label, claim in CLAIMS:
        if label not in diffs:
            continue
        gains, ok, why = {}, True, []
        for m in metrics:
            d = diffs[label][m]
            ctrl = 0.0 + max(  # + 0.0: no "-0" for a control at strength 0
                -diffs[f"{c} - none"][m]["mean"] for c in CONTROLS if f"{c} - none" in diffs
            )
            gain = -d["mean"]
            gains[m] = dict(gain=gain, se=d["se"], t=d["t"], dof=d["dof"], control_gain=ctrl)
            if not gain > z * d["se"]:
                ok = False
                why.append(f"{m} gain {gain:.4g} is not > {z:g} SE ({z * d['se']:.4g})")
            if not gain > ctrl:
                ok = False
                why.append(f"{m} gain {gain:.4g} is not > the best control's {ctrl:.4g}")
        worse = all(g["gain"] < -z * g["se"] for g in gains.values())
        status = "helps" if ok else ("hurts" if worse else "null")
        out[label] = dict(claim=claim, status=status, holds=ok, reasons=why, gains=gains)
    if "NAG - CFG" in diffs:
        d = diffs["NAG - CFG"]
        same = {m: abs(d[m]["mean"]) <= z * d[m]["se"] for m in metrics}
        out["NAG - CFG"] = dict(
            claim="NAG without CFG is as good as CFG (each at its validation scale)",
            equal_within_3se=same,
            differences={m: {k: d[m][k] for k in ("mean", "se", "t", "dof")} for m in metrics},
        )
    return out


def verdict_lines(v: dict) -> list[str]:
    """Markdown bullet lines of ``verdict``'s result."""
    lines = [f"Rule (stated before the report seeds were sampled): {VERDICT_RULE}", ""]
    lines += [
        "Gains are minus the paired difference (positive = lower FID / KID than the baseline); "
        "t is the gain over its SE, with seeds - 1 degrees of freedom.",
        "",
    ]
    for label, r in v.items():
        if "status" in r:
            g = ", ".join(
                f"{m}: gain {x['gain']:+.4g} +- {x['se']:.2g} (t = {-x['t']:+.1f}, {x['dof']} dof; "
                f"best control's gain {x['control_gain']:+.4g})"
                for m, x in r["gains"].items()
            )
            lines.append(f"- **{label}: {r['status']}**. {g}.")
        else:
            d = ", ".join(
                f"{m}: {x['mean']:+.4g} +- {x['se']:.2g} (t = {x['t']:+.1f}, {x['dof']} dof)"
                for m, x in r["differences"].items()
            )
            eq = "equal within 3 SE" if all(r["equal_within_3se"].values()) else "not equal"
            lines.append(f"- **{label}** ({r['claim']}): {eq}; {d}.")
    return lines
