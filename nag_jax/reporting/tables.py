"""Markdown tables and reports of the jobs (text only; the jobs write it to their workdir).

``markdown_table`` is the one table layout (``| a | b |`` rows under a ``|---|`` rule);
``pm`` the one ``mean +- SE`` cell. Statistics come from ``nag_jax.reporting.stats`` (one seed:
SE = nan, printed as ``nan``; the sweep prints no SE then). Noise levels are the paper's lambda
(1 = pure noise).
"""

from __future__ import annotations

import math

ROW_METRICS = ("class_accuracy", "proxy_fd", "precision", "recall")
# Every metric a guidance-row scorer may return: (column name, format, t shown in differences).
_METRIC_COLUMNS = {
    "class_accuracy": ("class acc", ".3f", False),
    "proxy_fd": ("proxy FD", ".2f", True),
    "fid": ("FID", ".2f", True),
    "kid": ("KID x 1e3", ".2f", True),
    "fid_train": ("FID (train)", ".2f", False),
    "kid_train": ("KID (train) x 1e3", ".2f", False),
    "precision": ("precision", ".3f", False),
    "recall": ("recall", ".3f", False),
    "hf_energy": ("HF energy / real", ".3f", False),
}
_SCALED = {"kid": 1e3, "kid_train": 1e3}  # shown x 1e3


