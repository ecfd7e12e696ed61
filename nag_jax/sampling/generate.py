"""Image identity and batch generation: what "image i of seed s" is, everywhere, and the ONE
sharded batch sampler that draws it. Nothing else lives here (weights and the VAE are loaded by
nag_jax.storage.weights and nag_jax.models.vae, for a config through nag_jax.sampling.build).

Sample mode (nag_jax.jobs.sample), evaluation (nag_jax.jobs.eval and the trainer's
evaluators), the sweep and the training sample grid all draw image i through this module:

    sample_key, label_key = split(key(seed))
    image_keys(seed, idx)[j]  = per_image_keys(sample_key, idx)[j] = fold_in(sample_key, idx[j])
                                -> x_init and every sampler noise of image idx[j]
                                   (nag_jax.sampling.build.initial_noise)
    image_labels(seed, idx, num_classes, labels)[j]
                              = labels[idx[j] % len(labels)]  if labels are given, else
                                randint(fold_in(label_key, idx[j]), 0, num_classes)

so image i depends only on (seed, i), the weights and the sampling configuration: not on the batch
it is drawn in, the batch size, the image count or the device count (up to float reassociation in
the network's matmuls when the device layout changes). ``make_batch_sampler`` is the one sharded
sampler: ``run_batch(params, indices) -> (uint8 images, labels)``, optionally decoding latents with
the VAE inside the same jit. uint8 rule: nag_jax.utils.to_uint8 = clip(round(127.5 x + 127.5)).

Time conventions: none of its own; sampling goes through nag_jax.sampling.build (SiT float t,
0 = noise; DiT integer step, 0 = least noise; guidance intervals in noise level, 1 = pure noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import parallel
from nag_jax.errors import ConfigError
from nag_jax.sampling import build
from nag_jax.utils import moved_names, to_uint8


def _seed_keys(seed) -> tuple[jax.Array, jax.Array]:
    """``seed``: a Python int, or a traced int32 scalar (the sweep passes the seed at run time;
    ``key(s)`` of a non-negative int32 equals ``key(int(s))``)."""
    seed = int(seed) if isinstance(seed, (int, np.integer)) else seed
    sample_key, label_key = jax.random.split(jax.random.key(seed))
    return sample_key, label_key


def per_image_keys(key: jax.Array, indices) -> jax.Array:
    """One key per global image index: ``keys[j] = fold_in(key, indices[j])`` (shape (N,)).
    The key of a seed is `image_keys`'s."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


def image_keys(seed: int, indices) -> jax.Array:
    """(N,) typed PRNG keys of global image indices (N,) for ``build.build_sampler``."""
    return per_image_keys(_seed_keys(seed)[0], indices)


def image_labels(seed: int, indices, num_classes: int, labels=None) -> jax.Array:
    """(N,) int32 class labels of global image indices: ``labels`` cycled, or drawn per index.

    ``labels``: a sequence of class ids in [0, num_classes) (config.sample.labels) or None.
    """
    indices = jnp.asarray(indices, jnp.uint32)
    if labels is not None:
        table = np.asarray(list(labels), np.int64).reshape(-1)
        if table.size == 0 or table.min() < 0 or table.max() >= num_classes:
            raise ConfigError(
                f"config.sample.labels={tuple(table.tolist())} must be non-empty class ids in "
                f"[0, {num_classes})."
            )
        return jnp.asarray(table, jnp.int32)[indices % table.size]
    label_key = _seed_keys(seed)[1]
    draw = lambda i: jax.random.randint(jax.random.fold_in(label_key, i), (), 0, num_classes)
    return jax.vmap(draw)(indices).astype(jnp.int32)


def config_labels(config, indices) -> jax.Array:
    """`image_labels` of ``config`` (seed, model.num_classes, sample.labels)."""
    return image_labels(config.seed, indices, int(config.model.num_classes), config.sample.labels)


