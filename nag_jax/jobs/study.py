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

Library parts: ``nag_jax.evaluation.guidance_rows`` (rows, paired seeds, the validation choice,
the report table), ``nag_jax.analysis.sampler_shift.rows_shift``,
``nag_jax.training.export`` (bases and EMA params of training runs), ``nag_jax.reporting``.
Writes results.json, report.md, guidance_curves.png, noise_shift.png and steps.png.
Time convention: SiT, t = 0 noise, t = 1 data; reported levels are noise levels (1 = noise).
"""

from __future__ import annotations

import json
import time

import jax
from absl import logging

from nag_jax.analysis.sampler_shift import rows_shift, study_estimator
from nag_jax.evaluation import proxy
from nag_jax.evaluation.guidance_rows import Row, RowSampler, report_table, scale_curves, table_rows
from nag_jax.reporting import figures, stats, tables
from nag_jax.sampling import build
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.training import export
from nag_jax.training import loop as train

_PARTS = {"validation", "table", "steps", "noise_shift", "recipe"}
_REAL_PARTS = {"validation", "base", "table", "noise_shift"}  # run_real's


def fine_tune_config(config, *, weights: str, num_steps: int, trainable: str, lr: float):
    c = config.copy_and_resolve_references()
    c.model.weights, c.train.num_steps, c.optim.trainable = weights, int(num_steps), trainable
    c.optim.lr, c.train.checkpoint_every = float(lr), int(num_steps)
    return c


def resume(path, identity: dict) -> dict:
    """results.json of a study resumed part by part (a finished part is not recomputed): the
    file's results when its ``identity`` (seeds, image counts) is this run's, a ValueError when
    not, ``identity`` itself when there is no file."""
    if not path.exists():
        return dict(identity)
    done = json.loads(path.read_text())
    if not all(done.get(k) == identity[k] for k in identity):
        raise ValueError(
            f"{path} was written with other seeds or image counts "
            f"({ {k: done.get(k) for k in identity} }); use a new workdir."
        )
    logging.info("Resuming %s: parts done %s", path, sorted((_PARTS | _REAL_PARTS) & set(done)))
    return done


def run(config, workdir: str) -> dict:
    if config.study.get("scorer", "proxy") == "inception":
        return run_real(config, workdir)
    start = time.time()
    st = config.study
    n = int(st.images_per_seed)
    val_seeds, rep_seeds = stats.held_out_seeds(st, "study")
    work = as_path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    scorer = proxy.load_scorer(config, workdir)
    sampler = RowSampler(config, build.build_model(config.model))
    path = work / "results.json"
    results = resume(path, dict(val_seeds=val_seeds, report_seeds=rep_seeds, images_per_seed=n))

    def save():
        results["elapsed_s"] = time.time() - start + float(results.get("elapsed_before_s", 0))
        results["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
        weights.write_json(path, results, force=True)

    results["elapsed_before_s"] = float(results.get("elapsed_s", 0))
    logging.info("[1/5] NAG fine-tune of the base model (trainable=all), as the demo")
    ft_all = train.run(config, str(work / "ft_all")).ema_params
    if "validation" not in results:
        logging.info("[2/5] Validation curves on seeds %s", val_seeds)
        results["validation"] = scale_curves(sampler, ft_all, val_seeds, n, scorer, st)
        save()
        (work / "validation.md").write_text(_proxy_validation_md(results))
    if st.get("stop_after", "") == "validation":  # commit the choice before the report seeds
        return _stopped_after_validation(work, results)
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
        results["noise_shift"] = rows_shift(
            config, sampler.model, ft_all, rows, rep_seeds, n, st, workdir=workdir
        )
        save()
    figs = figures.study_figures(workdir, results)
    (work / "report.md").write_text(tables.study_report(results, figs))
    if "recipe" not in results:
        logging.info("[5/5] Recipe: full fine-tune, null-token fine-tune, joint training")
        results["recipe"] = recipe(config, workdir, sampler, rows, rep_seeds, n, scorer)
        save()
    report = tables.study_report(results, figs)
    (work / "report.md").write_text(report)
    print(report, flush=True)
    return results


def recipe(config, workdir, sampler, rows, seeds, n, scorer) -> dict:
    """none / NAG of the base, the null-token fine-tune, and (at the small budget) base + fine-tune
    against joint training from scratch."""
    st, work = config.study, as_path(workdir)
    out = {}
    base = export.with_zero_null_token(  # the release-like base: no NAG branch, the plain row
        weights.load_params(config.model.weights)[0], config.model.hidden_size
    )
    out["base (no fine-tune)"] = report_table(sampler, base, rows[:1], seeds, n, scorer)
    null_cfg = fine_tune_config(
        config,
        weights=config.model.weights,
        num_steps=int(config.train.num_steps),
        trainable="null_token",
        lr=float(st.null_token_lr),
    )
    ft_null = train.run(null_cfg, str(work / "ft_null_token")).ema_params
    pair = rows[:1] + rows[2:3]  # none and NAG
    out["ft_null_token (full base)"] = report_table(sampler, ft_null, pair, seeds, n, scorer)
    if st.pretrain_dir and st.joint_from:
        step = int(st.recipe_base_step)
        joint = export.load_ema_params(
            st.joint_from,
            step + int(st.recipe_ft_steps),
            what="study.joint_from",
            fix="run the joint training of this config's docstring to the end first, or set "
            "study.joint_from=''.",
        )
        base_dir = work / f"base{step}"  # step ``step`` of the pretraining, as a release
        if not base_dir.is_dir():
            ckpts = str(as_path(st.pretrain_dir) / "checkpoints")
            export.export_base(config, ckpts, str(base_dir), step=step)
        small_cfg = fine_tune_config(
            config,
            weights=str(base_dir),
            num_steps=int(st.recipe_ft_steps),
            trainable="all",
            lr=float(config.optim.lr),
        )
        ft_small = train.run(small_cfg, str(work / f"ft_all_base{step}")).ema_params
        for name, p in ((f"base@{step} + ft_all", ft_small), ("joint from scratch", joint)):
            out[name] = report_table(sampler, p, pair, seeds, n, scorer)
    return out


def run_real(config, workdir: str) -> dict:
    """The real-image study (configs/fmnist_study.py; protocol: ``evaluation.real_study``).

    Parts, each written to results.json when done and skipped when the file has it: the NAG
    fine-tune (a training workdir, resumable), the noise-level estimator (for classifier-based
    NAG and the noise shift), the validation choice (``study.stop_after="validation"`` stops
    here so the choice can be committed before the report seeds are sampled), the base model's
    quality, the report table with the verdict, and the noise shift per row.
    """
    from nag_jax.data import idx
    from nag_jax.evaluation import real_scorer, real_study

    start = time.time()
    st = config.study
    n, n_val = int(st.images_per_seed), int(st.val_images_per_seed)
    val_seeds, rep_seeds = stats.held_out_seeds(st, "study")
    work = as_path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = resume(
        path,
        dict(
            val_seeds=val_seeds,
            report_seeds=rep_seeds,
            images_per_seed=n,
            val_images_per_seed=n_val,
        ),
    )
    results["elapsed_before_s"] = float(results.get("elapsed_s", 0))
    timings = results.setdefault("part_seconds", {})

    def save():
        results["elapsed_s"] = time.time() - start + results["elapsed_before_s"]
        results["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
        weights.write_json(path, results, force=True)

    def timed(part, fn):
        t0 = time.time()
        out = fn()
        timings[part] = round(time.time() - t0 + timings.get(part, 0.0), 1)
        return out

    drop = config.objective.p_noise_drop
    logging.info("[1/6] NAG fine-tune of the base model (p_noise_drop=%s)", drop)
    ft = timed("fine_tune", lambda: train.run(config, str(work / "ft_all")).ema_params)
    logging.info("[2/6] Noise-level estimator on real images (classifier-based NAG, noise shift)")
    _, est_path, est_info = timed("estimator", lambda: study_estimator(config, st, str(work)))
    results["estimator"] = est_info
    config = config.copy_and_resolve_references()
    config.sample.estimator = str(est_path)
    scorer = timed("references", lambda: real_scorer.from_config(config, str(work / "scorer")))
    results["scorer"] = scorer.info()
    sampler = RowSampler(config, build.build_model(config.model))
    if "validation" not in results:
        logging.info("[3/6] Validation on seeds %s x %d images", val_seeds, n_val)
        results["validation"] = timed(
            "validation", lambda: real_study.validate(sampler, ft, val_seeds, n_val, scorer, st)
        )
        save()
        (work / "validation.md").write_text(_validation_md(results))
    if st.stop_after == "validation":
        return _stopped_after_validation(work, results)
    rows = real_study.report_rows(results["validation"]["choice"])
    if "base" not in results:
        logging.info("[4/6] The base model (no fine-tune, unguided) on the report seeds")
        base = export.with_zero_null_token(
            weights.load_params(config.model.weights)[0], config.model.hidden_size
        )
        results["base"] = timed(
            "base",
            lambda: report_table(sampler, base, [Row("none")], rep_seeds, n, scorer, ()),
        )
        save()
    if "table" not in results:
        logging.info("[5/6] Report table on seeds %s x %d images", rep_seeds, n)
        k = int(config.model.num_classes)
        names = idx.read_metadata(config.data.data_dir).get("class_names") or list(
            map(str, range(k))
        )
        grids = figures.GridWriter(names, rep_seeds[0], 8, str(work))  # grid_<row>.png, seed 0
        table = timed(
            "table",
            lambda: report_table(
                sampler, ft, rows, rep_seeds, n, scorer, real_study.COMPARISONS, grids
            ),
        )
        table["verdict"] = real_study.verdict(table["summary"])
        table["grids"] = [figures.grid_file(r.name) for r in rows]
        results["table"] = table
        save()
    if "noise_shift" not in results:
        logging.info("[6/6] Noise shift per row")
        guided = [r for r in rows if not r.transform]
        results["noise_shift"] = timed(
            "noise_shift",
            lambda: rows_shift(
                config, sampler.model, ft, guided, rep_seeds, min(n, int(st.shift_images)), st,
                workdir=str(work),
            ),
        )  # fmt: skip
        save()
    report = _real_report(config, results)
    (work / "report.md").write_text(report)
    save()
    print(report, flush=True)
    return results


def _stopped_after_validation(work, results: dict) -> dict:
    """``study.stop_after="validation"``: says so, prints validation.md, returns ``results``."""
    logging.info("Stopped after validation (study.stop_after): commit the choice, then rerun.")
    print((work / "validation.md").read_text(), flush=True)
    return results


def _validation_md(results: dict) -> str:
    v = results["validation"]
    lines = [
        f"# Validation (seeds {results['val_seeds']} x {results['val_images_per_seed']} images)",
        "",
        f"Choice (lowest mean {v['choice']['select']} among scales that switch the guidance on):",
        "",
        "```",
        json.dumps(v["choice"], indent=1),
        "```",
        "",
    ]
    for axis, pts in v["curves"].items():
        body = [[p["name"], f"{p['mean']:.3f} +- {p['se']:.2g}"] for p in pts]
        lines += [f"## {axis}", ""] + tables.markdown_table(["row", v["choice"]["select"]], body)
        lines.append("")
    return "\n".join(lines)


def _proxy_validation_md(results: dict) -> str:
    """The demo study's validation curves (proxy FD, class accuracy) and its choice."""
    v = results["validation"]
    lines = [f"# Validation (seeds {results['val_seeds']} x {results['images_per_seed']} images)"]
    lines += ["", "Choice (lowest mean proxy FD among scales that switch the guidance on):", ""]
    lines += ["```", json.dumps(v["choice"]), "```", ""]
    for axis, pts in v["curves"].items():
        body = [
            [f"{p['value']:g}", p.get("nag_scale", p.get("interval", "")),
             tables.pm(p["proxy_fd"], p["proxy_fd_se"], ".2f"), f"{p['class_accuracy']:.3f}"]
            for p in pts
        ]  # fmt: skip
        head = ["scale", "w_nag / interval", "proxy FD", "class acc"]
        lines += [f"## {axis}", ""] + tables.markdown_table(head, body) + [""]
    return "\n".join(lines)


