"""Test fixtures, outside the package: tiny configs, models and a stand-in loss for tests,
benchmarks and smoke runs on CPU. From the repository root: ``python -m tests.fixtures WORKDIR``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from nag_jax.config.schema import base_config


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
    """A seconds-fast SiT (hidden 32, depth 1, 8x8x3) on synthetic shapes, global batch 8.

    Derived from the one schema (nag_jax.config.schema.base_config); ``train_overrides`` update
    ``config.train``."""
    c = base_config()
    c.model.update(
        name="SiT-S/2",
        input_size=8,
        in_channels=3,
        num_classes=4,
        learn_sigma=False,
        hidden_size=32,
        depth=1,
        num_heads=2,
    )
    c.data.update(
        name="synthetic_shapes", image_size=8, num_classes=4, global_batch_size=8, num_workers=0
    )
    c.optim.update(lr=1e-3, ema_decay=0.99)
    c.train.update(
        num_steps=6,
        log_every=2,
        checkpoint_every=2,
        keep=2,
        sample_every=0,
        preemption_sync_every=1,
        tensorboard=False,
    )
    c.train.update(train_overrides)
    c.sample.update(sampler="ode", num_steps=4, num_images=4, batch_size=4)
    c.parallel.update(fsdp=False, fsdp_min_size=256)
    return c


def tiny_model(config):
    """The backbone of ``config.model`` (nag_jax.sampling.build.build_model)."""
    from nag_jax.sampling.build import build_model

    return build_model(config.model)


def standin_loss(apply_fn, params, x1, y, key, *, p_class_drop=0.1, p_noise_drop=0.1):
    """Linear-path velocity loss with independent class / noise-condition dropout (SiT times)."""
    k_t, k_x, k_c, k_n = jax.random.split(key, 4)
    n, c = x1.shape[0], x1.shape[-1]
    t = jax.random.uniform(k_t, (n,))
    x0 = jax.random.normal(k_x, x1.shape)
    tb = t[:, None, None, None]
    xt, ut = tb * x1 + (1 - tb) * x0, x1 - x0
    drop_class = jax.random.bernoulli(k_c, p_class_drop, (n,))
    drop_noise = jax.random.bernoulli(k_n, p_noise_drop, (n,))
    out = apply_fn(params, xt, t, y, drop_class, drop_noise)[..., :c]
    loss = jnp.mean((out - ut) ** 2)
    return loss, {"mse": loss}


def slow_iterator(it, sleep: float):
    """Wraps a grain DatasetIterator; sleeps ``sleep`` s before each batch (kill/SIGTERM tests;
    a step of a real model takes longer than a tiny model's async save) and counts the batches
    taken in ``.n`` (the steps run).

    A DatasetIterator subclass, so grain's Orbax handler checkpoints it like the original.
    """
    import time

    import grain

    class SlowIterator(grain.DatasetIterator):
        n = 0

        def __next__(self):
            self.n += 1
            time.sleep(sleep)
            return next(self._parent)

        def get_state(self):
            return self._parent.get_state()

        def set_state(self, state):
            self._parent.set_state(state)

    return SlowIterator(it)


def flat_params(params) -> dict:
    """{'a/b/kernel': numpy array} of a (possibly multi-process sharded) param tree."""
    import numpy as np
    from jax.experimental import multihost_utils

    from nag_jax.parallel import path_str

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def main(argv=None) -> int:
    """``python -m tests.fixtures WORKDIR [key=value ...]``: tiny run, writes
    WORKDIR/final_params_<process>.npz. Keys: num_steps, checkpoint_every, sleep, fsdp."""
    import sys

    import numpy as np
    from absl import logging

    from nag_jax.data import create_dataset
    from nag_jax.parallel import maybe_initialize_distributed
    from nag_jax.training.loop import run

    logging.set_verbosity(logging.INFO)
    logging.set_stderrthreshold(logging.INFO)  # the tests read the restore / preemption lines
    args = list(sys.argv[1:] if argv is None else argv)
    workdir, opts = args[0], dict(a.split("=", 1) for a in args[1:])
    maybe_initialize_distributed()
    cfg = tiny_config(
        num_steps=int(opts.get("num_steps", 6)),
        checkpoint_every=int(opts.get("checkpoint_every", 2)),
    )
    cfg.parallel.fsdp = opts.get("fsdp", "1") == "1"
    it = create_dataset(
        cfg.data,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        global_batch_size=cfg.data.global_batch_size,
    )
    sleep = float(opts.get("sleep", 0))
    state = run(
        cfg,
        workdir,
        model=tiny_model(cfg),
        loss_fn=standin_loss,
        data_iter=slow_iterator(it, sleep) if sleep else it,
    )
    flat = flat_params(state.params)
    flat["__step__"] = np.asarray(jax.device_get(state.step))
    np.savez(f"{workdir}/final_params_{jax.process_index()}.npz", **flat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
