"""Figures of the jobs: matplotlib plots and labelled image grids, written as PNG through
``nag_jax.storage.paths`` (a local path or ``gs://`` / ``s3://``).

Error bars are standard errors over seeds (``nag_jax.reporting.stats``; one seed: SE = nan,
drawn as no bar). Noise-level axes are the paper's lambda (1 = pure noise), drawn decreasing
from left to right as a sampler runs.
"""

from __future__ import annotations

import os

import numpy as np

from nag_jax.storage.paths import as_path
from nag_jax.utils import make_grid, save_png, to_uint8


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> None:
    """Writes a matplotlib figure as PNG at ``path`` (local or gs:// / s3://,
    nag_jax.storage.paths), creating its folder."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _save(fig, path) -> None:
    save_figure(fig, path)
    pyplot().close(fig)


def _bars(se) -> list[float]:
    """Error bars from SEs: nan (one seed) or None -> 0 (no bar)."""
    return [0.0 if s is None else float(np.nan_to_num(s)) for s in se]


# ----------------------------------------------------------------------------------------------
# Image grids (the demo)


def labelled_grid(images, labels, class_names, seeds: int, title: str, scale: int | None = None):
    """uint8 RGB grid: one row per class (name on the left), ``seeds`` columns, a title above.

    ``images``: (N, H, W, C) in [-1, 1]; ``labels``: (N,) class indices.
    """
    from PIL import Image, ImageDraw

    num_classes = len(class_names)
    seeds = min([seeds] + [int(np.sum(labels == k)) for k in range(num_classes)])
    order = np.concatenate([np.flatnonzero(labels == k)[:seeds] for k in range(num_classes)])
    tiles = to_uint8(images[order])
    if tiles.shape[-1] == 1:  # grey: shown as RGB
        tiles = np.repeat(tiles, 3, axis=-1)
    scale = scale or max(1, 64 // tiles.shape[1])  # tiles of about 64 px on screen
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    grid = make_grid(tiles, ncols=seeds)
    tile = tiles.shape[1] + 2
    left, top = 110, 28
    canvas = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 8), title, fill="black")
    for k, name in enumerate(class_names):
        draw.text((6, top + 2 + k * tile + tile // 2 - 6), name, fill="black")
    return np.asarray(canvas)


def side_by_side(panels: list[np.ndarray], gap: int = 12) -> np.ndarray:
    """uint8 (H, W, C) panels next to each other, bottom-padded to the tallest, white gaps."""
    h = max(p.shape[0] for p in panels)
    padded = [
        np.pad(p, ((0, h - p.shape[0]), (0, gap), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate(padded, axis=1)


def subset_panel(images, labels, names, classes, title, seeds: int = 4):
    """`labelled_grid` of the classes ``classes`` only (rows in that order)."""
    order = np.concatenate([np.flatnonzero(labels == kk)[:seeds] for kk in classes])
    remap = {kk: i for i, kk in enumerate(classes)}
    sub_labels = np.array([remap[int(label)] for label in labels[order]])
    return labelled_grid(images[order], sub_labels, [names[kk] for kk in classes], seeds, title)


def grid_file(name: str) -> str:
    """``grid_<row name>.png`` with a plain file name ("CFG+NAG" -> grid_CFG_NAG.png, "none +
    unsharp" -> grid_none_unsharp.png)."""
    stem = name.replace(" + ", "_").replace("+", "_").replace(" ", "_")
    return "grid_" + "".join(c for c in stem if c.isalnum() or c in "_-.") + ".png"


class GridWriter:
    """``on_images`` callback of ``nag_jax.evaluation.guidance_rows.evaluate_rows``:
    ``grid_<row>.png`` from the images of ``seed`` (rows = classes, ``per_class`` columns) and
    the panels of ``comparison.png`` (one colour per shape: the README figure)."""

    def __init__(self, class_names, seed: int, per_class: int, workdir: str):
        self.names, self.seed, self.per_class = list(class_names), int(seed), int(per_class)
        self.workdir = workdir
        self.panels = []

    def __call__(self, row, seed: int, images, labels) -> None:
        if seed != self.seed:
            return
        title = f"{row.name}: s_cfg={row.cfg_scale:g}, w_nag={row.nag_scale:g}"
        if row.nag_scale and row.nag_interval != (0.0, 1.0):
            title += " on noise [{:g}, {:g}]".format(*row.nag_interval)
        if getattr(row, "transform", ""):
            title += f" + {row.transform} {row.strength:.3g} (a control)"
        grid = labelled_grid(images, labels, self.names, self.per_class, title)
        save_png(os.path.join(self.workdir, grid_file(row.name)), grid)
        if getattr(row, "transform", ""):  # the comparison shows guidance rows only
            return
        k = len(self.names)  # red disk, green square, blue triangle, ...
        subset = [kk for kk in range(k) if kk % 4 == (kk // 4) % 4]
        self.panels.append(subset_panel(images, labels, self.names, subset, title))

    def write_comparison(self) -> np.ndarray:
        """Saves comparison.png; returns it (uint8 HWC)."""
        image = side_by_side(self.panels)
        save_png(os.path.join(self.workdir, "comparison.png"), image)
        return image


# ----------------------------------------------------------------------------------------------
# Guidance curves (sweep, study)


def sweep_curves(results: dict, path) -> None:
    """The sweep's curves.png: metric against s_cfg, one line per (w_nag, dog, NAG interval);
    and against w_nag (``results``: the sweep's results.json)."""
    plt = pyplot()
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
                yerr=_bars(r["se"][metric] for r in rs),
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
    _save(fig, path)


def study_figures(workdir: str, results: dict) -> list[str]:
    """The demo study's guidance_curves.png (proxy FD against each scale and NAG interval),
    noise_shift.png (delta per row) and steps.png (proxy FD against sampler steps); returns
    their file names (``results``: the study's results.json)."""
    plt = pyplot()
    curves = results["validation"]["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, axis, label in ((axes[0], "cfg", "CFG scale s"), (axes[1], "nag", "NAG scale w")):
        pts = curves[axis]
        ax.errorbar(
            [p["value"] for p in pts],
            [p["proxy_fd"] for p in pts],
            yerr=_bars(p["proxy_fd_se"] for p in pts),
            fmt="-o",
            capsize=3,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("proxy FD (validation seeds)")
        ax.set_title(f"{label.split()[0]} alone")
    pts = curves["nag_interval"]
    names = [f"{p['interval'][0]:g}-{p['interval'][1]:g}" for p in pts]
    axes[2].bar(names, [p["proxy_fd"] for p in pts], yerr=_bars(p["proxy_fd_se"] for p in pts))
    axes[2].set_xlabel("NAG interval (noise levels)")
    axes[2].set_title(f"NAG w={pts[0]['value']:g} by interval")
    fig.tight_layout()
    _save(fig, as_path(workdir) / "guidance_curves.png")

    shift = results["noise_shift"]["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in shift.items():
        ax.errorbar(
            r["levels"], r["delta_mean"], yerr=_bars(r["delta_se"]), fmt="-o", ms=3, label=name
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.invert_xaxis()
    ax.set_xlabel("nominal noise level λ (1 = noise)")
    ax.set_ylabel("shift δ(λ) (learned estimator)")
    ax.set_title("noise shift along SDE trajectories (report seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, as_path(workdir) / "noise_shift.png")

    steps = results["steps"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    names = list(next(iter(steps.values()))["summary"]["rows"])
    xs = sorted(int(s) for s in steps)
    for name in names:
        m = [steps[str(s)]["summary"]["rows"][name]["proxy_fd"] for s in xs]
        ax.errorbar(
            xs, [v["mean"] for v in m], yerr=_bars(v["se"] for v in m), fmt="-o", label=name
        )
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(s) for s in xs])
    ax.set_xlabel("SDE steps")
    ax.set_ylabel("proxy FD (report seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, as_path(workdir) / "steps.png")
    return ["guidance_curves.png", "noise_shift.png", "steps.png"]


# ----------------------------------------------------------------------------------------------
# Noise shift (mode=noise_shift)


def shift_figures(workdir: str, rows: dict, title: str) -> list[str]:
    """noise_shift_kde.png (per row, KDEs of E[lambda | x] at a few nominal levels: solid =
    sampler states, dashed = forward samples; the paper's Fig. 4) and noise_shift_delta.png
    (delta(lambda) per row); ``rows``: ``nag_jax.analysis.sampler_shift.measure_row`` per row."""
    plt = pyplot()
    names = list(rows)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), sharey=False)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        kd = rows[name]["kde"]
        grid = np.asarray(kd["grid"])
        cmap = plt.get_cmap("viridis")
        for j, st in enumerate(kd["states"]):
            col = cmap(j / max(1, len(kd["states"]) - 1))
            ax.plot(grid, st["traj"], color=col, lw=1.4, label=f"λ={st['level']:.2f}")
            ax.plot(grid, st["fwd"], color=col, lw=0.8, ls="--")
            ax.axvline(st["level"], color=col, lw=0.5, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("estimated noise level E[λ | x]")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("density (solid: sampler, dashed: exact)")
    axes[-1].legend(fontsize=6, title="nominal", title_fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, as_path(workdir) / "noise_shift_kde.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        r = rows[name]
        ax.errorbar(
            r["levels"], r["delta"], yerr=_bars(r["delta_se"]), fmt="-o", ms=3, capsize=2,
            label=name,
        )  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.invert_xaxis()
    ax.set_xlabel("nominal noise level λ (1 = noise)")
    ax.set_ylabel("shift δ(λ) = E[λ|x̂] − E[λ|x]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, as_path(workdir) / "noise_shift_delta.png")
    return ["noise_shift_kde.png", "noise_shift_delta.png"]
