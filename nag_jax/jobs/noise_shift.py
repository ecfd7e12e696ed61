"""mode=noise_shift: the noise-shift diagnosis (the paper's Fig. 4) for any checkpoint and dataset.

    python -m nag_jax.main --config=configs/noise_shift_demo.py --workdir=runs/noise_shift_demo
    (SiT-XL/2 / DiT-XL/2 on ImageNet latents: configs/noise_shift_sit_xl.py, noise_shift_dit_xl.py)

1. The noise-level estimator g(lambda | x) (nag_jax.models.noise_estimator, a small conv net) is
trained
   on ``config.data`` (pixels or SD-VAE latents, the project's data pipeline) by cross-entropy on
   exact forward samples of the model's process, data-parallel over the mesh
   (``analysis.estimator.train_estimator_sharded``), and saved to ``<workdir>/estimator``
   (reused when present, or taken from ``noise_shift.estimator.weights``). Its accuracy on
   held-out forward samples is reported (no closed form on images).
2. For each row of ``noise_shift.rows`` (none / CFG / NAG / CFG+NAG / classifier-based NAG with
   this estimator, ``sample.nag_mode = "classifier"``) the model's configured sampler
   (``build.build_sampler``, ``config.sample``) draws ``noise_shift.num_images`` images (image
   i of ``config.seed``, nag_jax.sampling.generate) with trajectories, sharded over the mesh's
   batch axes;
   ``max_states`` evenly spaced states are measured.
3. Measurement: ``analysis.shift.measure_shift`` -- the posterior mean E[lambda | x_hat] of every
   state and of exact forward samples of real data (a separate pipeline stream) at the same
   nominal level; the calibrated shift delta(lambda) = mean over states - mean over forward
   samples (SE over batches).

Writes results.json (estimator, per row: levels, delta, the means, per-state KDEs), report.md,
noise_shift_kde.png (per row, the KDE of E[lambda | x] for a few nominal steps: solid = sampler
states, dashed = forward samples at the same level; the paper's Fig. 4) and
noise_shift_delta.png (delta(lambda) per row).

Time conventions: models keep their family's time (SiT float t, 0 = noise; DiT original step,
0 = least noise); everything reported is the noise level lambda in [0, 1], 1 = pure noise.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.analysis import shift as S
from nag_jax.analysis.estimator import train_estimator_sharded
from nag_jax.config import schema
from nag_jax.models.noise_estimator import NoiseLevelEstimator, load_estimator, save_estimator
from nag_jax.sampling import build, generate
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.utils import save_figure

ROW_KEYS = ("name", "cfg_scale", "nag_scale", "nag_interval", "nag_mode", "estimator")


def _host(x) -> np.ndarray:
    """A (possibly multi-process) batch-leading array on every host as numpy."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _data_iter(config, seed: int, batch: int):
    """Process-local batches ``(B_local, H, W, C)`` of ``config.data`` (the data pipeline)."""
    from nag_jax.data.pipeline import create_dataset

    it = create_dataset(config.data, seed=seed, global_batch_size=batch)
    return (np.asarray(b["image"], np.float32) for b in it)


def get_estimator(config, workdir: str, mesh, process) -> tuple[object, str, dict]:
    """(estimator, its path, info): loaded from ``noise_shift.estimator.weights`` or
    ``<workdir>/estimator``, else trained on config.data and saved there."""
    ec = config.noise_shift.estimator
    path = as_path(ec.weights or as_path(workdir) / "estimator")
    info: dict = {"path": str(path)}
    if path.exists():
        logging.info("noise_shift: estimator from %s", path)
        info["trained_here"] = False
        return load_estimator(path), str(path), info
    module = NoiseLevelEstimator(
        num_bins=int(ec.num_bins),
        hidden=int(ec.hidden),
        depth=int(ec.depth),
        conv=True,
        conv_layers=int(ec.conv_layers),
    )
    batch = generate.padded_batch_size(int(config.data.global_batch_size), mesh)
    seed = int(config.seed if ec.seed is None else ec.seed)
    start = time.perf_counter()
    est, losses = train_estimator_sharded(
        jax.random.fold_in(jax.random.key(seed), 1),
        _data_iter(config, seed, batch),
        process,
        mesh,
        module=module,
        num_steps=int(ec.num_steps),
        lr=float(ec.lr),
        log_every=int(ec.log_every),
        on_log=lambda i, v: logging.info("noise_shift: estimator step %d loss %.4f", i, v),
    )
    info.update(
        trained_here=True,
        train_seconds=round(time.perf_counter() - start, 1),
        final_loss=float(np.mean(losses[-min(50, len(losses)) :])),
        global_batch=batch,
        num_steps=int(ec.num_steps),
        seed=seed,
    )
    if jax.process_index() == 0:
        save_estimator(path, est, extra=dict(data=str(config.data.name)))
    info.update(validate_estimator(est, config, process, mesh))
    logging.info("noise_shift: estimator %s", info)
    return est, str(path), info


