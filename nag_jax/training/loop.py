"""Training / NAG fine-tuning loop: mesh -> state -> data -> loop -> checkpoints.

    python -m nag_jax.main --config=configs/sit_xl.py --workdir=DIR      (config.mode = "train")

Time convention: set by the process (SiT float t in [0, 1], 1 = data; DiT step 0..999, 0 = least
noise); this module never touches t itself.

Story of ``run(config, workdir)``:
1. ``jax.distributed`` when multi-process; the ('data', 'fsdp', 'tensor') mesh.
2. The workdir's config.json is written or checked (another model -> clear error).
3. Abstract state (``jax.eval_shape``) -> shardings from the rules in ``nag_jax.parallel``.
4. Latest checkpoint restored (state + data position), else params from ``model.weights``
   (a converted release: null token created) or a fresh init, placed by one jit.
5. Loop: one jitted, donated step per batch; NaN/Inf stops with one line (the step, the
   checkpoint a resume restores, what to change; nothing is saved); metrics + steps/s,
   examples/s, ETA every ``log_every``; sample grids every ``sample_every`` (images
   i = 0..N-1 of config.seed, nag_jax.sampling.generate); the evaluators given by the caller on
   the EMA weights every ``eval_every`` (nag_jax.main passes
   nag_jax.evaluation.evaluators.from_config: FID per config.eval); async checkpoints every
   ``checkpoint_every`` and at the end. Training never imports the evaluation jobs.
6. SIGTERM (preemption) or a first Ctrl-C (SIGINT): a flag; at the next step boundary (all
   processes agree via a tiny all-reduce) a checkpoint is written, the save in flight completes
   and ``run`` returns normally (main exits 0). A second Ctrl-C aborts (KeyboardInterrupt).
7. The workdir is locked for the whole run (nag_jax.storage.workdir: a second job fails at once
naming
   the holder). A failed async save (full disk, read-only workdir) stops the run at the next
   step with one line naming the path and the errno (checkpoint.CheckpointSaveError); a corrupt
   latest checkpoint is set aside and the previous one restored (checkpoint.restore).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.errors import RunStopped
from nag_jax.storage import workdir as workdir_lib
from nag_jax.training import checkpoint as ckpt
from nag_jax.training import run_config
from nag_jax.training.state import TrainState, create_optimizer, init_state
from nag_jax.training.step import jit_train_step_from_config, make_nag_loss


class NonFiniteLossError(RunStopped, FloatingPointError):
    """Raised when the loss or the gradient norm becomes NaN/Inf (one line: the step, the
    checkpoint to resume from and what to change; ``nag-jax`` exits 1)."""


class _StopFlag:
    """Set by SIGTERM (preemption notice) or the first Ctrl-C (SIGINT); the loop reads it at step
    boundaries. A second Ctrl-C raises KeyboardInterrupt (abort)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.event = threading.Event()
        self._old = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:  # an ignored signal (e.g. SIGINT of a background job) stays so
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.event.is_set():
            self.uninstall()
            raise KeyboardInterrupt("second Ctrl-C: aborting without a final checkpoint")
        again = " (Ctrl-C again to abort)" if signum == signal.SIGINT else ""
        logging.warning(
            "Signal %d received: checkpointing at the next step boundary, then exiting%s.",
            signum,
            again,
        )
        self.event.set()

    def uninstall(self):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def model_batch(batch) -> dict:
    """Data-pipeline batch -> {"x": (N, H, W, C) float32, "y": (N,) int32} (process-local numpy)."""
    x = next((batch[k] for k in ("image", "latents", "latent", "x") if k in batch), None)
    y = next((batch[k] for k in ("label", "y") if k in batch), None)
    if x is None or y is None:
        raise KeyError(
            f"Batch keys {sorted(batch)}: expected an image ('image'/'latents'/'x') and a label "
            "('label'/'y')."
        )
    return {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.int32)}


def nonfinite_message(step: int, loss: float, mngr, resumed=None) -> str:
    """The one line of a NaN/Inf stop: the step, the checkpoint a resume restores, what to do.

    ``resumed``: (step, verified) of the checkpoint this run restored. A run that diverges within
    a few steps of a restore from a step no manifest verified (its values were finite, but the
    bytes cannot be checked) is told how to set that step aside, not to lower the learning rate.
    """
    latest = mngr.latest_step()
    where = mngr.directory
    if latest is None:
        kept = f"no checkpoint has been saved yet in {where}"
    else:
        kept = f"a resume restores step {latest} in {where}"
    fix = "lower config.optim.lr, set config.optim.grad_clip, or check the data, then resume"
    if resumed is not None and not resumed[1] and latest == resumed[0]:
        s0 = resumed[0]
        fix = (
            f"step {s0} was restored without a checksum manifest (it cannot be verified); if "
            f"the loss was fine before it, set it aside (mv {where}/{s0} {where}/{s0}.corrupt) "
            f"and resume from the previous step; else {fix}"
        )
    return (
        f"Loss or gradient norm is NaN/Inf at step {step} (loss={loss}). Stopped without "
        f"saving; {kept}. To go on: {fix}."
    )


