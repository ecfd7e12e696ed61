"""The demo's fuller study: Table 1 in miniature with held-out seeds, the fine-tune recipe,
guidance curves, noise shift and step counts, on the demo's model and data.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m nag_jax.main --config=configs/demo_study.py --workdir=runs/demo_study

Protocol (``config.study``; the demo's own settings are in ``config`` as in configs/demo.py):
1. Models. ``ft_all``: the demo's NAG fine-tune of the shipped base model (the base was trained
   without noise-condition dropout, like the releases); ``ft_null_token``: the same fine-tune
   training only the null noise token; ``base``: the base model before fine-tuning (no NAG
   possible: its null token is untrained). Recipe comparison at a smaller budget, where joint
   training from scratch is affordable here: ``base@S`` + fine-tune (``recipe_ft_steps``) against
   ``joint``: one model trained from scratch with noise dropout for the same total steps
   (``joint_from``, a training workdir of configs/demo_pretrain.py with p_noise_drop set).
2. Validation seeds (``val_seeds``, never reported as results): FD against the scale for CFG
   alone and NAG alone, against the NAG interval, and a small CFG x NAG grid. For each row the
   scale with the lowest mean proxy FD among those that switch its guidance on (s > 1, w > 0) is
   selected (FD: the paper's headline metric).
3. Report seeds (``report_seeds``): the four rows with the selected scales (mean +- SE over
   seeds, paired differences), the other models' none/NAG rows, and the rows at other step counts.
4. Noise shift: a conv noise-level estimator g(lambda | x) trained on real shapes
   (``nag_jax.analysis.estimator``) measures the calibrated shift delta(lambda) of the sampler's
   states for each row (``nag_jax.analysis.shift``; the paper's Fig. 4 in miniature).

Writes results.json, report.md, guidance_curves.png, noise_shift.png and steps.png.
Time convention: SiT, t = 0 noise, t = 1 data; reported levels are noise levels (1 = noise).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.analysis import shift as S
from nag_jax.analysis.estimator import train_estimator
from nag_jax.jobs import demo
from nag_jax.jobs.demo import Row
from nag_jax.sampling import build
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.utils import save_figure


def _train(config, workdir: str):
    from nag_jax.training import loop as train

    return train.run(config, workdir).ema_params


def fine_tune_config(config, *, weights: str, num_steps: int, trainable: str, lr: float):
    c = config.copy_and_resolve_references()
    c.model.weights = weights
    c.train.num_steps = int(num_steps)
    c.optim.trainable = trainable
    c.optim.lr = float(lr)
    c.train.checkpoint_every = int(num_steps)
    return c


def base_checkpoint(config, pretrain_dir: str, step: int, workdir: str) -> str:
    """Step ``step`` of a configs/demo_pretrain.py run as a release-like base (no null token)."""
    dest = os.path.join(workdir, f"base{step}")
    if not os.path.isdir(dest):
        demo.export_base(config, os.path.join(pretrain_dir, "checkpoints"), dest, step=step)
    return dest


def scale_curves(sampler, params, seeds, n, scorer, study) -> dict:
    """Validation curves: {axis: [(value, FD mean, FD se, class acc mean)]} and the choice."""
    curves, results = {}, {}
    axes = {
        "cfg": [Row(f"cfg={s:g}", cfg_scale=s) for s in study.cfg_scales],
        "nag": [Row(f"nag={w:g}", nag_scale=w) for w in study.nag_scales],
    }
    for axis, rows in axes.items():
        res = demo.evaluate_rows(sampler, params, rows, seeds, n, scorer)
        results.update(res)
        curves[axis] = [_point(r, res[r.name], axis) for r in rows]
    # Each row's scale is the best among the scales that switch its guidance ON (s > 1, w > 0):
    # the off value is the baseline row, not a candidate.
    best_s = min((p for p in curves["cfg"] if p["value"] != 1.0), key=_fd)["value"]
    best_w = min((p for p in curves["nag"] if p["value"] != 0.0), key=_fd)["value"]
    w_int = best_w
    rows = [
        Row(f"nag={w_int:g} in {tuple(iv)}", nag_scale=w_int, nag_interval=tuple(iv))
        for iv in study.nag_intervals
    ]
    res = demo.evaluate_rows(sampler, params, rows, seeds, n, scorer)
    results.update(res)
    curves["nag_interval"] = [
        dict(_point(r, res[r.name], "nag"), interval=list(r.nag_interval)) for r in rows
    ]
    best_iv = tuple(min(curves["nag_interval"], key=_fd)["interval"])
    # CFG+NAG: each guidance at its own best scale and at half of it (guidance terms add up, so
    # the joint optimum is usually at smaller scales than each alone).
    cfg_grid = sorted({best_s, 1.0 + (best_s - 1.0) / 2})
    nag_grid = sorted({best_w, best_w / 2})
    grid = [
        Row(f"cfg={s:g}+nag={w:g}", cfg_scale=s, nag_scale=w, nag_interval=best_iv)
        for s in cfg_grid
        for w in nag_grid
    ]
    res = demo.evaluate_rows(sampler, params, grid, seeds, n, scorer)
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


def _fd(point: dict) -> float:
    return point["proxy_fd"]


def _point(row: Row, res: dict, axis: str) -> dict:
    per = res["per_seed"]
    fd_mean, fd_se = demo.mean_se(per["proxy_fd"])
    return dict(
        value=row.cfg_scale if axis == "cfg" else row.nag_scale,
        proxy_fd=fd_mean,
        proxy_fd_se=fd_se,
        class_accuracy=float(np.mean(per["class_accuracy"])),
        precision=float(np.mean(per["precision"])),
        recall=float(np.mean(per["recall"])),
    )


def table_rows(choice: dict) -> list[Row]:
    s, w = choice["cfg_scale"], choice["nag_scale"]
    iv = tuple(choice["nag_interval"])
    js, jw = choice["cfg_nag"]
    return [
        Row("none"),
        Row("CFG", cfg_scale=s),
        Row("NAG", nag_scale=w, nag_interval=iv),
        Row("CFG+NAG", cfg_scale=js, nag_scale=jw, nag_interval=iv),
    ]


COMPARISONS = (("NAG", "none"), ("CFG", "none"), ("CFG+NAG", "CFG"), ("CFG+NAG", "NAG"))


def report_table(sampler, params, rows, seeds, n, scorer) -> dict:
    res = demo.evaluate_rows(sampler, params, rows, seeds, n, scorer)
    summary = demo.summarize(res, COMPARISONS)
    return dict(results=res, summary=summary, table=demo.format_table(res, summary, len(seeds), n))


def noise_shift(config, sampler, params, rows, seeds, n, study) -> dict:
    """Calibrated shift delta(lambda) per row, mean over seeds (learned estimator g)."""
    from nag_jax.data.synthetic import ShapesDataset

    process = build.build_process(config, for_sampling=True)
    size, k = int(config.data.image_size), int(config.model.num_classes)
    ds = ShapesDataset(size, k, seed=int(config.data.synthetic_seed))
    pool_idx = np.arange(2**42, 2**42 + int(study.estimator_pool))
    pool = jnp.asarray(ds.render_batch(pool_idx)["image"])

    def sample_x1(key, m):
        return pool[jax.random.randint(key, (m,), 0, pool.shape[0])]

    est_cfg = study.estimator
    start = time.perf_counter()
    estimator, losses = train_estimator(
        jax.random.key(int(study.estimator_seed)),
        sample_x1,
        process,
        num_bins=int(est_cfg.num_bins),
        hidden=int(est_cfg.hidden),
        depth=int(est_cfg.depth),
        conv=True,
        num_steps=int(est_cfg.num_steps),
        batch_size=int(est_cfg.batch_size),
        lr=float(est_cfg.lr),
    )
    # Accuracy of g on fresh forward samples (no closed form on images).
    k1, k2, k3 = jax.random.split(jax.random.key(int(study.estimator_seed) + 1), 3)
    lam = jax.random.uniform(k2, (512,))
    xt = process.interpolate(
        jax.random.normal(k3, (512, size, size, 3)), sample_x1(k1, 512), 1.0 - lam
    )[0]
    err = S.posterior_mean(estimator.log_posterior(xt), estimator.grid) - lam
    est_info = dict(
        mean_abs_err=float(jnp.abs(err).mean()),
        bias=float(err.mean()),
        final_loss=float(np.mean(losses[-50:])),
        train_seconds=round(time.perf_counter() - start, 1),
    )
    logging.info("noise-level estimator: %s", est_info)
    shift_fn = jax.jit(
        lambda st, fw, lv: S.measure_shift(estimator.log_posterior, st, fw, lv, estimator.grid)
    )
    out = {}
    for row in rows:
        c = config.copy_and_resolve_references()
        c.sample.cfg_scale, c.sample.nag_scale = row.cfg_scale, row.nag_scale
        c.sample.nag_interval = row.nag_interval
        fn = jax.jit(build.build_sampler(c, sampler.model, return_trajectory=True))
        deltas, late, whole = [], [], []
        for seed in seeds:
            idx = np.arange(n)
            keys, labels = demo.image_batch(int(seed), n, k)
            _, traj = fn(params, keys, labels)
            sel = np.unique(np.linspace(0, traj["t"].shape[0] - 1, int(study.max_states)).round())
            states, times = traj["x"][sel.astype(int)], traj["t"][sel.astype(int)]
            levels = process.noise_level(times)
            real = ds.render_batch(_REAL_SHIFT + 10_000_000 * int(seed) + idx, np.asarray(labels))
            fwd = S.forward_states(
                process, jax.random.key(10_000 + int(seed)), jnp.asarray(real["image"]), levels
            )
            res = shift_fn(states, fwd, levels)
            summ = S.summarize_shift(res, late=float(study.late))
            deltas.append(np.asarray(res.delta))
            late.append(summ["late"])
            whole.append(summ["all"])
        out[row.name] = dict(
            levels=np.asarray(levels).tolist(),
            delta_mean=np.mean(deltas, 0).tolist(),
            delta_se=(np.std(deltas, 0, ddof=1) / np.sqrt(len(seeds))).tolist(),
            late=dict(zip(("mean", "se"), demo.mean_se(late))),
            all=dict(zip(("mean", "se"), demo.mean_se(whole))),
        )
        logging.info("shift %-8s late %.4f all %.4f", row.name, np.mean(late), np.mean(whole))
    return dict(estimator=est_info, rows=out)


_REAL_SHIFT = 2**43  # real images for the forward-sample calibration


def write_figures(workdir: str, results: dict, study) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    curves = results["validation"]["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, axis, label in ((axes[0], "cfg", "CFG scale s"), (axes[1], "nag", "NAG scale w")):
        pts = curves[axis]
        ax.errorbar(
            [p["value"] for p in pts],
            [p["proxy_fd"] for p in pts],
            yerr=[p["proxy_fd_se"] for p in pts],
            fmt="-o",
            capsize=3,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("proxy FD (validation seeds)")
        ax.set_title(f"{label.split()[0]} alone")
    pts = curves["nag_interval"]
    names = [f"{p['interval'][0]:g}-{p['interval'][1]:g}" for p in pts]
    axes[2].bar(names, [p["proxy_fd"] for p in pts], yerr=[p["proxy_fd_se"] for p in pts])
    axes[2].set_xlabel("NAG interval (noise levels)")
    axes[2].set_title(f"NAG w={pts[0]['value']:g} by interval")
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "guidance_curves.png"))
    plt.close(fig)
    figs.append("guidance_curves.png")

    shift = results["noise_shift"]["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in shift.items():
        ax.errorbar(r["levels"], r["delta_mean"], yerr=r["delta_se"], fmt="-o", ms=3, label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.invert_xaxis()
    ax.set_xlabel("nominal noise level λ (1 = noise)")
    ax.set_ylabel("shift δ(λ) (learned estimator)")
    ax.set_title("noise shift along SDE trajectories (report seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "noise_shift.png"))
    plt.close(fig)
    figs.append("noise_shift.png")

    steps = results["steps"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    names = list(next(iter(steps.values()))["summary"]["rows"])
    xs = sorted(int(s) for s in steps)
    for name in names:
        m = [steps[str(s)]["summary"]["rows"][name]["proxy_fd"] for s in xs]
        ax.errorbar(xs, [v["mean"] for v in m], yerr=[v["se"] for v in m], fmt="-o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(s) for s in xs])
    ax.set_xlabel("SDE steps")
    ax.set_ylabel("proxy FD (report seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "steps.png"))
    plt.close(fig)
    figs.append("steps.png")
    return figs


def write_report(workdir: str, results: dict, figs: list[str]) -> str:
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
    lines += ["| row | shift late (λ<=0.25) | shift all |", "|---|---|---|"]
    for name, s in r["noise_shift"]["rows"].items():
        lines.append(
            f"| {name} | {s['late']['mean']:+.4f} +- {s['late']['se']:.4f} | "
            f"{s['all']['mean']:+.4f} +- {s['all']['se']:.4f} |"
        )
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figs]
    lines += ["", f"Elapsed: {r['elapsed_s']:.0f} s on {r['devices']}."]
    text = "\n".join(lines) + "\n"
    (as_path(workdir) / "report.md").write_text(text)
    return text


def run(config, workdir: str) -> dict:
    start = time.time()
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    st = config.study
    n = int(st.images_per_seed)
    val_seeds = [int(s) for s in st.val_seeds]
    rep_seeds = [int(s) for s in st.report_seeds]
    if set(val_seeds) & set(rep_seeds):
        raise ValueError(
            f"study.val_seeds {val_seeds} and study.report_seeds {rep_seeds} overlap: scales "
            "must be chosen on seeds that are not reported. Use disjoint seeds."
        )
    scorer = demo.load_scorer(config, workdir)
    model = build.build_model(config.model)
    sampler = demo.RowSampler(config, model)
    path = as_path(workdir) / "results.json"
    results = dict(val_seeds=val_seeds, report_seeds=rep_seeds, images_per_seed=n)
    if path.exists():  # resume part by part: a finished part is not recomputed
        done = json.loads(path.read_text())
        same = all(done.get(k) == results[k] for k in results)
        if same:
            results = done
            logging.info("Resuming %s: parts done %s", path, sorted(_PARTS & set(done)))
        else:
            raise ValueError(
                f"{path} was written with other seeds or image counts "
                f"({ {k: done.get(k) for k in results} }); use a new workdir."
            )

    def save():
        results["elapsed_s"] = time.time() - start + float(results.get("elapsed_before_s", 0))
        results["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
        weights.write_json(path, results, force=True)

    results["elapsed_before_s"] = float(results.get("elapsed_s", 0))
    logging.info("[1/5] NAG fine-tune of the base model (trainable=all), as the demo")
    ft_all = _train(config, os.path.join(workdir, "ft_all"))
    if "validation" not in results:
        logging.info("[2/5] Validation curves on seeds %s", val_seeds)
        results["validation"] = scale_curves(sampler, ft_all, val_seeds, n, scorer, st)
        save()
    rows = table_rows(results["validation"]["choice"])
    if "steps" not in results:
        logging.info("[3/5] Report table on seeds %s, and at other step counts", rep_seeds)
        results["table"] = report_table(sampler, ft_all, rows, rep_seeds, n, scorer)
        steps = {str(config.sample.num_steps): results["table"]}
        for k in st.step_counts:
            srows = [Row(r.name, r.cfg_scale, r.nag_scale, r.nag_interval, int(k)) for r in rows]
            steps[str(k)] = report_table(sampler, ft_all, srows, rep_seeds, n, scorer)
        results["steps"] = steps
        save()
    if "noise_shift" not in results:
        logging.info("[4/5] Noise shift with a learned noise-level estimator")
        results["noise_shift"] = noise_shift(config, sampler, ft_all, rows, rep_seeds, n, st)
        save()
    figs = write_figures(workdir, results, st)
    write_report(workdir, results, figs)
    if "recipe" not in results:
        logging.info("[5/5] Recipe: full fine-tune, null-token fine-tune, joint training")
        results["recipe"] = recipe(config, workdir, sampler, rows, rep_seeds, n, scorer)
        save()
    print(write_report(workdir, results, figs), flush=True)
    return results


_PARTS = {"validation", "table", "steps", "noise_shift", "recipe"}


def recipe(config, workdir, sampler, rows, seeds, n, scorer) -> dict:
    """none / NAG of the base, the null-token fine-tune, and (at the small budget) base + fine-tune
    against joint training from scratch."""
    st = config.study
    out = {}
    base = base_params(config)  # the release-like base: no NAG branch, so only the plain row
    out["base (no fine-tune)"] = report_table(sampler, base, rows[:1], seeds, n, scorer)
    null_cfg = fine_tune_config(
        config,
        weights=config.model.weights,
        num_steps=int(config.train.num_steps),
        trainable="null_token",
        lr=float(st.null_token_lr),
    )
    ft_null = _train(null_cfg, os.path.join(workdir, "ft_null_token"))
    pair = rows[:1] + rows[2:3]  # none and NAG
    out["ft_null_token (full base)"] = report_table(sampler, ft_null, pair, seeds, n, scorer)
    if st.pretrain_dir and st.joint_from:
        step = int(st.recipe_base_step)
        joint = load_ema_params(st.joint_from, step + int(st.recipe_ft_steps))
        small_cfg = fine_tune_config(
            config,
            weights=base_checkpoint(config, st.pretrain_dir, step, workdir),
            num_steps=int(st.recipe_ft_steps),
            trainable="all",
            lr=float(config.optim.lr),
        )
        ft_small = _train(small_cfg, os.path.join(workdir, f"ft_all_base{step}"))
        for name, p in ((f"base@{step} + ft_all", ft_small), ("joint from scratch", joint)):
            out[name] = report_table(sampler, p, pair, seeds, n, scorer)
    return out


def base_params(config):
    """The shipped base model's params plus an all-zero null token (unused by unguided rows)."""
    params = dict(jax.tree.map(jnp.asarray, weights.load_params(config.model.weights)[0]))
    params.setdefault("null_noise_token", jnp.zeros((int(config.model.hidden_size),)))
    return params


def load_ema_params(path: str, step: int):
    """EMA params of step ``step`` of a training workdir (the run must have reached it)."""
    ckpt = os.path.join(path, "checkpoints", str(step), "ema_params")
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(
            f"study.joint_from={path} has no step {step} ({ckpt} does not exist): run the joint "
            "training of this config's docstring to the end first, or set study.joint_from=''."
        )
    return jax.tree.map(jnp.asarray, weights.load_params(ckpt)[0])
