"""Image identity and batch generation: what "image i of seed s" is, everywhere.

Sample mode (nag_jax.jobs.sample), evaluation (nag_jax.jobs.eval and the trainer's
evaluators) and the training sample grid all draw image i through this module:

    sample_key, label_key = split(key(seed))
    image_keys(seed, idx)[j]  = fold_in(sample_key, idx[j])  -> x_init and every sampler noise
                                                               of image idx[j] (builders)
    image_labels(seed, idx, num_classes, labels)[j]
                              = labels[idx[j] % len(labels)]  if labels are given, else
                                randint(fold_in(label_key, idx[j]), 0, num_classes)

so image i depends only on (seed, i), the weights and the sampling configuration: not on the batch
it is drawn in, the batch size, the image count or the device count (up to float reassociation in
the network's matmuls when the device layout changes). ``make_batch_sampler`` is the one sharded
sampler: ``run_batch(params, indices) -> (uint8 images, labels)``, optionally decoding latents with
the VAE inside the same jit. uint8 rule: nag_jax.utils.to_uint8 = clip(round(127.5 x + 127.5)).

Time conventions: none of its own; sampling goes through nag_jax.sampling.build (SiT float t, 0 =
noise;
DiT integer step, 0 = least noise; guidance intervals in noise level, 1 = pure noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import parallel
from nag_jax.config.schema import ConfigError
from nag_jax.sampling import build
from nag_jax.storage.paths import as_path
from nag_jax.utils import to_uint8


def _seed_keys(seed) -> tuple[jax.Array, jax.Array]:
    """``seed``: a Python int, or a traced int32 scalar (the sweep passes the seed at run time;
    ``key(s)`` of a non-negative int32 equals ``key(int(s))``)."""
    seed = int(seed) if isinstance(seed, (int, np.integer)) else seed
    sample_key, label_key = jax.random.split(jax.random.key(seed))
    return sample_key, label_key


def image_keys(seed: int, indices) -> jax.Array:
    """(N,) typed PRNG keys of global image indices (N,) for ``build.build_sampler``."""
    return build.per_image_keys(_seed_keys(seed)[0], indices)


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


def load_weights(path: str) -> tuple[dict, dict]:
    """``config.model.weights`` -> (params as numpy, metadata or {}): a converted checkpoint
    (``python -m nag_jax.convert to-orbax``: params + metadata) or a training workdir's
    checkpoints/ directory (latest EMA params, no metadata); local or remote (``gs://``,
    nag_jax.storage.paths)."""
    path = str(as_path(path))
    if not as_path(path).exists():
        raise FileNotFoundError(
            f"config.model.weights={path} does not exist; convert a release with "
            "`python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT` "
            "or point it at a training workdir's checkpoints/ directory."
        )
    from nag_jax.storage.weights import load_params

    return load_params(path)


def with_domain_params(config, params):
    """The params a sampler of ``config`` takes: ``params`` itself, or with Domain Guidance
    (``config.sample.dog_scale != 1``) ``{"main": params, "domain": pre-trained}``, the
    pre-trained weights read from ``config.model.domain_weights`` and fitted to ``params``'s tree
    (``build.domain_params_like``: only their null label row is read)."""
    if float(config.sample.dog_scale) == 1.0:
        return params
    if not config.model.domain_weights:
        raise ValueError(
            f"config.sample.dog_scale={config.sample.dog_scale} (Domain Guidance) needs the "
            "pre-trained weights: set config.model.domain_weights to the model the fine-tune "
            "started from (a converted release or a training checkpoints/ directory)."
        )
    domain = load_weights(config.model.domain_weights)[0]
    return {build.MAIN: params, build.DOMAIN: build.domain_params_like(params, domain)}


def load_decoder(config) -> tuple[Callable, object] | None:
    """``(fn(vae_params, latents) -> images in [-1, 1], vae_params)`` for latent models
    (``config.model.in_channels != 3``: the SD-VAE at ``config.vae.path``); None for pixel
    models."""
    if int(config.model.in_channels) == 3:
        return None
    if not config.vae.path:
        raise ConfigError(
            f"{config.model.name} samples {config.model.in_channels}-channel latents: set "
            "--config.vae.path to the SD-VAE (a local stabilityai/sd-vae-ft-ema folder or "
            "`python -m nag_jax.convert vae` output)."
        )
    from nag_jax.models import vae as vae_lib

    vae, vae_params = vae_lib.load_vae(config.vae.path, chunk_size=int(config.vae.chunk_size))
    return vae.decode, vae_params


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
    ``build.build_sampler(config, model)``; ``decode = (fn, decode_params)`` (`load_decoder`)
    runs inside the same jit, its params a replicated jit argument. Multi-process: every process
    passes the same indices; the images are gathered on every process.
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