def _with_shardings(abstract, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def init_params_fn(config, model):
    """key -> freshly initialised params of ``model`` (float32), for jit / eval_shape."""
    s = int(config.model.input_size)
    x = jnp.zeros((1, s, s, int(config.model.in_channels)), jnp.float32)
    t, y = jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.int32)
    return lambda key: model.init(key, x, t, y)["params"]


def setup_state(
    config,
    model,
    mesh,
    *,
    params=None,
    fsdp_min_size: int | None = None,
):
    """Optimizer, sharded initial state and its shardings.

    Args:
      params: optional initial params (e.g. from ``model.weights``); None = ``model.init``.
    Returns: (state, state_shardings, tx).
    """
    rng = jax.random.PRNGKey(int(config.seed))
    init_key, state_key = jax.random.split(rng)
    init_params = init_params_fn(config, model)
    abstract_params = jax.eval_shape(init_params, init_key)
    tx = create_optimizer(config.optim, abstract_params)
    abstract_state = jax.eval_shape(lambda p: init_state(p, tx, state_key), abstract_params)
    if fsdp_min_size is None:
        fsdp_min_size = int(config.parallel.fsdp_min_size)
    shardings = parallel.tree_shardings(abstract_state, mesh, fsdp_min_size=fsdp_min_size)
    if params is None:
        params = jax.jit(init_params, out_shardings=shardings.params)(init_key)
    else:
        params = jax.device_put(params, shardings.params)
    state = jax.jit(lambda p: init_state(p, tx, state_key), out_shardings=shardings)(params)
    return state, shardings, tx


def _builders():
    from nag_jax.sampling import build

    return build


def _dataset_iterator(config, global_batch_size):
    from nag_jax.data import create_dataset

    ds = create_dataset(
        config.data,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        global_batch_size=global_batch_size,
    )
    return iter(ds)


def make_grid_sampler(config, model, mesh):
    """``fn(params) -> (N, H, W, C) numpy`` for the periodic sample grids, compiled once.

    Images 0..N-1 of ``config.seed`` (nag_jax.sampling.generate: the same noise at every step, so
    successive grids differ by the weights only), N = ``config.sample.num_images``, labels
    ``config.sample.labels`` or 0, 1, 2, ... cycled, guided as ``config.sample`` says; output
    replicated so every process can read it.
    """
    from nag_jax.sampling import build, generate

    n, k = int(config.sample.num_images), int(config.model.num_classes)
    idx = np.arange(n)
    keys = generate.image_keys(config.seed, idx)
    y = generate.image_labels(config.seed, idx, k, config.sample.labels or range(k))
    sample_fn = jax.jit(build.build_sampler(config, model), out_shardings=parallel.replicated(mesh))
    return lambda params: np.asarray(sample_fn(params, keys, y).addressable_data(0))


def make_grid_decoder(config):
    """``fn(latents) -> images in [-1, 1]`` for the periodic grids of a latent model when
    ``config.vae.path`` is set (the SD-VAE, nag_jax.sampling.build.build_decoder, jitted once);
    None for pixel models or without a VAE (the grids are then saved as raw latents .npy)."""
    if int(config.model.in_channels) == 3:
        return None
    if not config.vae.path:
        logging.info(
            "Sample grids of this latent model are saved as raw latents (.npy): set "
            "--config.vae.path to decode them into PNG and TensorBoard grids."
        )
        return None
    decode, vae_params = _builders().build_decoder(config)
    fn = jax.jit(decode)
    return lambda latents: np.asarray(fn(vae_params, latents))


