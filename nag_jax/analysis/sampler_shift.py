"""The noise shift of a trained model's sampler, row by row (mode=noise_shift and the demo study).

``analysis.shift`` is the measurement (posterior means, calibrated delta); this module applies
it to a configured model: the noise-level estimator of a config (loaded, or trained on
``config.data`` and saved), a guidance row's config, the sampler's trajectories of image i of
``config.seed`` (``nag_jax.sampling.generate``) sharded over the mesh, and one row's statistics
(delta with its SE over batches, ``nag_jax.reporting.stats``; KDEs of E[lambda | x]).
``shapes_rows_shift`` is the demo study's variant (a conv estimator trained on real shapes,
rows x seeds on one device set, SE over seeds).

Time conventions: models keep their family's time (SiT float t, 0 = noise; DiT original step,
0 = least noise); everything returned is the noise level lambda in [0, 1], 1 = pure noise.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.analysis import shift as S
from nag_jax.analysis.estimator import train_estimator, train_estimator_sharded
from nag_jax.config import schema
from nag_jax.evaluation.guidance_rows import image_batch
from nag_jax.models.noise_estimator import NoiseLevelEstimator, load_estimator, save_estimator
from nag_jax.reporting import stats
from nag_jax.sampling import build, generate
from nag_jax.storage.paths import as_path

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
    ``<workdir>/estimator``, else trained on config.data (data-parallel over ``mesh``) and saved
    there."""
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


def measure_row(c, model, params, mesh, est, process, n: int, batch: int) -> dict:
    """Shift statistics of one row (``c``: `row_config`) over ``n`` images in batches of
    ``batch``: levels, delta and its SE over batches, the means, late/all summaries, KDEs."""
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
    se = stats.standard_error(deltas, axis=0)  # over batches; one batch: nan
    summ = S.summarize_shift(
        S.ShiftResult(levels, pm_traj.mean(0), pm_fwd.mean(0), delta, None, None, None),
        late=float(ns.late),
    )
    grid = np.linspace(0.0, 1.0, 201)
    shown = np.unique(np.round(np.linspace(0, len(levels) - 1, int(ns.kde_states))).astype(int))
    return dict(
        levels=levels.tolist(),
        delta=delta.tolist(),
        delta_se=np.asarray(se).tolist(),
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
                    traj=S.kde(pm_traj[:, k], grid).tolist(),
                    fwd=S.kde(pm_fwd[:, k], grid).tolist(),
                )
                for k in shown
            ],
        ),
    )


_REAL_SHIFT = 2**43  # the demo study's real images for the forward-sample calibration


def shapes_rows_shift(config, model, params, rows, seeds, n, study) -> dict:
    """The demo study's shift: delta(lambda) per guidance row (``rows``: objects with
    cfg_scale, nag_scale, nag_interval, name), mean and SE over ``seeds`` of ``n`` images each,
    measured with a conv estimator g trained on real shapes (``study``: config.study)."""
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
        fn = jax.jit(build.build_sampler(c, model, return_trajectory=True))
        deltas, late, whole = [], [], []
        for seed in seeds:
            idx = np.arange(n)
            keys, labels = image_batch(int(seed), n, k)
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
            delta_se=np.asarray(stats.standard_error(deltas, axis=0)).tolist(),
            late=dict(zip(("mean", "se"), stats.mean_se(late))),
            all=dict(zip(("mean", "se"), stats.mean_se(whole))),
        )
        logging.info("shift %-8s late %.4f all %.4f", row.name, np.mean(late), np.mean(whole))
    return dict(estimator=est_info, rows=out)