def validate_estimator(est, config, process, mesh) -> dict:
    """|E[lambda | x] - lambda| on held-out forward samples of real data (another stream)."""
    n = generate.padded_batch_size(int(config.noise_shift.estimator.eval_images), mesh)
    x1 = parallel.global_batch(next(_data_iter(config, int(config.seed) + 7, n)), mesh)
    k1, k2 = jax.random.split(jax.random.key(int(config.seed) + 7))

    @jax.jit
    def err(x1):
        lam = S.sample_levels(process, k1, x1.shape[0])
        xt = S.forward_at_level(process, jax.random.normal(k2, x1.shape), x1, lam)
        return S.posterior_mean(est.log_posterior(xt), est.grid) - lam

    e = _host(err(x1))
    return dict(mean_abs_err=float(np.abs(e).mean()), bias=float(e.mean()), eval_images=int(n))


def row_config(config, row: dict, estimator_path: str):
    """``config`` with the row's guidance in ``config.sample`` (absent keys: off)."""
    unknown = set(row) - set(ROW_KEYS)
    if unknown:
        raise ValueError(
            f"noise_shift.rows entry {row} has unknown keys {sorted(unknown)}; allowed: {ROW_KEYS}"
        )
    c = config.copy_and_resolve_references()
    c.sample.cfg_scale = float(row.get("cfg_scale", 1.0))
    c.sample.nag_scale = float(row.get("nag_scale", 0.0))
    c.sample.nag_interval = tuple(float(v) for v in row.get("nag_interval", (0.0, 1.0)))
    c.sample.nag_mode = str(row.get("nag_mode", "token"))
    # classifier rows guide with the mode's estimator unless the row names another one (an
    # estimator trained with another seed makes the measurement independent of the guidance)
    c.sample.estimator = str(row.get("estimator", estimator_path))
    schema.validate(c)
    return c


def make_trajectory_fn(c, model, params_like, mesh, max_states: int):
    """jit(params, indices (B,)) -> (states (K, B, ...), times (K,)): image ``indices`` of
    ``c.seed`` sampled with ``c.sample`` (build.build_sampler), K evenly spaced states."""
    sample_fn = build.build_sampler(c, model, return_trajectory=True)

    def fn(p, idx):
        _, traj = sample_fn(p, generate.image_keys(c.seed, idx), generate.config_labels(c, idx))
        k = traj["x"].shape[0]
        sel = np.unique(np.round(np.linspace(0, k - 1, min(k, max_states))).astype(int))
        return traj["x"][sel], traj["t"][sel]

    return jax.jit(
        fn,
        in_shardings=(parallel.tree_shardings(params_like, mesh), parallel.batch_sharding(mesh)),
    )


def kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE of 1-D ``values`` on ``grid`` (Silverman's bandwidth, at least 0.005)."""
    v = np.asarray(values, np.float64).reshape(-1)
    bw = max(1.06 * v.std() * len(v) ** (-0.2), 5e-3)
    z = (grid[:, None] - v[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(axis=1) / (len(v) * bw * np.sqrt(2 * np.pi))


def measure_row(c, model, params, mesh, est, process, n: int, batch: int) -> dict:
    """Shift statistics of one row over ``n`` images in batches of ``batch``."""
    ns = c.noise_shift
    fn = make_trajectory_fn(c, model, params, mesh, int(ns.max_states))
    shift_fn = jax.jit(lambda st, fw, lv: S.measure_shift(est.log_posterior, st, fw, lv, est.grid))
    real = _data_iter(c, int(c.seed) + 1, batch)  # calibration data: its own stream
    pm_traj, pm_fwd, deltas, levels = [], [], [], None
    for b, lo in enumerate(range(0, n, batch)):
        idx = np.arange(lo, min(n, lo + batch))
        idx = np.concatenate([idx, np.repeat(idx[-1:], batch - len(idx))])
        states, times = fn(params, parallel.global_batch(idx.astype(np.uint32), mesh))
        levels = process.noise_level(times)
        x1 = parallel.global_batch(next(real), mesh)
        key = jax.random.fold_in(jax.random.key(int(c.seed) + 2), b)
        res = shift_fn(states, S.forward_states(process, key, x1, levels), levels)
        pm_traj.append(_host(res.pmean_traj.T))  # (B, K)
        pm_fwd.append(_host(res.pmean_fwd.T))
        deltas.append(np.asarray(res.delta))
    pm_traj, pm_fwd = np.concatenate(pm_traj), np.concatenate(pm_fwd)
    levels = np.asarray(levels)
    delta = pm_traj.mean(0) - pm_fwd.mean(0)
    se = (
        np.std(deltas, 0, ddof=1) / np.sqrt(len(deltas))
        if len(deltas) > 1
        else np.full_like(delta, np.nan)
    )
    summ = S.summarize_shift(
        S.ShiftResult(levels, pm_traj.mean(0), pm_fwd.mean(0), delta, None, None, None),
        late=float(ns.late),
    )
    grid = np.linspace(0.0, 1.0, 201)
    shown = np.unique(np.round(np.linspace(0, len(levels) - 1, int(ns.kde_states))).astype(int))
    return dict(
        levels=levels.tolist(),
        delta=delta.tolist(),
        delta_se=se.tolist(),
        mean_traj=pm_traj.mean(0).tolist(),
        mean_fwd=pm_fwd.mean(0).tolist(),
        late=summ["late"],
        all=summ["all"],
        abs_all=summ["abs_all"],
        num_images=int(pm_traj.shape[0]),
        kde=dict(
            grid=grid.tolist(),
            states=[
                dict(
                    level=float(levels[k]),
                    traj=kde(pm_traj[:, k], grid).tolist(),
                    fwd=kde(pm_fwd[:, k], grid).tolist(),
                )
                for k in shown
            ],
        ),
    )


def write_figures(workdir: str, rows: dict, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    save_figure(fig, as_path(workdir) / "noise_shift_kde.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        r = rows[name]
        se = np.nan_to_num(np.asarray(r["delta_se"], np.float64))
        ax.errorbar(r["levels"], r["delta"], yerr=se, fmt="-o", ms=3, capsize=2, label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.invert_xaxis()
    ax.set_xlabel("nominal noise level λ (1 = noise)")
    ax.set_ylabel("shift δ(λ) = E[λ|x̂] − E[λ|x]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, as_path(workdir) / "noise_shift_delta.png")
    plt.close(fig)
    return ["noise_shift_kde.png", "noise_shift_delta.png"]


def write_report(workdir: str, results: dict, figs: list[str]) -> str:
    r = results
    lines = [f"# Noise shift: {r['model']} ({r['sampler']})", ""]
    lines.append(f"Estimator: `{r['estimator']}`")
    lines += ["", f"| row | shift late (λ<={r['late']:g}) | shift all | |shift| all |"]
    lines.append("|---|---|---|---|")
    for name, s in r["rows"].items():
        lines.append(f"| {name} | {s['late']:+.4f} | {s['all']:+.4f} | {s['abs_all']:.4f} |")
    lines += ["", f"{r['num_images']} images per row; elapsed {r['elapsed_s']:.0f} s on "]
    lines[-1] += f"{r['devices']}."
    lines += [""] + [f"![{f}]({f})" for f in figs]
    text = "\n".join(lines) + "\n"
    (as_path(workdir) / "report.md").write_text(text)
    return text


def run(config, workdir: str) -> dict:
    """Entry point of mode=noise_shift (module docstring); returns the results dict."""
    start = time.time()
    schema.validate(config)
    if not config.model.weights:
        raise ValueError(
            "mode=noise_shift measures a trained model: set --config.model.weights to a "
            "converted release or a training workdir's checkpoints/ directory."
        )
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    ns = config.noise_shift
    mesh = parallel.create_mesh(config.parallel)
    model = build.build_model(config.model)
    params = jax.tree.map(jnp.asarray, weights.load_params(config.model.weights)[0])
    params = jax.device_put(params, parallel.tree_shardings(params, mesh))
    process = build.build_process(config, for_sampling=True)
    est, est_path, est_info = get_estimator(config, workdir, mesh, process)
    batch = generate.padded_batch_size(int(ns.batch_size), mesh)
    n = max(int(ns.num_images), batch)
    rows = {}
    for row in (dict(r) for r in ns.rows):
        c = row_config(config, row, est_path)
        t0 = time.perf_counter()
        rows[row["name"]] = measure_row(c, model, params, mesh, est, process, n, batch)
        rows[row["name"]]["seconds"] = round(time.perf_counter() - t0, 1)
        logging.info(
            "noise_shift: %-10s late %+.4f all %+.4f (%.0fs)",
            row["name"],
            rows[row["name"]]["late"],
            rows[row["name"]]["all"],
            time.perf_counter() - t0,
        )
    sc = config.sample
    results = dict(
        model=str(config.model.name),
        weights=str(config.model.weights),
        sampler=f"{sc.sampler} {sc.method if sc.sampler in ('ode', 'sde') else ''} "
        f"{int(sc.num_steps)} steps".replace("  ", " "),
        data=str(config.data.name),
        estimator=est_info,
        late=float(ns.late),
        num_images=n,
        rows_config=[dict(r) for r in ns.rows],
        rows=rows,
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        elapsed_s=time.time() - start,
    )
    figs = []
    if jax.process_index() == 0:
        figs = write_figures(workdir, rows, f"{results['model']}, {results['sampler']}")
        weights.write_json(as_path(workdir) / "results.json", results, force=True)
        print(write_report(workdir, results, figs), flush=True)
    return results
