"""Class-conditional Gaussian mixtures with exact interpolant marginals, scores and velocities.

Time conventions
----------------
Everything here is written in terms of the interpolant coefficients, so the module does not pick a
time convention itself: a state is ``x = alpha * x1 + sigma * x0`` with ``x1`` data and ``x0 ~
N(0, I)`` noise. For the SiT linear path (``nag_jax.diffusion.transport``, t = 0 noise, t = 1
data) ``alpha = t, sigma = 1 - t``. The *noise level* of the paper / analysis is
``lambda = 1 - t`` (1 = pure noise), so on the linear path ``sigma = lambda``; the posterior over
noise levels (``noise_posterior``) is indexed by lambda on a grid of bin midpoints.

The mixture
-----------
Class ``y`` has ``M`` components with diagonal covariances:
``p(x1 | y) = sum_m w_{y,m} N(mu_{y,m}, diag(v_{y,m}))``. Under the interpolant each component
stays Gaussian: ``p(x | y, alpha, sigma) = sum_m w_{y,m} N(alpha mu_{y,m},
diag(alpha^2 v_{y,m} + sigma^2))``, which gives the density, score, posterior means of data and
noise (hence the exact velocity for any path) in closed form. Diagonal covariances keep every
quantity O(N * M * d), so d = 64 is as cheap as d = 2.

Shapes: x (N, d); y (N,) int32 in [0, C) or None (= marginal over classes, uniform prior);
alpha / sigma scalars or (N,) arrays.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

_LOG_2PI = math.log(2.0 * math.pi)


@struct.dataclass
class GaussianMixture:
    """A class-conditional mixture of diagonal Gaussians (a pytree; passes through jit).

    Attributes:
      means: (C, M, d) component means mu_{y,m}.
      variances: (C, M, d) diagonal component variances v_{y,m} (> 0).
      log_weights: (C, M) log mixture weights per class (each row sums to 1 in probability).
    """

    means: jax.Array
    variances: jax.Array
    log_weights: jax.Array

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def num_components(self) -> int:
        return self.means.shape[1]

    @property
    def dim(self) -> int:
        return self.means.shape[2]


@functools.partial(
    jax.jit, static_argnames=("num_classes", "num_components", "dim", "radius", "std_range")
)
def make_gmm(
    key: jax.Array,
    *,
    num_classes: int = 3,
    num_components: int = 3,
    dim: int = 2,
    radius: float = 1.0,
    std_range: tuple[float, float] = (0.05, 0.2),
) -> GaussianMixture:
    """Draws a random mixture: means ~ N(0, radius^2 / d * I) * sqrt(d) scaled to norm ~ radius.

    Component standard deviations are drawn per coordinate uniformly in ``std_range`` (anisotropic
    and narrow, so the data manifold is sharply peaked and sampling errors are visible), weights
    from a Dirichlet(2) per class.
    """
    if num_classes < 1 or num_components < 1 or dim < 1:
        raise ValueError(
            f"make_gmm needs positive sizes, got num_classes={num_classes}, "
            f"num_components={num_components}, dim={dim}"
        )
    k_mu, k_std, k_w = jax.random.split(key, 3)
    means = jax.random.normal(k_mu, (num_classes, num_components, dim)) * radius / math.sqrt(dim)
    lo, hi = std_range
    stds = jax.random.uniform(k_std, (num_classes, num_components, dim), minval=lo, maxval=hi)
    w = jax.random.dirichlet(k_w, 2.0 * jnp.ones(num_components), (num_classes,))
    return GaussianMixture(means=means, variances=stds**2, log_weights=jnp.log(w))


@jax.jit
def sample_data(gmm: GaussianMixture, key: jax.Array, y: jax.Array) -> jax.Array:
    """Exact data samples x1 ~ p(x1 | y). y: (N,) int32 -> (N, d) float32."""
    k_comp, k_eps = jax.random.split(key)
    comp = jax.random.categorical(k_comp, gmm.log_weights[y])  # (N,)
    mu = gmm.means[y, comp]
    std = jnp.sqrt(gmm.variances[y, comp])
    return mu + std * jax.random.normal(k_eps, mu.shape)


def sample_labels(gmm: GaussianMixture, key: jax.Array, n: int) -> jax.Array:
    """Uniform labels (n,) int32 in [0, C)."""
    return jax.random.randint(key, (n,), 0, gmm.num_classes)


def _as_col(a, n):
    """Scalar or (N,) -> (N, 1, 1) for broadcasting against (N, M, d)."""
    a = jnp.asarray(a, jnp.float32)
    return jnp.broadcast_to(a, (n,))[:, None, None]


def _components(gmm, x, y, alpha, sigma):
    """Per-example component parameters of p(x | y, alpha, sigma).

    Returns (log_w (N, K), mean_t (N, K, d), var_t (N, K, d), mu (N, K, d), v (N, K, d)); with
    y None the K = C * M components of all classes are stacked with weights w / C.
    """
    n = x.shape[0]
    if y is None:
        c, m, d = gmm.means.shape
        mu = jnp.broadcast_to(gmm.means.reshape(c * m, d), (n, c * m, d))
        v = jnp.broadcast_to(gmm.variances.reshape(c * m, d), (n, c * m, d))
        log_w = jnp.broadcast_to(gmm.log_weights.reshape(c * m) - math.log(c), (n, c * m))
    else:
        mu, v, log_w = gmm.means[y], gmm.variances[y], gmm.log_weights[y]
    a, s = _as_col(alpha, n), _as_col(sigma, n)
    return log_w, a * mu, a**2 * v + s**2, mu, v


def _component_logpdf(x, mean_t, var_t):
    diff = x[:, None, :] - mean_t
    return -0.5 * jnp.sum(diff**2 / var_t + jnp.log(var_t) + _LOG_2PI, axis=-1)  # (N, K)


@jax.jit
def log_prob(gmm: GaussianMixture, x, y, alpha=1.0, sigma=0.0) -> jax.Array:
    """log p(x | y) of the interpolant marginal at (alpha, sigma); defaults give the data density.

    x: (N, d); y: (N,) or None; returns (N,).
    """
    log_w, mean_t, var_t, _, _ = _components(gmm, x, y, alpha, sigma)
    return jax.nn.logsumexp(log_w + _component_logpdf(x, mean_t, var_t), axis=-1)


@jax.jit
def score(gmm: GaussianMixture, x, y, alpha, sigma) -> jax.Array:
    """Exact score grad_x log p(x | y, alpha, sigma), closed form. Returns (N, d)."""
    log_w, mean_t, var_t, _, _ = _components(gmm, x, y, alpha, sigma)
    r = jax.nn.softmax(log_w + _component_logpdf(x, mean_t, var_t), axis=-1)  # (N, K)
    return jnp.sum(r[..., None] * (mean_t - x[:, None, :]) / var_t, axis=1)


@jax.jit
def posterior_means(gmm: GaussianMixture, x, y, alpha, sigma):
    """Exact E[x1 | x] and E[x0 | x] (data and noise) under ``x = alpha x1 + sigma x0``.

    Per component (Gaussian conditioning): with r = x - alpha mu and V = alpha^2 v + sigma^2,
    E[x1 | x, k] = mu + alpha v r / V and E[x0 | x, k] = sigma r / V. Both are finite at the
    ends (alpha = 0 or sigma = 0) as long as v > 0. Returns two (N, d) arrays.
    """
    log_w, mean_t, var_t, mu, v = _components(gmm, x, y, alpha, sigma)
    r = jax.nn.softmax(log_w + _component_logpdf(x, mean_t, var_t), axis=-1)[..., None]
    n = x.shape[0]
    a, s = _as_col(alpha, n), _as_col(sigma, n)
    resid = (x[:, None, :] - mean_t) / var_t
    e1 = jnp.sum(r * (mu + a * v * resid), axis=1)
    e0 = jnp.sum(r * (s * resid), axis=1)
    return e1, e0


@jax.jit
def velocity(gmm: GaussianMixture, x, y, alpha, sigma, d_alpha, d_sigma) -> jax.Array:
    """Exact velocity E[d_alpha x1 + d_sigma x0 | x] of the interpolant (any path). (N, d).

    For the SiT linear path pass alpha = t, sigma = 1 - t, d_alpha = 1, d_sigma = -1.
    """
    e1, e0 = posterior_means(gmm, x, y, alpha, sigma)
    n = x.shape[0]
    return _as_col(d_alpha, n)[:, 0] * e1 + _as_col(d_sigma, n)[:, 0] * e0


def level_grid(num_levels: int) -> jax.Array:
    """Bin midpoints of a uniform grid over noise levels: lambda_j = (j + 1/2) / L, (L,)."""
    if num_levels < 2:
        raise ValueError(f"num_levels={num_levels}; need at least 2 grid points (try 200)")
    return (jnp.arange(num_levels, dtype=jnp.float32) + 0.5) / num_levels


@jax.jit
def noise_log_posterior(gmm: GaussianMixture, x, y, alphas, sigmas) -> jax.Array:
    """Exact log p(lambda_j | x, y) over a grid of noise levels with a uniform prior.

    alphas, sigmas: (L,) interpolant coefficients of the grid levels (for the linear path,
    alpha = 1 - lambda and sigma = lambda). Returns (N, L), normalised over the grid
    (a discrete posterior; the density is this times L for a uniform grid).
    """
    lp = jax.vmap(lambda a, s: log_prob(gmm, x, y, a, s), out_axes=1)(alphas, sigmas)
    return jax.nn.log_softmax(lp, axis=-1)
