"""The shapes lab: the noise shift on the built-in shapes images, measured by a learned estimator.

``config.lab.kind = "shapes"`` (configs/lab_shapes.py). No closed form here: render a pool of
real images (``nag_jax.data.synthetic.ShapesDataset``); train a small SiT
(``nag_jax.sampling.build.build_model``, network calls through ``build.make_net_fn``) with the
project's ``nag_loss``; train the conv ``NoiseLevelEstimator`` g(lambda | x) on forward samples of
real images; for each row x step count x seed, sample with the project's sampler and fused
guidance, measure the calibrated shift with g (trajectory states vs forward samples of fresh real
images with the same labels) and the demo's quality proxy (``nag_jax.evaluation.proxy``: class
accuracy of a small classifier trained on real shapes, Fréchet distance in its feature space --
not FID).

Time conventions: the model is a SiT (float t in [0, 1], t = 0 noise, t = 1 data); reported
levels are noise levels lambda = 1 - t (1 = pure noise).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.analysis import shift as S
from nag_jax.analysis.lab import report
from nag_jax.analysis.lab.common import (
    aggregate,
    build_transport,
    fmt,
    make_pred_builder,
    make_sample_fn,
    train_denoiser,
    train_lab_estimator,
)
from nag_jax.sampling import build
from nag_jax.storage.paths import as_path

QUALITY = ("class_accuracy", "proxy_fd")


def validate_on_forward(estimator, transport, pool_x, key, n=512) -> dict:
    """No closed form here: accuracy of g on held-out forward samples (|E[lambda|x] - lambda|)."""
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 7), 3)
    x1 = pool_x[jax.random.randint(k1, (n,), 0, pool_x.shape[0])]
    lam = jax.random.uniform(k2, (n,))
    xt = transport.interpolate(jax.random.normal(k3, x1.shape), x1, 1.0 - lam)[0]
    pm = S.posterior_mean(estimator.log_posterior(xt), estimator.grid)
    return {
        "mean_abs_err": float(jnp.abs(pm - lam).mean()),
        "bias": float((pm - lam).mean()),
    }


def run(config, workdir: str) -> dict:
    """The shapes lab: writes ``workdir``/report.md, results.json and delta_shapes.png."""
    from nag_jax.data.synthetic import ShapesDataset

    t_start = time.time()
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    lab = config.lab
    transport = build_transport(config)
    size, k_cls = int(config.data.image_size), int(config.model.num_classes)
    key = jax.random.PRNGKey(config.seed)
    k_den, k_est, k_samp = jax.random.split(key, 3)

    ds = ShapesDataset(image_size=size, num_classes=k_cls, seed=config.seed)
    pool = ds.render_batch(np.arange(lab.pool_size))
    pool_x = jnp.asarray(pool["image"])
    pool_y = jnp.asarray(pool["label"])
    bs = config.data.global_batch_size

    def sample_batch(k):
        i = jax.random.randint(k, (bs,), 0, lab.pool_size)
        return pool_x[i], pool_y[i]

    model = build.build_model(config.model)
    params, losses = train_denoiser(k_den, model, sample_batch, transport, config)
    results: dict = {"config": config.to_dict(), "denoiser_loss_last": float(losses[-50:].mean())}
    logging.info(
        "lab: SiT trained: loss %.4f (%.0fs)", results["denoiser_loss_last"], time.time() - t_start
    )

    def sample_x1(k, n):
        return pool_x[jax.random.randint(k, (n,), 0, lab.pool_size)]

    estimator, _ = train_lab_estimator(k_est, sample_x1, transport, lab.estimator, conv=True)
    results["estimator"] = validate_on_forward(estimator, transport, pool_x, k_est)
    logging.info("lab: estimator %s (%.0fs)", results["estimator"], time.time() - t_start)

    proxy_params, proxy_acc = None, None
    try:
        from nag_jax.evaluation import proxy

        proxy_params, proxy_acc = proxy.load_or_train(size, k_cls, seed=lab.proxy_seed)
        results["proxy_real_accuracy"] = proxy_acc
    except Exception as e:  # report, do not hide: the table then has no quality columns
        results["proxy_error"] = f"{type(e).__name__}: {e}"
        logging.warning("lab: quality proxy unavailable: %s", results["proxy_error"])

    factory = lambda p: build.make_net_fn(model, p, "SiT")
    shift_fn = jax.jit(
        lambda st, fw, lv: S.measure_shift(estimator.log_posterior, st, fw, lv, estimator.grid)
    )
    n = lab.num_samples
    runs, curves = [], {}
    for steps in lab.step_counts:
        for row in [dict(r) for r in lab.rows]:
            sample_fn = make_sample_fn(
                make_pred_builder(factory, transport, row, estimator),
                transport,
                sampler=lab.sampler,
                steps=steps,
                method=lab.method,
                max_states=lab.max_states,
            )
            per = []
            for seed in range(lab.num_seeds):
                ks = jax.random.fold_in(k_samp, seed)
                k_x0, k_sde, k_fwd = jax.random.split(ks, 3)
                y = jnp.arange(n, dtype=jnp.int32) % k_cls
                x_init = jax.random.normal(k_x0, (n, size, size, 3))
                x, states, times = sample_fn(params, y, x_init, k_sde)
                levels = transport.noise_level(times)
                real = ds.render_batch(np.arange(n) + 10_000_000 * (seed + 1), np.asarray(y))
                fwd = S.forward_states(transport, k_fwd, jnp.asarray(real["image"]), levels)
                res = shift_fn(states, fwd, levels)
                summ = S.summarize_shift(res, late=lab.late)
                m = dict(shift_late=summ["late"], shift_all=summ["all"])
                if proxy_params is not None:
                    q = proxy.quality_metrics(
                        proxy_params, k_cls, np.asarray(x), np.asarray(y), real["image"]
                    )
                    m.update(q)
                per.append(m)
                curves.setdefault((steps, row["name"]), []).append(
                    (np.asarray(res.levels), np.asarray(res.delta))
                )
            agg = aggregate(per)
            runs.append(dict(steps=steps, row=row["name"], **agg))
            quality = " ".join(f"{k} {fmt(agg[k])}" for k in QUALITY if k in agg)
            logging.info(
                "lab: %3d steps %10s: shift late %s all %s %s (%.0fs)",
                steps,
                row["name"],
                fmt(agg["shift_late"]),
                fmt(agg["shift_all"]),
                quality,
                time.time() - t_start,
            )
    results["runs"] = runs
    results["elapsed_s"] = time.time() - t_start
    figs = report.shapes_figures(workdir, curves, lab)
    report.write(workdir, results, report.shapes_report(results, config), figs)
    return results
