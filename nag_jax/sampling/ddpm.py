"""DiT's samplers, DDPM (ancestral) and DDIM, as ``jax.lax.scan`` loops over the respaced process.

Time convention (DiT family): integer step, 0 = least noise; the loop runs over the RESPACED
indices ``i = T' - 1, ..., 0`` and the prediction function sees the ORIGINAL step
``diffusion.timestep_map[i]`` as a float scalar. Noise level ``lambda = (step + 1) / 1000``.

``pred_fn(x, t, y) -> prediction``: ``x`` (N, H, W, C), ``t`` a scalar float32 (the original
step), ``y`` passed through; it returns the full 2C output (eps, variance value v) when
``diffusion.learn_sigma`` else C (eps). The process (betas, respacing, posterior) is
`nag_jax.diffusion.gaussian.GaussianDiffusion`; keys, injected ``noise`` and trajectories follow
`nag_jax.sampling.scan` (trajectory times: original step index, ``-1.0`` after the final step).
Network calls per sample: ``T'`` (the respaced count). diffusers' DDPMScheduler / DDIMScheduler
are an independent oracle for both loops (tests/test_ddpm_diffusers_parity.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion.gaussian import GaussianDiffusion
from nag_jax.sampling.scan import PredFn, _normal, _split_steps, _trajectory

__all__ = ["sample_ddpm", "sample_ddim"]


def _ddpm_loop_inputs(diffusion: GaussianDiffusion, key, noise, x_init):
    """Respaced indices T'-1..0, original steps as float32 and the per-step noise or keys."""
    n = diffusion.num_timesteps
    idx = np.arange(n - 1, -1, -1, dtype=np.int32)
    t_orig = diffusion.timestep_map[idx].astype(np.float32)
    if noise is not None:
        noise = jnp.asarray(noise)
        expected = (n,) + tuple(x_init.shape)
        if tuple(noise.shape) != expected:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; expected {expected} = "
                "(diffusion.num_timesteps, *x_init.shape): one draw per step, in loop order "
                "(noise[0] is used at respaced index T'-1; the last one is drawn but unused, "
                "as in the release)."
            )
        zs = noise
    elif key is None:
        zs = None
    else:
        zs = _split_steps(key, n)
    ts_traj = np.append(t_orig, np.float32(-1.0))
    return jnp.asarray(idx), jnp.asarray(t_orig), zs, ts_traj


def sample_ddpm(
    pred_fn: PredFn,
    key: jax.Array | None,
    x_init: jax.Array,
    y,
    *,
    diffusion: GaussianDiffusion,
    clip_denoised: bool = False,
    noise: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """DiT's ancestral sampler (``p_sample_loop``) over the respaced process.

    For ``i = T'-1, ..., 0``: ``out = pred_fn(x, timestep_map[i], y)`` (ORIGINAL step as a float
    scalar), ``p = diffusion.p_mean_variance(out, x, i)`` and
    ``x = p.mean + [i != 0] exp(0.5 p.log_variance) z``; no clipping by default (DiT samples
    latents), no noise at the last step.

    Args:
      key: PRNG key for the step noise, or (N,) per-image keys (ignored when ``noise`` is given).
      x_init: (N, H, W, C) standard normal start.
      noise: optional (T', N, H, W, C) draws; ``noise[k]`` is used at the k-th step of the loop.
    Returns: x (N, H, W, C) or ``(x, traj)`` with ``T' + 1`` entries (traj t: original steps,
      then -1).
    """
    idx, t_orig, zs, ts_traj = _ddpm_loop_inputs(diffusion, key, noise, x_init)
    if zs is None:
        raise ValueError("sample_ddpm needs a PRNG key (or an explicit `noise` array).")
    dtype = x_init.dtype

    def step(x, inp):
        i, t, z_or_key = inp
        z = z_or_key.astype(dtype) if noise is not None else _normal(z_or_key, x.shape, dtype)
        p = diffusion.p_mean_variance(pred_fn(x, t, y), x, i, clip_denoised=clip_denoised)
        nonzero = (i != 0).astype(p["mean"].dtype)
        x_new = (p["mean"] + nonzero * jnp.exp(0.5 * p["log_variance"]) * z).astype(dtype)
        return x_new, (x_new if return_trajectory else None)

    x, xs = jax.lax.scan(step, x_init, (idx, t_orig, zs))
    if return_trajectory:
        return x, _trajectory(x_init, xs, ts_traj)
    return x


def sample_ddim(
    pred_fn: PredFn,
    x_init: jax.Array,
    y,
    *,
    diffusion: GaussianDiffusion,
    eta: float = 0.0,
    key: jax.Array | None = None,
    clip_denoised: bool = False,
    noise: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """DDIM (``ddim_sample_loop``) over the respaced process (e.g. ``create_diffusion("ddim50")``).

    For ``i = T'-1, ..., 0`` with ``a = abar_i``, ``a' = abar_{i-1}`` (respaced):
    ``x0 = p_mean_variance(...).pred_xstart``, ``eps = (x / sqrt(a) - x0) / sqrt(1/a - 1)``
    (re-derived as the release does), ``s = eta sqrt((1 - a')/(1 - a)) sqrt(1 - a/a')``,
    ``x = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + [i != 0] s z``. ``eta = 0`` is deterministic
    (no key needed); ``eta > 0`` needs ``key`` or ``noise`` (T', N, H, W, C).
    """
    eta = float(eta)
    idx, t_orig, zs, ts_traj = _ddpm_loop_inputs(diffusion, key, noise, x_init)
    stochastic = eta != 0.0
    if stochastic and zs is None:
        raise ValueError(f"sample_ddim with eta={eta} needs a PRNG key or a `noise` array.")
    if zs is None:
        zs = jnp.zeros((diffusion.num_timesteps,), jnp.float32)  # placeholder, unused
    dtype = x_init.dtype

    def step(x, inp):
        i, t, z_or_key = inp
        p = diffusion.p_mean_variance(pred_fn(x, t, y), x, i, clip_denoised=clip_denoised)
        x0 = p["pred_xstart"]
        eps = diffusion.predict_eps_from_xstart(x, i, x0)
        a = diffusion.coef("alphas_cumprod", i, x)
        a_prev = diffusion.coef("alphas_cumprod_prev", i, x)
        x_new = x0 * jnp.sqrt(a_prev)
        if stochastic:
            sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a)) * jnp.sqrt(1.0 - a / a_prev)
            if noise is not None:
                z = z_or_key.astype(dtype)
            else:
                z = _normal(z_or_key, x.shape, dtype)
            nonzero = (i != 0).astype(x0.dtype)
            x_new = x_new + jnp.sqrt(1.0 - a_prev - sigma**2) * eps + nonzero * sigma * z
        else:
            x_new = x_new + jnp.sqrt(1.0 - a_prev) * eps
        x_new = x_new.astype(dtype)
        return x_new, (x_new if return_trajectory else None)

    x, xs = jax.lax.scan(step, x_init, (idx, t_orig, zs))
    if return_trajectory:
        return x, _trajectory(x_init, xs, ts_traj)
    return x
