"""Noise-shift measurement: the posterior over noise levels of intermediate sampling states.

Time conventions
----------------
Everything here is in the paper's *noise level* lambda in [0, 1], 1 = pure noise (SiT:
lambda = 1 - t; DiT: lambda = (step + 1) / 1000 of the original step). ``process`` arguments are
either family's (a SiT ``Transport`` or a DiT ``GaussianDiffusion``).
A posterior is a (N, L) array of log-probabilities over a fixed grid of levels
(``nag_jax.analysis.gmm.level_grid`` midpoints for the exact GMM posterior, the estimator's bin
centres for the learned one).

The statistic
-------------
For a state x the instrument gives p(lambda | x); its mean E[lambda | x] is the "apparent" noise
level. The posterior is biased on its own (shrunk towards the middle of [0, 1] near the ends, where
the prior is truncated), so the shift at nominal level lambda is *calibrated*:

    delta(lambda) = mean_i E[lambda | x_hat_i] - mean_i E[lambda | x_i]

where x_hat_i are the sampler's states at nominal level lambda and x_i exact forward samples
``x = alpha x1 + sigma x0`` at the same level (same labels, fresh data and noise). With an exact
instrument, an exact model and a fine grid delta is ~0; delta > 0 means the states look noisier
than their nominal level (the paper's noise shift).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class ShiftResult:
    """Per-step noise-shift statistics of one trajectory batch (all numpy-able arrays).

    Attributes:
      levels: (S,) nominal noise levels of the measured steps.
      mean_traj: (S,) average posterior mean E[lambda | x_hat] over the sampler's states.
      mean_fwd: (S,) the same on exact forward samples at the same levels.
      delta: (S,) calibrated shift mean_traj - mean_fwd.
      density_traj: (S, L) average posterior p(lambda_j | x_hat) over samples.
      density_fwd: (S, L) average posterior on the forward samples.
      grid: (L,) the grid of the posteriors.
      pmean_traj: (S, N) posterior mean E[lambda | x_hat] of every state (for KDE figures).
      pmean_fwd: (S, N) the same on the forward samples.
    """

    levels: jax.Array
    mean_traj: jax.Array
    mean_fwd: jax.Array
    delta: jax.Array
    density_traj: jax.Array
    density_fwd: jax.Array
    grid: jax.Array
    pmean_traj: jax.Array | None = None
    pmean_fwd: jax.Array | None = None


def posterior_mean(log_post: jax.Array, grid: jax.Array) -> jax.Array:
    """E[lambda | x] from a (N, L) log posterior over ``grid`` (L,). Returns (N,)."""
    return jnp.sum(jnp.exp(log_post) * grid, axis=-1)


def _is_ddpm(process) -> bool:
    from nag_jax.diffusion.gaussian import GaussianDiffusion

    return isinstance(process, GaussianDiffusion)


def sample_levels(process, key, n: int) -> jax.Array:
    """(n,) training noise levels: SiT uniform on [0, 1]; DiT ``(step + 1) / T`` with ``step``
    uniform over the ORIGINAL T steps (the levels the network was trained on)."""
    if _is_ddpm(process):
        t = int(process.original_num_steps)
        return (jax.random.randint(key, (n,), 0, t) + 1).astype(jnp.float32) / t
    return jax.random.uniform(key, (n,))


def forward_at_level(process, x0, x1, levels) -> jax.Array:
    """Exact forward samples ``(N, ...)`` of data ``x1`` with noise ``x0`` at noise levels
    ``levels`` (scalar or (N,), 1 = noise): SiT ``transport.interpolate`` at ``t = 1 - lambda``;
    DiT ``sqrt(abar) x1 + sqrt(1 - abar) x0`` at the original step ``round(lambda T) - 1`` (the
    un-respaced schedule ``base_alphas_cumprod``, so any respaced process works)."""
    lam = jnp.broadcast_to(jnp.asarray(levels, jnp.float32), (x1.shape[0],))
    if _is_ddpm(process):
        t = int(process.original_num_steps)
        step = jnp.clip(jnp.round(lam * t).astype(jnp.int32) - 1, 0, t - 1)
        abar = jnp.asarray(process.base_alphas_cumprod, jnp.float32)[step]
        abar = abar.reshape((-1,) + (1,) * (x1.ndim - 1))
        return jnp.sqrt(abar) * x1 + jnp.sqrt(1.0 - abar) * x0
    return process.interpolate(x0, x1, 1.0 - lam)[0]


def forward_states(transport, key, x1, levels) -> jax.Array:
    """Exact forward samples at nominal noise levels via the project's process.

    x1: (N, ...) data; levels: (S,) noise levels (1 = noise). Returns (S, N, ...) with
    `forward_at_level` (SiT: ``x = alpha x1 + sigma x0`` at ``t = 1 - lambda``), fresh noise per
    level. ``transport``: the process (SiT ``Transport`` or DiT ``GaussianDiffusion``).
    """
    keys = jax.random.split(key, levels.shape[0])

    def one(k, lam):
        x0 = jax.random.normal(k, x1.shape, x1.dtype)
        return forward_at_level(transport, x0, x1, lam)

    return jax.vmap(one)(keys, jnp.asarray(levels, jnp.float32))


def measure_shift(
    log_posterior_fn: Callable[[jax.Array], jax.Array],
    traj_x: jax.Array,
    fwd_x: jax.Array,
    levels: jax.Array,
    grid: jax.Array,
) -> ShiftResult:
    """Calibrated noise shift along a trajectory.

    Args:
      log_posterior_fn: x (N, ...) -> (N, L) log p(lambda_j | x) (closes over labels and the
        instrument: exact GMM posterior or a learned estimator).
      traj_x: (S, N, ...) sampler states (e.g. ``trajectory['x']``).
      fwd_x: (S, N, ...) exact forward samples at the same nominal levels (``forward_states``).
      levels: (S,) nominal noise levels of the states (``transport.noise_level(trajectory['t'])``).
      grid: (L,) levels of the posterior's support.

    Returns:
      ShiftResult with per-step means, calibrated delta and average posterior densities.
    """
    lp_traj = jax.lax.map(log_posterior_fn, traj_x)  # (S, N, L)
    lp_fwd = jax.lax.map(log_posterior_fn, fwd_x)
    pm_traj = jax.vmap(posterior_mean, in_axes=(0, None))(lp_traj, grid)  # (S, N)
    pm_fwd = jax.vmap(posterior_mean, in_axes=(0, None))(lp_fwd, grid)
    m_traj, m_fwd = pm_traj.mean(axis=1), pm_fwd.mean(axis=1)
    return ShiftResult(
        levels=jnp.asarray(levels, jnp.float32),
        mean_traj=m_traj,
        mean_fwd=m_fwd,
        delta=m_traj - m_fwd,
        density_traj=jnp.exp(lp_traj).mean(axis=1),
        density_fwd=jnp.exp(lp_fwd).mean(axis=1),
        grid=grid,
        pmean_traj=pm_traj,
        pmean_fwd=pm_fwd,
    )


def summarize_shift(result: ShiftResult, late: float = 0.25) -> dict:
    """Scalar summaries: mean delta over steps with level <= ``late`` ("late") and over all steps.

    The final state (level 0, the sample itself) is included; steps are weighted equally, which is
    the time average for the uniform grids of the project's samplers.
    """
    levels = np.asarray(result.levels)
    delta = np.asarray(result.delta)
    late_mask = levels <= late + 1e-6
    return {
        "late": float(delta[late_mask].mean()) if late_mask.any() else float("nan"),
        "all": float(delta.mean()),
        "abs_all": float(np.abs(delta).mean()),
    }


def kde(values, grid) -> np.ndarray:
    """Gaussian KDE of 1-D ``values`` on ``grid`` (Silverman's bandwidth, at least 0.005);
    ``grid``: (G,) points, returns (G,) densities (the paper's Fig. 4 curves of E[lambda | x])."""
    v = np.asarray(values, np.float64).reshape(-1)
    grid = np.asarray(grid)
    bw = max(1.06 * v.std() * len(v) ** (-0.2), 5e-3)
    z = (grid[:, None] - v[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(axis=1) / (len(v) * bw * np.sqrt(2 * np.pi))