def _real_report(config, r: dict) -> str:
    from nag_jax.evaluation import real_study

    lines = [f"# Real-image study: NAG on {config.data.data_dir} ({config.model.name})", ""]
    lines += [f"Scorer: `{r['scorer']}`", "", f"Estimator: `{r['estimator']}`", ""]
    lines += [_validation_md(r), "## The base model (no fine-tune, unguided)", ""]
    lines += [r["base"]["table"], "", "## Table 1 in miniature (report seeds)", ""]
    lines += [r["table"]["table"], "", "## Verdict", ""]
    lines += real_study.verdict_lines(r["table"]["verdict"])
    lines += ["", "## Samples (first report seed)", ""]
    lines += [f"![{f}]({f})" for f in r["table"].get("grids", [])]
    lines += ["", "## Noise shift (report seeds)", ""]
    body = [
        [name, tables.pm(s["late"]["mean"], s["late"]["se"], ".4f", "+"),
         tables.pm(s["all"]["mean"], s["all"]["se"], ".4f", "+")]
        for name, s in r["noise_shift"]["rows"].items()
    ]  # fmt: skip
    lines += tables.markdown_table(["row", "shift late (λ<=0.25)", "shift all"], body)
    lines += ["", f"Part seconds: {r['part_seconds']}; elapsed {r['elapsed_s']:.0f} s on "]
    lines[-1] += f"{r['devices']}."
    return "\n".join(lines) + "\n"
