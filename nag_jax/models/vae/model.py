"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) as pure functions: `AutoencoderKL`,
`load_vae`.

Used by DiT/SiT to move between pixels and latents (factor 8 per side for the 4-level SD-VAE):

    latents = encode(params, images) = (posterior sample or mean - shift) * scaling_factor
    images  = decode(params, latents) = decoder(latents / scaling_factor + shift)

with ``scaling_factor = VAE_SCALE = 0.18215`` (nag_jax.models.vae.config) and no shift for
stabilityai/sd-vae-ft-ema and -mse (the checkpoints the DiT/SiT releases use). Images are NHWC
float in [-1, 1]; latents are NHWC (N, H/8, W/8, 4). No time convention is involved here.

The package's pieces: `config` (VAEConfig, the latent scale), `layers` (the linen modules),
`weights` (the diffusers key table, the readers of diffusers and converted folders) and this
module. Params are float32; the compute dtype is a constructor option (``jnp.bfloat16`` on
accelerators). Encode/decode run in chunks of ``chunk_size`` images (one ``lax.map``) so that a
large batch does not hold every activation of the 256px decoder at once.

Typical use::

    vae, params = load_vae("/path/to/sd-vae-ft-ema")    # diffusers folder or converted folder
    z = vae.encode(params, images, key=key)             # (N, 32, 32, 4) for 256px images
    x = vae.decode(params, z)                            # (N, 256, 256, 3) in [-1, 1] (unclipped)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.models.vae.config import Dtype, _as_config
from nag_jax.models.vae.layers import AutoencoderKLModule, init_params, param_shapes
from nag_jax.models.vae.weights import (
    find_vae_dir,
    is_orbax_vae_dir,
    load_converted,
    load_diffusers,
)

__all__ = ["AutoencoderKL", "load_vae"]


def _chunked(fn, xs, chunk: int):
    """fn over the leading axis of the pytree ``xs`` in chunks of ``chunk`` rows (one lax.map).

    The batch is zero-padded to a multiple of ``chunk``; rows never interact, so padding rows
    are simply dropped. ``chunk <= 0`` or a batch <= chunk runs ``fn`` once on everything.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(xs)
    steps = -(-n // chunk)
    pad = steps * chunk - n

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(steps, chunk, *a.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(split, xs))
    return jax.tree.map(lambda a: a.reshape(steps * chunk, *a.shape[2:])[:n], out)


class AutoencoderKL:
    """Pure-function SD-VAE: ``encode(params, images)`` / ``decode(params, latents)``.

    Args:
      config: ``VAEConfig``, a diffusers config.json dict, or None (SD-VAE defaults).
      dtype: compute dtype (params stay float32); outputs are always float32.
      chunk_size: images per lax.map step in encode/decode (bounds activation memory);
        0 = whole batch at once.

    The jitted ``encode``/``decode`` may also be called inside other jitted functions.
    """

    def __init__(self, config=None, *, dtype: Dtype = jnp.float32, chunk_size: int = 8):
        self.config = _as_config(config)
        self.dtype = jnp.dtype(dtype)
        self.chunk_size = int(chunk_size)
        self.module = AutoencoderKLModule(self.config, self.dtype)
        self.encode = jax.jit(self._encode, static_argnames=("sample",))
        self.decode = jax.jit(self._decode)

    def __repr__(self):
        return (
            f"AutoencoderKL({self.config}, dtype={self.dtype.name}, chunk_size={self.chunk_size})"
        )

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.config.shift_factor or 0.0)

    def init(self, key, image_size: int = 32) -> dict:
        """Random float32 params (diffusers' layout); ``image_size`` only sets the traced shape."""
        return init_params(self.config, key, image_size)

    def param_shapes(self, image_size: int = 32) -> dict:
        """The param tree as ShapeDtypeStructs, without allocating anything."""
        return param_shapes(self.config, image_size)

    def moments(self, params, images):
        """(N, H, W, C) images in [-1, 1] -> (mean, logvar), each (N, H/f, W/f, L) float32,
        unscaled; logvar clipped to [-30, 20] as diffusers does."""
        self._check_images(images)

        def fn(x):
            return self.module.apply({"params": params}, x, method=AutoencoderKLModule.moments)

        m = _chunked(fn, images, self.chunk_size)
        mean, logvar = jnp.split(m, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def _encode(self, params, images, key=None, sample: bool = True):
        """Images (N, H, W, C) in [-1, 1] -> scaled latents (N, H/f, W/f, L) float32.

        Samples the posterior (mean + std * eps, eps ~ N(0, 1) from ``key``) when a key is given
        and ``sample`` is True; otherwise returns the posterior mean. Then
        ``latents = (z - shift_factor) * scaling_factor`` (shift 0 for the SD-VAE).
        """
        mean, logvar = self.moments(params, images)
        z = mean
        if key is not None and sample:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, jnp.float32)
        return (z - self.shift_factor) * self.scaling_factor

    def _decode(self, params, latents):
        """Scaled latents (N, h, w, L) -> images (N, h*f, w*f, C) float32, nominally in [-1, 1]
        (not clipped: use ``nag_jax.utils.to_uint8`` to quantise)."""
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"decode expects NHWC latents (N, h, w, {self.config.latent_channels}), got shape "
                f"{latents.shape}; transpose NCHW tensors with x.transpose(0, 2, 3, 1)"
            )
        z = latents.astype(jnp.float32) / self.scaling_factor + self.shift_factor

        def fn(x):
            return self.module.apply({"params": params}, x, method=AutoencoderKLModule.decode_raw)

        return _chunked(fn, z, self.chunk_size)

    def _check_images(self, images):
        f = self.config.downsample_factor
        if (
            images.ndim != 4
            or images.shape[-1] != self.config.in_channels
            or images.shape[1] % f
            or images.shape[2] % f
        ):
            raise ValueError(
                f"encode expects NHWC images (N, H, W, {self.config.in_channels}) with H and W "
                f"multiples of {f}, got shape {images.shape}"
            )


def load_vae(path: str, *, dtype: Dtype = jnp.float32, chunk_size: int = 8):
    """Loads a VAE -> (AutoencoderKL, float32 params).

    ``path``: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin, e.g.
    a local download of stabilityai/sd-vae-ft-ema), a pipeline folder with such a ``vae/``
    subfolder, or a folder converted by ``python -m nag_jax.convert vae``.
    The weights are checked strictly against the config (every key used, every shape matched).
    """
    path = find_vae_dir(path)
    load = load_converted if is_orbax_vae_dir(path) else load_diffusers
    config, params = load(path)
    return AutoencoderKL(config, dtype=dtype, chunk_size=chunk_size), params