def write_grid(workdir, writer, step, images, decode=None) -> str:
    """Saves samples under ``<workdir>/samples/`` (local or gs://, nag_jax.storage.paths): an RGB
    PNG grid (and TensorBoard image), or raw latents as .npy when the images are latents and no
    ``decode`` (latents -> images in [-1, 1]) is given. Returns the file's path."""
    from nag_jax.storage.paths import as_path, atomic_write
    from nag_jax.utils import make_grid, save_png, to_uint8

    out = as_path(workdir) / "samples"
    if images.shape[-1] != 3 and decode is not None:
        images = decode(images)
    if images.shape[-1] != 3:  # latents without a VAE
        return atomic_write(out / f"step_{step:08d}_latents.npy", lambda f: np.save(f, images))
    grid = make_grid(to_uint8(images), ncols=int(np.ceil(np.sqrt(len(images)))))
    path = str(out / f"step_{step:08d}.png")
    save_png(path, grid)
    writer.write_images(step, {"samples": grid[None]})
    return path


def run(
    config,
    workdir: str,
    *,
    model=None,
    process=None,
    loss_fn=None,
    data_iter=None,
    make_evaluators=None,
):
    """Trains (or fine-tunes) per ``config``; returns the final TrainState.

    Keyword overrides (tests, custom objectives): ``model``/``process`` instead of the builders,
    ``loss_fn(apply_fn, params, x1, y, key) -> (loss, aux)`` instead of NAG's objective, and
    ``data_iter`` (yields dicts with image/label) instead of ``nag_jax.data.create_dataset``.
    ``make_evaluators(model, mesh) -> {name: evaluate(params) -> {scalar name: float}}`` is called
    once, at the first ``train.eval_every`` step (nag_jax.main passes
    ``nag_jax.evaluation.evaluators.from_config``); None = no evaluation.
    """
    from nag_jax.config import schema

    schema.validate(config)
    stop = _StopFlag().install()  # first: a preemption during start-up still checkpoints
    try:
        return _run(config, workdir, stop, model, process, loss_fn, data_iter, make_evaluators)
    finally:
        stop.uninstall()


def _run(config, workdir, stop, model, process, loss_fn, data_iter, make_evaluators):
    parallel.maybe_initialize_distributed()
    with workdir_lib.locked(workdir, job="train") as locked_workdir:  # fails fast if in use
        return _run_locked(
            config, locked_workdir, stop, model, process, loss_fn, data_iter, make_evaluators
        )


def _run_locked(config, workdir, stop, model, process, loss_fn, data_iter, make_evaluators):
    mesh = parallel.create_mesh(config.parallel)
    gbs = int(config.data.global_batch_size)
    parallel.check_global_batch(gbs, mesh)
    tcfg = config.train
    if model is None:
        model = _builders().build_model(config.model)
    weights = config.model.weights
    if process is None and (loss_fn is None or weights):
        process = _builders().build_process(config)
    if loss_fn is None:
        loss_fn = make_nag_loss(config, process)
    if data_iter is None:
        data_iter = _dataset_iterator(config, gbs)
    run_config.check_or_write_config(config, workdir)
    mngr = ckpt.create_manager(
        os.path.join(workdir, "checkpoints"),
        keep=int(tcfg.keep),
        keep_every=tcfg.keep_every,
        async_save=bool(tcfg.async_checkpoint),
    )

    params = None
    resuming = mngr.latest_step() is not None
    if not resuming and weights:
        from nag_jax.training.finetune import params_from_checkpoint

        reinit = tcfg.reinit
        init_params = init_params_fn(config, model)
        init_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]  # setup_state's
        # Fresh values are only materialised when some params are re-initialised.
        if reinit:
            template = jax.jit(init_params)(init_key)
        else:
            template = jax.eval_shape(init_params, init_key)
        params = params_from_checkpoint(
            weights,
            model,
            template,
            jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 7),
            config=config,
            process=process,
            reinit=reinit,
        )
    state, shardings, tx = setup_state(config, model, mesh, params=params)
    if resuming:
        abstract = _with_shardings(jax.eval_shape(lambda s: s, state), shardings)
        del state
        state = ckpt.restore(mngr, abstract, data_iter)

    train_step = jit_train_step_from_config(config, model, shardings, mesh, tx, loss_fn=loss_fn)
    return _loop(
        config, workdir, model, mesh, mngr, state, train_step, data_iter, stop, make_evaluators
    )


