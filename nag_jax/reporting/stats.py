"""Statistics over seeds: means, standard errors, paired differences and their t statistic.

Every job that reports a number over several sampling seeds (demo, study, sweep, noise_shift)
uses these functions, so one seed means the same thing everywhere:

    standard error  SE = sd / sqrt(n), sd with ddof = 1 (the sample standard deviation);
    one value (n = 1): SE = nan, and a t statistic built from it is nan (no spread is known;
    tables print ``nan`` and figures draw no error bar);
    paired difference of a - b over the SAME seeds: the mean of the per-seed differences, the SE
    of those differences (smaller than combining the rows' SEs when the seeds are shared), and
    t = mean / SE with n - 1 degrees of freedom (nan when SE is 0 or nan).

No time convention (plain numbers).
"""

from __future__ import annotations

import numpy as np

from nag_jax.errors import ConfigError


def standard_error(values, axis: int = 0):
    """SE of the mean along ``axis``: ``std(ddof=1) / sqrt(n)``; nan where ``n < 2``.

    ``values``: (n,) or (n, ...) numbers, n = seeds (or batches). Returns a float for 1-D input,
    else an array of the remaining shape. Computed in float64.
    """
    v = np.asarray(values, np.float64)
    n = v.shape[axis]
    if n < 2:
        se = np.full(np.delete(v.shape, axis), np.nan)
    else:
        se = v.std(axis=axis, ddof=1) / np.sqrt(n)
    return float(se) if np.ndim(se) == 0 else se


def mean_se(values) -> tuple[float, float]:
    """(mean, SE) of 1-D ``values`` (float64); SE is nan for one value (module docstring)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), standard_error(v)


def paired_difference(a, b) -> dict:
    """``a - b`` over the same seeds (a[i], b[i] from seed i): ``{mean, se, t, dof}``.

    ``t = mean / se`` is the paired t statistic with ``dof = n - 1`` degrees of freedom (the
    statistic of ``scipy.stats.ttest_rel(a, b)``); nan when ``se`` is 0 or nan (one seed).
    """
    d = np.subtract(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if d.ndim != 1:
        raise ValueError(f"paired_difference needs 1-D per-seed values, got shape {d.shape}")
    mean, se = mean_se(d)
    return dict(mean=mean, se=se, t=mean / se if se > 0 else float("nan"), dof=len(d) - 1)


def summarize_rows(results: dict, comparisons, metrics) -> dict:
    """Means and SEs of every row's metrics, and paired differences of ``metrics`` between rows.

    ``results``: ``{row name: {"per_seed": {metric: [value per seed]}}}`` (every row on the same
    seeds); ``comparisons``: ``[(a, b), ...]`` row names (a pair naming an absent row is
    skipped). Returns ``{"rows": {name: {metric: {mean, se}}}, "differences": {"a - b":
    {metric: {mean, se, t, dof}}}}``.
    """
    summary = {"rows": {}, "differences": {}}
    for name, r in results.items():
        summary["rows"][name] = {
            m: dict(zip(("mean", "se"), mean_se(v))) for m, v in r["per_seed"].items()
        }
    for a, b in comparisons:
        if a not in results or b not in results:
            continue
        pa, pb = results[a]["per_seed"], results[b]["per_seed"]
        summary["differences"][f"{a} - {b}"] = {m: paired_difference(pa[m], pb[m]) for m in metrics}
    return summary


def held_out_seeds(section, name: str) -> tuple[list[int], list[int]]:
    """``(val_seeds, report_seeds)`` of a config section (``config.study``, ``config.sweep``):
    scales are chosen on the validation seeds and reported on the others, so the two lists must
    be disjoint (ConfigError naming both otherwise)."""
    val = [int(s) for s in section.val_seeds]
    rep = [int(s) for s in section.report_seeds]
    if set(val) & set(rep):
        raise ConfigError(
            f"config.{name}.val_seeds {val} and config.{name}.report_seeds {rep} overlap: scales "
            "are chosen on val_seeds and reported on held-out seeds; make them disjoint."
        )
    return val, rep
