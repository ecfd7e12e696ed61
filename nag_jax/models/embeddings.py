"""Fixed embeddings of the DiT/SiT releases: timestep sinusoids and 2-D sin-cos positions.

Time convention: this module is convention-agnostic. It embeds whatever scalar the model family
feeds it: SiT passes float t in [0, 1] (0 = noise, 1 = data); DiT passes the integer diffusion step
0..999 as a float (0 = least noise).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

FREQUENCY_EMBEDDING_SIZE = 256


def timestep_embedding(t, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0):
    """Sinusoidal embedding of scalar times, cos first, as in the releases.

    Args:
      t: (N,) times (any float or int dtype; computed in float32).
      dim: embedding size (even in practice; an odd dim gets one zero column like the releases).
      max_period: controls the minimum frequency.

    Returns:
      (N, dim) float32 with ``[cos(t * f_k), sin(t * f_k)]``, ``f_k = max_period^(-k / half)``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) float64 [sin, cos], omega_k = 10000^(-k / (embed_dim/2))."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """The releases' fixed position embedding for a ``grid_size x grid_size`` token grid.

    Computed in float64 and returned as float32, shape (grid_size**2, embed_dim), tokens in
    row-major order. The first embed_dim/2 channels encode the column (x) index, the second half the
    row (y) index.
    """
    if embed_dim % 4:
        raise ValueError(f"hidden size must be divisible by 4 for 2-D sin-cos, got {embed_dim}")
    grid_h = np.arange(grid_size, dtype=np.float64)
    grid_w = np.arange(grid_size, dtype=np.float64)
    grid_x, grid_y = np.meshgrid(grid_w, grid_h)  # grid_x[i, j] = j (column), grid_y[i, j] = i
    emb_x = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_x)
    emb_y = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_y)
    return np.concatenate([emb_x, emb_y], axis=1).astype(np.float32)