def padded_batch_size(batch_size: int, mesh) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's batch shards and the process count
    (what `make_batch_sampler` accepts)."""
    shards = math.lcm(parallel.batch_shards(mesh), jax.process_count())
    return max(shards, -(-int(batch_size) // shards) * shards)


def make_batch_sampler(
    config,
    model,
    params_like,
    mesh,
    *,
    sample_fn: Callable | None = None,
    decode: tuple[Callable, object] | None = None,
    traced: bool = False,
):
    """Returns ``run_batch(params, indices (B,) int) -> (uint8 images (B, H, W, 3), labels (B,))``,
    numpy, compiled once (params may change between calls: EMA during training).

    ``traced=True`` (the sweep): ``run_batch(params, indices, seed, guide)`` takes the seed (an
    int, image identity as above) and ``guide`` (a dict of arrays, e.g. ``scales`` and
    ``intervals``, passed as ``sample_fn(params, keys, y, **guide)``) as run-time arguments, so
    ONE compilation serves every seed and guidance point.

    B must be a multiple of the mesh's batch shards and of the process count
    (`padded_batch_size`). ``params_like``: the params tree or its shapes (for the shardings;
    config.parallel's FSDP rules apply). ``sample_fn(params, keys, y)`` defaults to
    ``build.build_sampler(config, model)``; ``decode = (fn, decode_params)``
    (``build.build_decoder``) runs inside the same jit, its params a replicated jit argument.
    Multi-process: every process passes the same indices; the images are gathered on every
    process.
    """
    if sample_fn is None:
        sample_fn = build.build_sampler(config, model)
    batch_sharding = parallel.batch_sharding(mesh)
    param_shardings = parallel.tree_shardings(params_like, mesh)

    decode_fn, decode_params = decode if decode is not None else (None, None)
    if decode_params is not None:
        decode_params = jax.device_put(decode_params, parallel.replicated(mesh))

    def _fn(p, dp, idx, seed=None, guide=None):
        seed = config.seed if seed is None else seed
        y = image_labels(seed, idx, int(config.model.num_classes), config.sample.labels)
        x = sample_fn(p, image_keys(seed, idx), y, **(guide or {}))
        if decode_fn is not None:
            x = decode_fn(dp, x)
        return x, y

    rep = parallel.replicated(mesh)
    shardings = (param_shardings, rep, batch_sharding) + ((rep, rep) if traced else ())
    jitted = jax.jit(_fn, in_shardings=shardings, out_shardings=batch_sharding)
    procs, pi = jax.process_count(), jax.process_index()

    def run_batch(params, indices, *traced_args):
        if len(traced_args) != (2 if traced else 0):
            raise TypeError(
                "run_batch takes (params, indices, seed, guide) when traced=True, else "
                f"(params, indices); got {2 + len(traced_args)} arguments."
            )
        if traced:
            seed, guide = traced_args
            guide = {k: jnp.asarray(v, jnp.float32) for k, v in guide.items()}
            traced_args = (np.int32(seed), guide)
        idx = np.asarray(indices, np.uint32)
        local = idx.reshape(procs, -1)[pi]
        g_idx = parallel.global_batch(local, mesh)
        x, y = jitted(jax.device_put(params, param_shardings), decode_params, g_idx, *traced_args)
        if procs > 1:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
            y = multihost_utils.process_allgather(y, tiled=True)
        return to_uint8(np.asarray(x)), np.asarray(y)

    # place params once (device_put of already-placed arrays is a no-op in run_batch)
    run_batch.place = lambda p: jax.device_put(p, param_shardings)
    return run_batch


def iterate_batches(
    run_batch: Callable, indices, batch_size: int, *, desc: str | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(indices, images, labels)`` for ``indices`` in order, ``batch_size`` at a time
    (a `padded_batch_size`); the last batch is padded by repeating its last index and the
    padding is dropped. ``run_batch(indices) -> (images, labels)``. ``desc``: a progress bar
    (images, rate, ETA; nag_jax.utils.progress_bar) with that label."""
    from nag_jax.utils import progress_bar

    indices = np.asarray(indices, np.int64)
    bar = progress_bar(total=len(indices), desc=desc) if desc else None
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            n = len(idx)
            padded = np.concatenate([idx, np.repeat(idx[-1:], batch_size - n)])
            images, labels = run_batch(padded)
            if bar is not None:
                bar.update(n)
            yield idx, images[:n], labels[:n]
    finally:
        if bar is not None:
            bar.close()


def sample_all(
    run_batch: Callable, params, num_images: int, batch_size: int, *, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images 0..num_images-1 of `make_batch_sampler`'s ``run_batch`` with ``params`` (placed
    once), ``batch_size`` at a time (`iterate_batches`) -> ((N, H, W, 3) uint8, (N,) labels)."""
    params = run_batch.place(params)
    images, labels = [], []
    batches = iterate_batches(
        lambda idx: run_batch(params, idx), np.arange(num_images), batch_size, desc=desc
    )
    for _, x, y in batches:
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


# Names that moved (issue 21): a one-line error naming the new home.
__getattr__ = moved_names(
    __name__,
    {
        "load_weights": "nag_jax.storage.weights.load_params",
        "with_domain_params": "nag_jax.sampling.build.with_domain_params",
        "load_decoder": "nag_jax.sampling.build.build_decoder",
    },
)
