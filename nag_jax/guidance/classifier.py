"""Classifier-based NAG: the noise-level estimator's gradient added to a prediction.

Bayes: s(x | t) = s(x) + grad_x log p(t | x). Classifier-based NAG adds ``w grad_x log g(lambda |
x)`` (lambda the nominal level) to the model's score, mapped to what the network predicts
(each is affine in the score):

- SiT velocity: ``v = a(t) x + var(t) s`` so ``dv = var(t) ds`` (linear path: ``(1 - t) / t =
  lambda / (1 - lambda)``, infinite at pure noise: keep the interval's upper end below 1; the lab
  found (0, 0.6) safe with Euler).
- SiT score: ``ds``; SiT noise (``E[x0 | x_t]`` = ``-sigma s``): ``-sigma(t) ds``.
- DiT epsilon (``eps = -sqrt(1 - abar) s``): ``d eps = -sqrt(1 - abar_step) ds`` on the first C
  channels (the variance channels are left alone).

The estimator (network, weights) is nag_jax.models.noise_estimator. Time conventions: SiT float
t in [0, 1] (1 = data), DiT the original integer step; intervals in noise level (1 = noise).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nag_jax.diffusion.gaussian import GaussianDiffusion
from nag_jax.models.noise_estimator import Estimator


def score_to_velocity_correction(transport, ds, x, t) -> jax.Array:
    """The velocity change that a score change ``ds`` makes, through the transport's conversion.

    ``Transport.velocity_from`` (score prediction) is ``a(t) x + var(t) score`` with
    ``var = transport.drift_var(t)``: affine in the score, so ``dv = var(t) ds`` (linear path:
    ``(1 - t) / t``). t: scalar SiT time (1 = data); infinite at t = 0 (pure noise).
    """
    del x
    return transport.drift_var(jnp.asarray(t, jnp.float32)) * ds


def score_to_prediction_correction(process, ds, x, t) -> jax.Array:
    """The change of the network's prediction that a score change ``ds`` (N, H, W, C) makes.

    process: a SiT ``Transport`` (t scalar SiT time) or a DiT ``GaussianDiffusion`` (t the
    original step, scalar float). See the module docstring for the maps."""
    t = jnp.asarray(t, jnp.float32)
    if isinstance(process, GaussianDiffusion):
        abar = jnp.asarray(process.base_alphas_cumprod, jnp.float32)[
            jnp.clip(jnp.round(t).astype(jnp.int32), 0, process.original_num_steps - 1)
        ]
        return -jnp.sqrt(1.0 - abar) * ds
    if process.prediction == "velocity":
        return score_to_velocity_correction(process, ds, x, t)
    if process.prediction == "score":
        return ds
    return -process.alpha_sigma(t)[1] * ds


def classifier_nag_prediction(
    pred_fn: Callable,
    estimator: Estimator,
    scale,
    *,
    transport,
    interval: tuple[float, float] = (0.0, 0.6),
) -> Callable:
    """Classifier-based NAG: wraps a prediction ``pred_fn(x, t, y)`` (scalar t, family time).

    Adds ``scale * grad_x log g(lambda_nominal | x)`` to the score, i.e. the prediction gains
    ``score_to_prediction_correction(transport, scale * grad, x, t)`` on its first C channels,
    for nominal noise levels in ``interval`` (1 = noise). ``transport``: the sampling process
    (SiT ``Transport`` or DiT ``GaussianDiffusion``). ``scale`` may be traced. Composes with any
    guided pred_fn (CFG / classifier-free NAG); costs one estimator forward + backward per call.
    """
    lo, hi = interval

    def guided(x, t, y):
        out = pred_fn(x, t, y)
        level = transport.noise_level(jnp.asarray(t, jnp.float32))
        grad = jax.grad(lambda z: estimator.log_prob_level(z, level).sum())(x)
        d = score_to_prediction_correction(transport, scale * grad, x, t)
        on = (level >= lo) & (level <= hi)
        d = jnp.where(on, d, 0.0).astype(out.dtype)
        c = x.shape[-1]
        if out.shape[-1] == c:
            return out + d
        return jnp.concatenate([out[..., :c] + d, out[..., c:]], axis=-1)

    return guided
