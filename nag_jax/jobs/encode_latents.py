"""Encode an image dataset to SD-VAE latent shards (resumable), for the "latents" data source.

    python -m nag_jax.main --config=configs/CONFIG.py --workdir=DIR --config.mode=encode_latents

``run(config, workdir)`` reads ``config.data`` (the image source: image_folder, a tfds name or
synthetic_shapes; ``image_size`` is the pixel size, e.g. 256; ``bad_images``: an image that does
not decode is left out and logged by name, "skip", or stops the run, "fail"; the skipped files
are listed in ``<shard>.skipped.json`` and metadata.json "skipped"), ``config.vae.path`` (the
diffusers / converted Orbax VAE directory, nag_jax.models.vae.load_vae) and ``config.encode``:

    out_dir       output directory (default: WORKDIR/latents)
    batch_size    images per encode call over all local devices (default 64; a multiple of
                  jax.local_device_count())
    shard_size    examples per array_record shard (default 10_000)
    dtype         stored dtype "float16" (default) | "bfloat16" | "float32"
    store_flips   also store the latent of the horizontally flipped image (default True;
                  training-time flips are then exact)
    sample        posterior sample (True, the releases' choice) or posterior mean
    max_examples  encode only the first N examples (None = all)
    vae_dtype     VAE compute dtype ("float32" | "bfloat16")

Latents are stored *scaled* (encode(x).sample() * 0.18215, metadata "scaled": true).
Images: ADM centre crop to image_size, [-1, 1], NHWC; no time convention here. The encoding
itself (shards, resuming, several processes) is ``nag_jax.data.encode.encode_dataset``.

Resumable: a rerun skips the shards already written and gives the same result
(``nag_jax.data.encode``).

The encode function is pluggable: ``run(config, workdir, encode_fn=f, params=p)`` with
``f(params, images_nhwc_in_[-1,1], key) -> latents (N, h, w, c)`` (already scaled). The batch is
split over ``jax.local_devices()`` (jax.jit + NamedSharding over a 1-D 'data' mesh).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.data import latents as latents_lib
from nag_jax.data.encode import encode_dataset
from nag_jax.data.pipeline import build_source
from nag_jax.models import vae as vae_lib
from nag_jax.storage.paths import as_path


def _default_encoder(config):
    """encode_fn and params of the SD-VAE at config.vae.path (nag_jax.models.vae)."""
    vae_path = config.vae.path
    if not vae_path:
        raise ValueError(
            "config.vae.path is not set: expected a diffusers-format SD-VAE folder (e.g. "
            "a local download of stabilityai/sd-vae-ft-ema) or an Orbax dir converted with "
            "`python -m nag_jax.convert vae`"
        )
    dtype = jnp.bfloat16 if config.encode.vae_dtype == "bfloat16" else jnp.float32
    vae, params = vae_lib.load_vae(vae_path, dtype=dtype)
    sample = bool(config.encode.sample)

    def encode_fn(p, images, key):
        return vae._encode(p, images, key, sample=sample)

    return encode_fn, params, {"vae": str(vae_path), "scale_factor": vae.scaling_factor}


def run(config, workdir: str, *, encode_fn=None, params=None) -> dict | None:
    """mode="encode_latents": encodes config.data's images to latent shards (see module doc).

    encode_fn/params: override the VAE (tests, custom encoders); default loads
    config.vae.path with nag_jax.models.vae.load_vae.
    """
    data_cfg, encode_cfg = config.data, config.encode
    if data_cfg.name == "latents":
        raise ValueError("encode_latents needs an image source in config.data.name, got 'latents'")
    extra = {}
    if encode_fn is None:
        encode_fn, params, extra = _default_encoder(config)
    scale = extra.pop("scale_factor", latents_lib.SD_VAE_SCALE)
    source = build_source(data_cfg)
    return encode_dataset(
        source,
        encode_cfg.out_dir or str(as_path(workdir) / "latents"),
        encode_fn=encode_fn,
        params=params,
        image_size=int(data_cfg.image_size),
        batch_size=int(encode_cfg.batch_size),
        shard_size=int(encode_cfg.shard_size),
        dtype=encode_cfg.dtype,
        store_flips=bool(encode_cfg.store_flips),
        seed=int(config.seed),
        max_examples=encode_cfg.max_examples,
        scaled=True,
        scale_factor=scale,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        bad_images=data_cfg.bad_images,
        metadata_extra={**extra, "data_name": data_cfg.name},
    )