def _loop(
    config, workdir, model, mesh, mngr, state: TrainState, train_step, data_iter, stop, evaluators
):
    from nag_jax.training.metrics import Progress, create_writer, flat_hparams
    from nag_jax.training.state import learning_rate_schedule

    tcfg = config.train
    num_steps = int(tcfg.num_steps)
    log_every = int(tcfg.log_every)
    ckpt_every = int(tcfg.checkpoint_every)
    sample_every = int(tcfg.sample_every)
    eval_every = int(tcfg.eval_every) if evaluators is not None else 0
    sync_every = int(tcfg.preemption_sync_every)
    gbs = int(config.data.global_batch_size)
    step = int(jax.device_get(state.step))
    writer = create_writer(
        workdir,
        just_logging=jax.process_index() > 0,
        tensorboard=bool(tcfg.tensorboard),
    )
    if step == 0:
        writer.write_hparams(flat_hparams(config))
    progress = Progress(num_steps, gbs, start_step=step)
    lr_at = learning_rate_schedule(config.optim)  # the lr of the update that made step s: s - 1
    resumed = getattr(mngr, "restored", None)  # (step, verified) when this run resumed

    def check_finite(s, metrics):
        if not bool(jax.device_get(metrics["finite"])):
            ckpt.check_save(mngr, wait=True)  # the latest step is committed (or reported)
            raise NonFiniteLossError(
                nonfinite_message(s, float(jax.device_get(metrics["loss"])), mngr, resumed)
            )

    logging.info("Training from step %d to %d (global batch %d).", step, num_steps, gbs)
    pending, grid_sampler, evaluate, last_saved = None, None, None, step
    decode_grid = False  # make_grid_decoder(config) once, at the first grid
    completed = False
    try:
        while step < num_steps:
            try:
                batch = next(data_iter)
            except StopIteration:
                logging.warning("Data iterator exhausted at step %d.", step)
                break
            batch = parallel.global_batch(model_batch(batch), mesh)
            if pending is None:
                logging.info("Compiling the train step (the first step waits for it) ...")
                if jax.process_count() > 1:  # compile, then run the first step together
                    train_step.lower(state, batch).compile()  # (the call reuses it)
                    parallel.wait_for_all_processes("nag_jax_first_step")
            state, metrics = train_step(state, batch)
            step += 1
            ckpt.check_save(mngr)  # a failed async save stops the run now (a flag read)
            if pending is None:  # first step of this process compiled: time from here on
                jax.block_until_ready(metrics)
                progress.reset(step)
            if pending is not None:  # check the previous step while this one runs
                check_finite(*pending)
            pending = (step, metrics)
            if step % log_every == 0 or step == num_steps:
                check_finite(step, metrics)
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                scalars.pop("finite", None)
                scalars["lr"] = float(lr_at(step - 1))
                report = progress(step)
                logging.info("%s", progress.line(step, report, scalars))
                writer.write_scalars(step, {**scalars, **report})
            if sample_every and step % sample_every == 0:
                try:
                    with progress.excluded("sample"):
                        grid_sampler = grid_sampler or make_grid_sampler(config, model, mesh)
                        images = grid_sampler(state.ema_params)
                        if jax.process_index() == 0:
                            if decode_grid is False:  # a failing VAE load: .npy from now on
                                decode_grid = None
                                decode_grid = make_grid_decoder(config)
                            path = write_grid(workdir, writer, step, images, decode_grid)
                            logging.info("Sample grid at step %d: %s", step, path)
                except Exception as e:  # noqa: BLE001 - a broken sampler must not stop training
                    logging.exception("Sampling at step %d failed: %s", step, e)
            if eval_every and step % eval_every == 0:
                try:  # e.g. FID (or the proxy) on the EMA weights, same noise every time
                    with progress.excluded("eval"):
                        if evaluate is None:
                            evaluate = evaluators(model, mesh)
                        for name, fn in evaluate.items():
                            values = fn(state.ema_params)
                            text = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items())
                            logging.info("Evaluation %s at step %d: %s", name, step, text)
                            writer.write_scalars(step, values)
                except Exception as e:  # noqa: BLE001 - a broken evaluation must not stop training
                    logging.exception("Evaluation at step %d failed (%s); disabled.", step, e)
                    eval_every = 0
            preempt = False
            if step % sync_every == 0 or jax.process_count() == 1:
                preempt = parallel.any_across_processes(stop.event.is_set())
            if (ckpt_every and step % ckpt_every == 0) or step == num_steps or preempt:
                check_finite(step, metrics)
                with progress.excluded("checkpoint"):
                    ckpt.save(mngr, state, data_iter, force=True)
                last_saved = step
            if preempt:
                logging.warning("Preempted: checkpoint at step %d written; exiting.", step)
                break
        if last_saved != step and pending is not None:  # data ran out early: keep the steps
            check_finite(*pending)
            ckpt.save(mngr, state, data_iter, force=True)
        completed = True
    finally:
        # Pending async saves (and their checksum manifests) complete even when raising.
        ckpt.finish(mngr, raise_errors=completed)
        writer.flush()
    return state
