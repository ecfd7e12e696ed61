"""The noise shift of a trained model's sampler, row by row (mode=noise_shift and the demo study).

``analysis.shift`` is the measurement (posterior means, calibrated delta); this module applies
it to a configured model: the noise-level estimator of a config (loaded, or trained on
``config.data`` and saved), a guidance row's config, the sampler's trajectories of image i of
``config.seed`` (``nag_jax.sampling.generate``) sharded over the mesh, and one row's statistics
(delta with its SE over batches, ``nag_jax.reporting.stats``; KDEs of E[lambda | x]).
``rows_shift`` is the study job's variant (a conv estimator trained on a pool of real images of
``config.data`` -- shapes, Fashion-MNIST, ... -- saved in the study's workdir and shared with its
classifier-NAG row; rows x seeds on one device set, SE over seeds).

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
    est = row.get("estimator", estimator_path)
    c.sample.estimator = None if est is None else str(est)
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


# Keys of `nag_jax.data.pipeline.real_images` (for shapes: indices no training batch draws).
_POOL_KEYS = 2**42  # the study estimator's real images (training and its accuracy check)
_REAL_SHIFT = 2**43  # the real images of the forward-sample calibration, per seed
ESTIMATOR_DIR = "estimator"  # <workdir>/estimator: the study's trained g


def _study_settings(config, study) -> dict:
    """What the study estimator is a function of (stored with it; a saved one must match)."""
    e, d = study.estimator, config.data
    return dict(
        num_bins=int(e.num_bins),
        hidden=int(e.hidden),
        depth=int(e.depth),
        num_steps=int(e.num_steps),
        batch_size=int(e.batch_size),
        lr=float(e.lr),
        seed=int(study.estimator_seed),
        pool=int(study.estimator_pool),
        data=str(d.name),
        image_size=int(d.image_size),
        channels=int(d.get("channels", 3)) if str(d.name) == "idx" else None,
        split=str(d.get("split", "")),
        # the shapes' generator (data_dir is not compared: one folder has many spellings)
        shapes=[int(d.synthetic_seed), str(d.synthetic_variant), int(d.num_classes)]
        if str(d.name) == "synthetic_shapes"
        else None,
    )


def study_estimator(config, study, workdir=None) -> tuple[object, str | None, dict]:
    """(estimator, its path, info) of the study: a conv g(lambda | x) trained on
    ``study.estimator_pool`` real images of ``config.data`` (``data.pipeline.real_images``)
    with ``study.estimator`` and ``study.estimator_seed``.

    With ``workdir`` it is saved to ``<workdir>/estimator`` and loaded from there when present
    (trained once; the classifier-NAG row, ``sample.nag_mode="classifier"``, samples with this
    path as ``sample.estimator``); a saved one trained with other settings is refused. Without
    ``workdir`` the path is None. info: the accuracy of g on fresh forward samples of the pool
    (mean_abs_err, bias of E[lambda | x] - lambda), final_loss, train_seconds, path,
    trained_here. Levels: lambda in [0, 1], 1 = pure noise.
    """
    from nag_jax.data.pipeline import real_images
    from nag_jax.storage import weights

    process = build.build_process(config, for_sampling=True)
    keys = np.arange(_POOL_KEYS, _POOL_KEYS + int(study.estimator_pool))
    pool = jnp.asarray(real_images(config.data, keys)["image"])

    def sample_x1(key, m):
        return pool[jax.random.randint(key, (m,), 0, pool.shape[0])]

    settings = _study_settings(config, study)
    path = None if workdir is None else as_path(workdir) / ESTIMATOR_DIR
    if path is not None and path.exists():
        meta = weights.read_metadata(str(path))
        if meta.get("study") != settings:
            raise ValueError(
                f"{path} holds a noise-level estimator trained with {meta.get('study')}, not this "
                f"study's {settings}: delete it to train a new one, or use a new workdir"
            )
        logging.info("noise-level estimator from %s", path)
        estimator = load_estimator(str(path))
        trained = dict(final_loss=meta.get("final_loss"), train_seconds=meta.get("train_seconds"))
        trained_here = False
    else:
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
        trained = dict(
            final_loss=float(np.mean(losses[-50:])),
            train_seconds=round(time.perf_counter() - start, 1),
        )
        trained_here = True
        if path is not None and jax.process_index() == 0:
            save_estimator(str(path), estimator, extra=dict(trained, study=settings))
    # Accuracy of g on fresh forward samples (no closed form on images).
    k1, k2, k3 = jax.random.split(jax.random.key(int(study.estimator_seed) + 1), 3)
    lam = jax.random.uniform(k2, (512,))
    xt = process.interpolate(
        jax.random.normal(k3, (512, *pool.shape[1:])), sample_x1(k1, 512), 1.0 - lam
    )[0]
    err = S.posterior_mean(estimator.log_posterior(xt), estimator.grid) - lam
    info = dict(
        mean_abs_err=float(jnp.abs(err).mean()),
        bias=float(err.mean()),
        **trained,
        path=None if path is None else str(path),
        trained_here=trained_here,
    )
    logging.info("noise-level estimator: %s", info)
    return estimator, info["path"], info


def _row_sample_config(config, row, estimator_path):
    """`row_config` of a study row (an object with name, cfg_scale, nag_scale, nag_interval and
    optionally nag_mode, estimator, num_steps)."""
    entry = dict(
        name=row.name,
        cfg_scale=row.cfg_scale,
        nag_scale=row.nag_scale,
        nag_interval=row.nag_interval,
        nag_mode=str(getattr(row, "nag_mode", "token") or "token"),
    )
    if getattr(row, "estimator", None):
        entry["estimator"] = row.estimator
    if entry["nag_mode"] == "classifier" and not entry.get("estimator", estimator_path):
        raise ValueError(
            f"row {row.name!r} has nag_mode='classifier' and no estimator: give rows_shift a "
            "workdir (the study estimator is saved there and the sampler loads it) or the row an "
            "estimator path"
        )
    c = row_config(config, entry, estimator_path)
    if getattr(row, "num_steps", None):
        c.sample.num_steps = int(row.num_steps)
    return c


def rows_shift(config, model, params, rows, seeds, n, study, workdir=None) -> dict:
    """The study's shift: delta(lambda) per guidance row, mean and SE over ``seeds`` of ``n``
    images each (image i of a seed: ``guidance_rows.image_batch``), measured with the study
    estimator (`study_estimator`: trained on real images of ``config.data``, saved in and
    reused from ``<workdir>/estimator``).

    rows: objects with name, cfg_scale, nag_scale, nag_interval and optionally nag_mode
      ("token" default | "classifier": guided by the study estimator, or the row's
      ``estimator`` path) and num_steps. study: config.study (estimator, estimator_pool,
      estimator_seed, max_states, late). The forward-sample calibration uses real images of
      ``config.data`` of the same classes as the samples (``data.pipeline.real_images``).
    Returns {"estimator": info, "rows": {name: levels, delta_mean, delta_se, late, all}}; levels
    are noise levels (1 = noise), SiT time t = 1 - level.
    """
    from nag_jax.data.pipeline import real_images

    process = build.build_process(config, for_sampling=True)
    k = int(config.model.num_classes)
    estimator, est_path, est_info = study_estimator(config, study, workdir)
    shift_fn = jax.jit(
        lambda st, fw, lv: S.measure_shift(estimator.log_posterior, st, fw, lv, estimator.grid)
    )
    batches = {}  # per seed: the sampler's keys and labels, the calibration's real images
    for seed in seeds:
        keys, labels = image_batch(int(seed), n, k)
        real = real_images(
            config.data, _REAL_SHIFT + 10_000_000 * int(seed) + np.arange(n), np.asarray(labels)
        )
        batches[seed] = (keys, labels, jnp.asarray(real["image"]))
    out = {}
    for row in rows:
        c = _row_sample_config(config, row, est_path)
        fn = jax.jit(build.build_sampler(c, model, return_trajectory=True))
        deltas, late, whole = [], [], []
        for seed in seeds:
            keys, labels, real = batches[seed]
            _, traj = fn(params, keys, labels)
            sel = np.unique(np.linspace(0, traj["t"].shape[0] - 1, int(study.max_states)).round())
            states, times = traj["x"][sel.astype(int)], traj["t"][sel.astype(int)]
            levels = process.noise_level(times)
            fwd = S.forward_states(process, jax.random.key(10_000 + int(seed)), real, levels)
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
