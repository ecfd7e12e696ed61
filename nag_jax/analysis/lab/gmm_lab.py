"""The GMM lab: exact analysis of the noise shift on a class-conditional Gaussian mixture.

``config.lab.kind = "gmm"`` (configs/lab_gmm.py). Step by step:

1. A class-conditional diagonal GMM (``nag_jax.analysis.gmm``); exact p_t(x|y), score, velocity
   and p(lambda | x, y) on a grid.
2. ``MLPDenoiser`` trained with the project's objective ``nag_jax.diffusion.objective.nag_loss``
   (class and noise-condition dropout) on a SiT linear/velocity transport.
3. ``NoiseLevelEstimator`` trained on forward samples; validated against the exact class-marginal
   posterior (KL, W1); used for classifier-based NAG.
4. Statement 1 on exact samples: adding N(0, s_e^2 I) at level lambda shifts the exact posterior
   mean by ~ sqrt(lambda^2 + s_e^2) - lambda.
5. For each row (none / CFG / NAG / CFG+NAG / classifier-NAG) x step count x seed: sample with the
   project's sampler and fused guidance (``nag_jax.guidance.guided_prediction``), measure the
   calibrated shift with the exact posterior, and quality: exact log-likelihood under the true
   mixture, sliced W2 and MMD to fresh exact data with the same labels.
6. Optionally a guidance-scale sweep at one (sampler, step count).

Time conventions: SiT (float t in [0, 1], t = 0 noise, t = 1 data); every reported level is the
paper's noise level lambda = 1 - t (1 = pure noise).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.analysis import distances as M
from nag_jax.analysis import gmm as G
from nag_jax.analysis import shift as S
from nag_jax.analysis.estimator import bin_log_posterior, posterior_gap
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
from nag_jax.analysis.networks import MLPDenoiser
from nag_jax.storage.paths import as_path

CURVES = ("levels", "delta", "density_traj", "density_fwd")  # per-run arrays, not table entries


def module_net_fn(module):
    """``params -> net_fn(x, t, y, drop_class, drop_noise)`` for a module with the conditioning
    interface of the image models (the MLP denoiser; image models use build.make_net_fn)."""

    def factory(params):
        def net_fn(x, t, y, drop_class, drop_noise):
            return module.apply({"params": params}, x, t, y, drop_class, drop_noise)

        return net_fn

    return factory


def exact_pred_builder(gmm, transport):
    """``params -> pred_fn``: the closed-form velocity of the mixture (ignores params)."""

    def builder(_params):
        def pred_fn(x, t, labels):
            a, s, da, ds = transport.alpha_sigma(t)
            return G.velocity(gmm, x, labels, a, s, da, ds)

        return pred_fn

    return builder


def statement1_table(gmm, transport, key, *, levels, noise_stds, n, grid) -> list[dict]:
    """Exact posterior-mean shift from adding N(0, s_e^2 I) to exact samples at each level.

    The same exact samples are used with and without the perturbation, and +e / -e are averaged
    (antithetic), so the O(s_e^2) effect is not buried in the O(s_e) sampling noise.

    Returns rows {level, s_e, measured, predicted = sqrt(sigma^2 + s_e^2) - sigma (linear:
    sigma = lambda), ratio}.
    """
    alphas, sigmas = transport.alpha_sigma(transport.time_from_noise_level(grid))[:2]
    out = []
    k_y, k_x, k_e = jax.random.split(key, 3)
    y = G.sample_labels(gmm, k_y, n)
    x1 = G.sample_data(gmm, k_x, y)
    e = jax.random.normal(k_e, x1.shape)
    for lam in levels:
        xt = S.forward_states(
            transport, jax.random.fold_in(key, int(lam * 1000)), x1, jnp.array([lam])
        )[0]
        pm0 = S.posterior_mean(G.noise_log_posterior(gmm, xt, y, alphas, sigmas), grid).mean()
        sig = float(transport.alpha_sigma(1.0 - lam)[1])
        for se in noise_stds:
            # antithetic pair: cancels the mean-zero first-order term of the perturbation
            pm = 0.5 * sum(
                S.posterior_mean(
                    G.noise_log_posterior(gmm, xt + sgn * se * e, y, alphas, sigmas), grid
                ).mean()
                for sgn in (1.0, -1.0)
            )
            pred = float(np.sqrt(sig**2 + se**2) - sig)
            meas = float(pm - pm0)
            out.append(
                dict(
                    level=float(lam),
                    s_e=float(se),
                    measured=meas,
                    predicted=pred,
                    ratio=meas / pred,
                )
            )
    return out


def validate_estimator(gmm, transport, estimator, key, n=2000) -> dict:
    """KL / W1 between the exact class-marginal binned posterior and g(lambda | x)."""
    b = estimator.module.num_bins
    fine = G.level_grid(b * 8)
    a_f, s_f = transport.alpha_sigma(transport.time_from_noise_level(fine))[:2]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    y = G.sample_labels(gmm, k1, n)
    x1 = G.sample_data(gmm, k2, y)
    lam = jax.random.uniform(k3, (n,))
    xt = transport.interpolate(jax.random.normal(k4, x1.shape), x1, 1.0 - lam)[0]
    exact = bin_log_posterior(G.noise_log_posterior(gmm, xt, None, a_f, s_f), b)
    gap = posterior_gap(exact, estimator.log_posterior(xt))
    # reference scale: the gap of a flat (prior) posterior
    flat = jnp.full_like(exact, -jnp.log(b))
    gap["kl_prior"] = posterior_gap(exact, flat)["kl"]
    return gap


@jax.jit
def _gmm_shift(gmm, y, states, fwd, levels, grid, alphas, sigmas):
    return S.measure_shift(
        lambda z: G.noise_log_posterior(gmm, z, y, alphas, sigmas), states, fwd, levels, grid
    )


def measure_gmm_run(gmm, transport, sample_fn, params, key, lab, grid, alphas, sigmas) -> dict:
    """One sampling run of ``lab.num_samples`` (labels, start noise and SDE noise from ``key``):
    calibrated shift (exact posterior) and sample quality; plus the ``CURVES`` arrays (levels,
    delta, posterior densities) for the figures."""
    k_y, k_x0, k_sde, k_ref, k_fwd, k_sw = jax.random.split(key, 6)
    y = G.sample_labels(gmm, k_y, lab.num_samples)
    x_init = jax.random.normal(k_x0, (lab.num_samples, lab.dim))
    x, states, times = sample_fn(params, y, x_init, k_sde)
    levels = transport.noise_level(times)
    x1_ref = G.sample_data(gmm, k_ref, y)
    fwd = S.forward_states(transport, k_fwd, x1_ref, levels)
    res = _gmm_shift(gmm, y, states, fwd, levels, grid, alphas, sigmas)
    summ = S.summarize_shift(res, late=lab.late)
    x1_ref2 = G.sample_data(gmm, jax.random.fold_in(k_ref, 1), y)
    finite = bool(jnp.all(jnp.isfinite(x)))
    return dict(
        shift_late=summ["late"],
        shift_all=summ["all"],
        shift_abs=summ["abs_all"],
        loglik=float(G.log_prob(gmm, x, y).mean()),
        sw=float(M.sliced_wasserstein(k_sw, x, x1_ref2)),
        mmd=float(M.mmd_rbf(x, x1_ref2)),
        finite=finite,
        levels=np.asarray(res.levels),
        delta=np.asarray(res.delta),
        density_traj=np.asarray(res.density_traj),
        density_fwd=np.asarray(res.density_fwd),
    )


def evaluate_row(gmm, transport, sample_fn, params, key, lab, grid, alphas, sigmas):
    """``lab.num_seeds`` runs of one setting (seed s uses ``fold_in(key, s)``) ->
    ({metric: [value per seed]}, [(levels, delta, density_traj, density_fwd) per seed])."""
    per_seed, curves = [], []
    for seed in range(lab.num_seeds):
        m = measure_gmm_run(
            gmm,
            transport,
            sample_fn,
            params,
            jax.random.fold_in(key, seed),
            lab,
            grid,
            alphas,
            sigmas,
        )
        curves.append(tuple(m.pop(k) for k in CURVES))
        per_seed.append(m)
    return aggregate(per_seed), curves


def data_reference(gmm, key, n, num_seeds) -> dict:
    """Quality metrics of exact data samples (the floor of the sample-based distances)."""
    ll, sw, mmd = [], [], []
    for seed in range(num_seeds):
        k = jax.random.fold_in(key, 1000 + seed)
        k1, k2, k3, k4 = jax.random.split(k, 4)
        y = G.sample_labels(gmm, k1, n)
        a, b = G.sample_data(gmm, k2, y), G.sample_data(gmm, k3, y)
        ll.append(float(G.log_prob(gmm, a, y).mean()))
        sw.append(float(M.sliced_wasserstein(k4, a, b)))
        mmd.append(float(M.mmd_rbf(a, b)))
    return dict(loglik=ll, sw=sw, mmd=mmd)


def _row_line(agg) -> str:
    return (
        f"shift late {fmt(agg['shift_late'])} all {fmt(agg['shift_all'])} ll "
        f"{fmt(agg['loglik'], 2)} sw {fmt(agg['sw'])}"
    )


def run(config, workdir: str) -> dict:
    """The GMM lab: writes ``workdir``/report.md, results.json and figures; returns the results."""
    t_start = time.time()
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    lab = config.lab
    transport = build_transport(config)
    key = jax.random.PRNGKey(config.seed)
    k_gmm, k_den, k_est, k_val, k_st1, k_samp = jax.random.split(key, 6)
    gmm = G.make_gmm(
        k_gmm,
        num_classes=config.model.num_classes,
        num_components=lab.num_components,
        dim=lab.dim,
        radius=lab.radius,
        std_range=tuple(lab.std_range),
    )
    grid = G.level_grid(lab.grid_size)
    alphas, sigmas = transport.alpha_sigma(transport.time_from_noise_level(grid))[:2]
    results: dict = {"config": config.to_dict()}

    # 1. denoiser, trained with the project's objective
    module = MLPDenoiser(
        dim=lab.dim,
        num_classes=config.model.num_classes,
        hidden=lab.hidden,
        depth=lab.depth,
        null_noise=config.model.null_noise,
    )
    bs = config.data.global_batch_size

    def sample_batch(k):
        ky, kx = jax.random.split(k)
        y = G.sample_labels(gmm, ky, bs)
        return G.sample_data(gmm, kx, y), y

    params, losses = train_denoiser(k_den, module, sample_batch, transport, config)
    results["denoiser_loss_last"] = float(losses[-200:].mean())
    logging.info(
        "lab: denoiser trained: loss %.4f (%.0fs)",
        results["denoiser_loss_last"],
        time.time() - t_start,
    )

    # 2. estimator g(lambda | x) (class-agnostic), validated against the exact posterior
    def sample_x1(k, n):
        ky, kx = jax.random.split(k)
        return G.sample_data(gmm, kx, G.sample_labels(gmm, ky, n))

    estimator = None
    if lab.estimator.num_steps > 0:  # 0 skips it (then no cls-NAG rows)
        estimator, _ = train_lab_estimator(k_est, sample_x1, transport, lab.estimator)
        results["estimator"] = validate_estimator(gmm, transport, estimator, k_val, n=2000)
        logging.info("lab: estimator %s (%.0fs)", results["estimator"], time.time() - t_start)

    # 3. Statement 1 and the instrument's zero
    results["statement1"] = statement1_table(
        gmm,
        transport,
        k_st1,
        levels=lab.statement1_levels,
        noise_stds=lab.statement1_stds,
        n=2000,
        grid=grid,
    )

    def sample_fn_for(row, sampler, steps):
        if row.get("exact"):
            builder = exact_pred_builder(gmm, transport)
        else:
            builder = make_pred_builder(module_net_fn(module), transport, row, estimator)
        return make_sample_fn(
            builder,
            transport,
            sampler=sampler,
            steps=steps,
            method=lab.method,
            max_states=lab.max_states,
        )

    # 4. rows x step counts x seeds
    rows = [dict(name="exact velocity", exact=True)] + [dict(r) for r in lab.rows]
    runs, curves = [], {}
    for sampler_name in lab.samplers:
        for steps in lab.step_counts:
            for row in rows:
                agg, curves[(sampler_name, steps, row["name"])] = evaluate_row(
                    gmm,
                    transport,
                    sample_fn_for(row, sampler_name, steps),
                    params,
                    k_samp,
                    lab,
                    grid,
                    alphas,
                    sigmas,
                )
                runs.append(dict(sampler=sampler_name, steps=steps, row=row["name"], **agg))
                logging.info(
                    "lab: %s %3d steps %16s: %s (%.0fs)",
                    sampler_name,
                    steps,
                    row["name"],
                    _row_line(agg),
                    time.time() - t_start,
                )
    results["runs"] = runs
    results["data_reference"] = data_reference(gmm, k_samp, lab.num_samples, lab.num_seeds)

    # 5. optional guidance-scale sweep at one (sampler, step count): investigation table
    if lab.sweep.enabled:
        results["sweep"] = []
        for row in [dict(r) for r in lab.sweep.rows]:
            fn = sample_fn_for(row, lab.sweep.sampler, lab.sweep.steps)
            agg, _ = evaluate_row(gmm, transport, fn, params, k_samp, lab, grid, alphas, sigmas)
            results["sweep"].append(dict(row=row["name"], **agg))
            logging.info("lab: sweep %18s: %s", row["name"], _row_line(agg))

    results["elapsed_s"] = time.time() - t_start
    figs = report.gmm_figures(workdir, curves, lab, [r["name"] for r in rows])
    report.write(workdir, results, report.gmm_report(results, config), figs)
    return results