def markdown_table(header, rows) -> list[str]:
    """Lines of a markdown table: ``header`` (cells), the rule, one line per row of cells."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def pm(mean: float, se: float, spec: str, sign: str = "") -> str:
    """``mean +- se`` with the format ``spec`` (e.g. ``.3f``); ``sign="+"`` signs the mean."""
    return f"{mean:{sign}{spec}} +- {se:{spec}}"


def guidance_rows_table(
    results: dict, summary: dict, num_seeds: int, num_images: int, metrics=ROW_METRICS
) -> str:
    """One line per guidance row (mean +- SE over seeds of ``metrics`` and the images/s), then
    the paired differences with the t statistic (dof = seeds - 1) of the FD-like metrics.

    ``results``: ``{name: {"row": Row fields, "per_seed": ...}}``; ``summary``:
    ``nag_jax.reporting.stats.summarize_rows`` of it. The demo's table is ``metrics =
    ROW_METRICS`` (its headers keep the demo's "proxy FD (z)").
    """
    cols = [_METRIC_COLUMNS[m] for m in metrics]

    def cell(d: dict, m: str, sign: str = "") -> str:
        k = _SCALED.get(m, 1.0)
        return pm(d[m]["mean"] * k, d[m]["se"] * k, _METRIC_COLUMNS[m][1], sign)

    lines = [f"mean +- standard error over {num_seeds} seeds x {num_images} images", ""]
    header = ["setting", "s_cfg", "w_nag", *(c[0] for c in cols)]
    body = []
    for name, r in results.items():
        s, row = summary["rows"][name], r["row"]
        nag = f"{row['nag_scale']:g}"
        if row["nag_scale"] and tuple(row["nag_interval"]) != (0.0, 1.0):
            nag += " on [{:g}, {:g}]".format(*row["nag_interval"])
        if row.get("nag_mode", "token") == "classifier" and row["nag_scale"]:
            nag += " (classifier)"
        if row.get("transform"):
            nag += f"; {row['transform']} {row['strength']:.3g}"
        ips = f"{s['images_per_sec']['mean']:.1f}"
        body.append([name, f"{row['cfg_scale']:g}", nag, *(cell(s, m) for m in metrics), ips])
    lines += markdown_table([*header, "images/s"], body)
    if summary["differences"]:
        t_name = " (z)" if tuple(metrics) == ROW_METRICS else " (t)"
        header = ["paired difference", *(c[0] + (t_name if c[2] else "") for c in cols)]
        body = []
        for label, d in summary["differences"].items():
            cells = []
            for m, c in zip(metrics, cols):
                cells.append(cell(d, m, "+") + (f" ({d[m]['t']:+.1f})" if c[2] else ""))
            body.append([label, *cells])
        lines += [""] + markdown_table(header, body)
    return "\n".join(lines)


def _sweep_cell(row: dict, key: str) -> str:
    se = row["se"][key]
    shown = se is not None and math.isfinite(se)  # one seed: no SE to show
    return f"{row['mean'][key]:.4g}" + (f" +- {se:.2g}" if shown else "")


def sweep_table(results: dict) -> str:
    """The sweep's markdown: every point on the validation seeds, the choice, the held-out rows
    (``results``: the sweep's results.json)."""
    metric = results["metric"]
    keys = sorted(results["points"][0]["mean"]) if results["points"] else []
    shown = [k for k in (metric, "class_accuracy", "precision", "recall") if k in keys]
    head = [results["metric_name"] if k == metric else k for k in shown]
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
    body = [
        [r["name"], *(_sweep_cell(r, k) for k in shown), f"{r['images_per_s']:.1f}"]
        for r in results["points"]
    ]
    lines = [what, ""] + markdown_table(["point", *head, "images/s"], body)
    if not results["val_seeds"]:
        return "\n".join(lines)
    lines += [
        "",
        f"Best on validation: **{results['best']['name']}**",
        "",
        f"Held out (report seeds {results['report_seeds']}):",
        "",
    ]
    body = [[r["name"], *(_sweep_cell(r, k) for k in shown)] for r in results["held_out"]]
    lines += markdown_table(["point", *head], body)
    return "\n".join(lines)


def study_report(results: dict, figs: list[str]) -> str:
    """The demo study's report.md (``results``: its results.json; ``figs``: figure files)."""
    r = results
    lines = ["# Demo study: NAG on the shapes model", ""]
    lines.append(f"Validation choice (seeds {r['val_seeds']}): `{r['validation']['choice']}`")
    lines += ["", "## Table 1 in miniature (report seeds, fine-tuned model)", ""]
    lines.append(r["table"]["table"])
    lines += ["", "## Recipe", ""]
    for name, t in r.get("recipe", {}).items():
        lines += [f"### {name}", "", t["table"], ""]
    lines += ["## Sampler steps", ""]
    for s, t in r["steps"].items():
        lines += [f"### {s} steps", "", t["table"], ""]
    lines += ["## Noise shift", "", f"estimator: {r['noise_shift']['estimator']}", ""]
    body = [
        [name, pm(s["late"]["mean"], s["late"]["se"], ".4f", "+"),
         pm(s["all"]["mean"], s["all"]["se"], ".4f", "+")]
        for name, s in r["noise_shift"]["rows"].items()
    ]  # fmt: skip
    lines += markdown_table(["row", "shift late (λ<=0.25)", "shift all"], body)
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figs]
    lines += ["", f"Elapsed: {r['elapsed_s']:.0f} s on {r['devices']}."]
    return "\n".join(lines) + "\n"


def shift_report(results: dict, figs: list[str]) -> str:
    """mode=noise_shift's report.md (``results``: its results.json; ``figs``: figure files)."""
    r = results
    lines = [f"# Noise shift: {r['model']} ({r['sampler']})", ""]
    lines += [f"Estimator: `{r['estimator']}`", ""]
    body = [
        [name, f"{s['late']:+.4f}", f"{s['all']:+.4f}", f"{s['abs_all']:.4f}"]
        for name, s in r["rows"].items()
    ]
    header = ["row", f"shift late (λ<={r['late']:g})", "shift all", "|shift| all"]
    lines += markdown_table(header, body)
    lines += ["", f"{r['num_images']} images per row; elapsed {r['elapsed_s']:.0f} s on "]
    lines[-1] += f"{r['devices']}."
    lines += [""] + [f"![{f}]({f})" for f in figs]
    return "\n".join(lines) + "\n"
