"""mode=noise_shift: the noise-shift diagnosis (the paper's Fig. 4) for any checkpoint and dataset.

    python -m nag_jax.main --config=configs/noise_shift_demo.py --workdir=runs/noise_shift_demo
    (SiT-XL/2 / DiT-XL/2 on ImageNet latents: configs/noise_shift_sit_xl.py, noise_shift_dit_xl.py)

Library parts: ``nag_jax.analysis.sampler_shift`` (estimator, row configs, trajectories, one
row's statistics) over ``nag_jax.analysis.shift`` (the measurement); ``nag_jax.reporting``
(report.md, figures).

1. The noise-level estimator g(lambda | x) (nag_jax.models.noise_estimator, a small conv net) is
   trained on ``config.data`` (pixels or SD-VAE latents, the project's data pipeline) by
   cross-entropy on exact forward samples of the model's process, data-parallel over the mesh
   (``sampler_shift.get_estimator``), and saved to ``<workdir>/estimator`` (reused when
   present, or taken from ``noise_shift.estimator.weights``). Its accuracy on
   held-out forward samples is reported (no closed form on images).
2. For each row of ``noise_shift.rows`` (none / CFG / NAG / CFG+NAG / classifier-based NAG with
   this estimator, ``sample.nag_mode = "classifier"``) the model's configured sampler
   (``build.build_sampler``, ``config.sample``) draws ``noise_shift.num_images`` images (image
   i of ``config.seed``, nag_jax.sampling.generate) with trajectories, sharded over the mesh's
   batch axes; ``max_states`` evenly spaced states are measured.
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
from absl import logging

from nag_jax import parallel
from nag_jax.analysis import sampler_shift
from nag_jax.config import schema
from nag_jax.reporting import figures, tables
from nag_jax.sampling import build, generate
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path


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
    est, est_path, est_info = sampler_shift.get_estimator(config, workdir, mesh, process)
    batch = generate.padded_batch_size(int(ns.batch_size), mesh)
    n = max(int(ns.num_images), batch)
    rows = {}
    for row in (dict(r) for r in ns.rows):
        c = sampler_shift.row_config(config, row, est_path)
        t0 = time.perf_counter()
        r = sampler_shift.measure_row(c, model, params, mesh, est, process, n, batch)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        rows[row["name"]] = r
        logging.info(
            "noise_shift: %-10s late %+.4f all %+.4f (%.0fs)",
            row["name"],
            r["late"],
            r["all"],
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
    if jax.process_index() == 0:
        figs = figures.shift_figures(workdir, rows, f"{results['model']}, {results['sampler']}")
        weights.write_json(as_path(workdir) / "results.json", results, force=True)
        report = tables.shift_report(results, figs)
        (as_path(workdir) / "report.md").write_text(report)
        print(report, flush=True)
    return results
