"""The built-in demo (``configs/demo.py``): the paper's recipe in miniature on the shapes set.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo

1. a quality-proxy classifier trained on real shapes (``nag_jax.evaluation.proxy``);
2. the short NAG fine-tune: a small SiT trained WITHOUT noise-condition dropout (the releases'
   situation; shipped as ``nag_jax/assets/demo_base``, reproduced by ``configs/demo_pretrain.py``
   and ``nag_jax.training.export.export_base``) is fine-tuned for a few % of its steps with
   noise-condition dropout, which trains the noise-unconditional branch (the null noise token is
   created as the mean timestep embedding);
3. the same images sampled with none / CFG / NAG / CFG+NAG (and CFG+NAG at the CFG row's s) on
   several held-out seeds, plus two controls that no guidance made (the unguided images + an
   unsharp mask, + i.i.d. noise, matched to NAG's high-frequency energy on a validation seed:
   a texture change the proxy may reward), scored by the proxy, printed as a table with
   standard errors and paired differences (``nag_jax.evaluation.guidance_rows``,
   ``nag_jax.reporting``).

Writes into the workdir: ``grid_<setting>.png`` (rows = classes, columns = images of the first
seed), ``comparison.png`` (the four settings side by side), ``metrics.json`` (per seed, mean, SE,
paired differences) and ``table.md``.

Image identity (``nag_jax.sampling.generate``): image i of seed s has key ``image_keys(s, i)`` and
label ``i % num_classes`` (the class table cycled), so every setting samples the SAME images and
rows differ only by guidance; a difference between rows is measured per seed (paired).
Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals are noise levels (1 = noise).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from nag_jax.data.synthetic import ShapesDataset
from nag_jax.evaluation import guidance_rows, proxy, real_study
from nag_jax.reporting import figures, stats, tables
from nag_jax.sampling import build
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.training import loop as train
from nag_jax.training.metrics import create_writer


def write_tensorboard(config, workdir: str, step: int, summary: dict, comparison) -> None:
    """The settings' means over seeds (``demo/<row>/<metric>``), the paired differences
    (``demo/<a - b>/<metric>``) and the comparison figure, at the fine-tune's last step, beside
    the training curves (config.train.tensorboard)."""
    writer = create_writer(
        workdir, just_logging=jax.process_index() > 0, tensorboard=bool(config.train.tensorboard)
    )
    scalars = {
        f"demo/{row}/{m}": v["mean"] for row, ms in summary["rows"].items() for m, v in ms.items()
    }
    for pair, ms in summary["differences"].items():
        scalars.update({f"demo/{pair.replace(' ', '')}/{m}": v["mean"] for m, v in ms.items()})
    writer.write_scalars(step, scalars)
    writer.write_images(step, {"demo/comparison": np.asarray(comparison)[None]})
    writer.close()


def match_controls(config, sampler, params, rows, n: int) -> list:
    """The control rows (``config.demo.controls``: ``match``, a row name, and ``seeds``): the
    unguided images + an unsharp mask, and + i.i.d. noise, each at the strength that gives them
    the high-frequency energy of the ``match`` row's images on the validation ``seeds`` (never
    the report seeds; ``nag_jax.evaluation.real_study.match_controls``). [] without controls."""
    ctrl = config.demo.get("controls")
    if not ctrl:
        return []
    by_name = {r.name: r for r in rows}
    if ctrl.match not in by_name or "none" not in by_name:
        raise ValueError(
            f"config.demo.controls.match={ctrl.match!r}: expected one of {sorted(by_name)} "
            "(and a row named 'none', whose images the controls transform)"
        )
    seeds = [int(s) for s in ctrl.seeds]
    if set(seeds) & {int(s) for s in config.demo.seeds}:
        raise ValueError(
            f"config.demo.controls.seeds={seeds} overlap the report seeds "
            f"{list(config.demo.seeds)}: match the controls on other (validation) seeds."
        )
    none, match = by_name["none"], by_name[ctrl.match]
    strengths, energies = real_study.match_controls(sampler, params, none, match, seeds, n)
    logging.info(
        "controls matched to %s on seeds %s: %s %s", ctrl.match, seeds, strengths, energies
    )
    Row = guidance_rows.Row
    return [
        Row("none + unsharp", transform="unsharp", strength=strengths["unsharp"]),
        Row("none + noise", transform="noise", strength=strengths["noise"]),
    ]


def run(config, workdir: str) -> dict:
    """Fine-tunes (or trains, or resumes) the demo model, samples the rows, writes the table."""
    start = time.time()
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    dc = config.demo
    logging.info("[1/3] Quality-proxy classifier and real reference")
    scorer = proxy.load_scorer(config, workdir)
    logging.info(
        "[2/3] %s %s for %d steps (p_noise_drop=%g, trainable=%s)%s",
        "Fine-tuning" if config.model.weights else "Training",
        config.model.name,
        int(config.train.num_steps),
        float(config.objective.p_noise_drop),
        config.optim.trainable,
        f" from {config.model.weights}" if config.model.weights else "",
    )
    t0 = time.time()
    state = train.run(config, workdir)
    train_seconds = time.time() - t0
    rows = [guidance_rows.Row.from_config(r) for r in dc.settings]
    seeds = [int(s) for s in dc.seeds]
    n = int(dc.images_per_seed)
    logging.info("[3/3] Sampling %d settings x %d seeds x %d images", len(rows), len(seeds), n)
    sampler = guidance_rows.RowSampler(config, build.build_model(config.model))
    controls = match_controls(config, sampler, state.ema_params, rows, n)
    rows += controls
    names = ShapesDataset(int(config.data.image_size), int(config.model.num_classes)).class_names
    grids = figures.GridWriter(names, seeds[0], int(dc.grid_images_per_class), workdir)
    results = guidance_rows.evaluate_rows(
        sampler, state.ema_params, rows, seeds, n, scorer, on_images=grids
    )
    comparison = grids.write_comparison()
    comparisons = [tuple(c) for c in dc.comparisons]
    summary = stats.summarize_rows(results, comparisons, guidance_rows.METRICS)
    step = int(jax.device_get(state.step))
    write_tensorboard(config, workdir, step, summary, comparison)
    table = tables.guidance_rows_table(results, summary, len(seeds), n)
    metrics = dict(
        results=results,
        summary=summary,
        classifier_accuracy_on_real=round(scorer.real_accuracy, 4),
        seeds=seeds,
        images_per_seed=n,
        sampler=dict(
            kind=config.sample.sampler,
            num_steps=int(config.sample.num_steps),
            method=config.sample.method,
        ),
        training=dict(
            weights=config.model.weights,
            steps=step,
            global_batch_size=int(config.data.global_batch_size),
            p_noise_drop=float(config.objective.p_noise_drop),
            trainable=config.optim.trainable,
            seconds=round(train_seconds, 1),
        ),
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    )
    if controls:
        metrics["controls"] = {r.name: r.strength for r in controls}
    metrics["total_seconds"] = round(time.time() - start, 1)
    weights.write_json(as_path(workdir) / "metrics.json", metrics, force=True)
    if dc.get("note"):
        table += "\n\n" + str(dc.note)
    (as_path(workdir) / "table.md").write_text(table + "\n")
    print(table, flush=True)
    logging.info("Demo done in %.0fs: %s", metrics["total_seconds"], workdir)
    return metrics
