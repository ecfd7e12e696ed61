"""Sample-based distances for the lab: sliced Wasserstein-2 and RBF-kernel MMD.

No time convention (they compare final samples). x, y: (N, ...) any rank, flattened per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def sliced_wasserstein(key, x, y, num_projections: int = 256) -> jax.Array:
    """Sliced 2-Wasserstein distance between two equal-size samples (N, ...) and (N, ...).

    Random unit directions theta_k; per direction the 1-D W2 between the projected samples is the
    RMS difference of sorted values. Returns sqrt(mean_k W2_k^2) (a scalar).
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(
            f"sliced_wasserstein needs equal-size samples, got {x.shape} and {y.shape}; "
            "subsample the larger one"
        )
    theta = jax.random.normal(key, (x.shape[1], num_projections))
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px = jnp.sort(x @ theta, axis=0)
    py = jnp.sort(y @ theta, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


@jax.jit
def mmd_rbf(x, y, bandwidth=None) -> jax.Array:
    """Unbiased MMD^2 with a Gaussian kernel; bandwidth defaults to the median pairwise distance.

    x: (N, ...), y: (M, ...). Returns a scalar (can be slightly negative by chance).
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    z = jnp.concatenate([x, y])
    d2 = jnp.sum((z[:, None] - z[None]) ** 2, -1)
    if bandwidth is None:
        bandwidth = jnp.sqrt(jnp.median(d2) / 2.0 + 1e-12)
    k = jnp.exp(-d2 / (2.0 * bandwidth**2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - jnp.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()
