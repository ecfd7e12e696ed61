"""Learned noise-level estimator g(lambda | x), its validation, and classifier-based NAG.

Time conventions
----------------
The estimator is indexed by the paper's noise level lambda in [0, 1] (1 = pure noise); on SiT
transports lambda = 1 - t = ``transport.noise_level(t)``. Its B bins have centres
``(j + 1/2) / B`` = ``nag_jax.analysis.gmm.level_grid(B)``, so its output is directly comparable
with the exact GMM posterior on the same grid.

Classifier-based NAG
--------------------
With the estimator's log-probability of the *nominal* level, the noise-conditioned score is
s(x | t) = s(x) + grad_x log p(t | x) (Bayes); classifier-based NAG adds ``w * grad_x log g(lambda
| x)`` to the model's score. The sampler consumes a velocity, so the score correction ds is mapped
through the transport's score -> velocity conversion, which is affine in the score:
``v = a(t) x + var(t) s`` (``Transport.velocity_from`` / ``Transport.drift_var``); hence
``dv = var(t) ds`` (linear path: var = (1 - t) / t = lambda / (1 - lambda)). It diverges at pure
noise: keep the interval's upper end well below 1. Default (0, 0.6): in the GMM lab, with the
interval up to 0.95 the large factor at high noise made the Euler step overshoot (a positive
shift bump at lambda ~ 0.8), while (0, 0.6) does not; the shift that matters accrues late.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_jax.analysis.networks import NoiseLevelEstimator, bin_index


def train_params(loss_fn, params, key, *, num_steps: int, lr: float, chunk: int = 100):
    """Adam on ``loss_fn(params, key) -> scalar``; ``chunk`` steps per jitted ``lax.scan``.

    Returns (params, losses (num_steps,) numpy). Linear warm-up over the first 5% of steps and a
    cosine decay to 10% of lr.
    """
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(1, num_steps // 20), num_steps, end_value=0.1 * lr
    )
    opt = optax.adam(sched)
    state = opt.init(params)

    @jax.jit
    def run_chunk(params, state, keys):
        def step(carry, k):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, k)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss

        (params, state), losses = jax.lax.scan(step, (params, state), keys)
        return params, state, losses

    losses = []
    done = 0
    while done < num_steps:
        n = min(chunk, num_steps - done)
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, chunk)
        if n < chunk:  # keep one compiled shape: pad with a shorter final scan only if needed
            keys = keys[:n]
        params, state, lv = run_chunk(params, state, keys)
        losses.append(np.asarray(lv))
        done += n
    return params, np.concatenate(losses)


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A trained noise-level estimator: ``log_posterior(x) -> (N, B)`` over ``grid`` (B,)."""

    module: NoiseLevelEstimator
    params: dict

    @property
    def grid(self) -> jax.Array:
        b = self.module.num_bins
        return (jnp.arange(b, dtype=jnp.float32) + 0.5) / b

    def log_posterior(self, x) -> jax.Array:
        """log g(lambda_j | x), (N, B), normalised over the bins."""
        return jax.nn.log_softmax(self.module.apply({"params": self.params}, x), axis=-1)

    def log_prob_level(self, x, level) -> jax.Array:
        """log g(level | x) as a density in lambda, linear in level between bin centres. (N,)."""
        b = self.module.num_bins
        lp = self.log_posterior(x) + jnp.log(b)  # density on [0, 1]
        pos = jnp.clip(jnp.asarray(level, jnp.float32) * b - 0.5, 0.0, b - 1.0)
        lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, b - 2)
        frac = pos - lo
        return (1 - frac) * lp[:, lo] + frac * lp[:, lo + 1]


def train_estimator(
    key,
    sample_x1: Callable[[jax.Array, int], jax.Array],
    transport,
    *,
    num_bins: int = 50,
    hidden: int = 256,
    depth: int = 3,
    conv: bool = False,
    num_steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
):
    """Trains g(lambda | x) by cross-entropy on exact forward samples.

    ``sample_x1(key, n) -> (n, ...)`` draws data; lambda ~ U[0, 1], x = transport.interpolate(
    noise, x1, t = 1 - lambda), target = the bin of lambda. Returns (Estimator, losses).
    """
    k_init, k_train = jax.random.split(key)
    module = NoiseLevelEstimator(num_bins=num_bins, hidden=hidden, depth=depth, conv=conv)
    x_ex = sample_x1(k_init, 2)
    params = module.init(k_init, x_ex)["params"]

    def loss_fn(p, k):
        k1, k2, k3 = jax.random.split(k, 3)
        x1 = sample_x1(k1, batch_size)
        lam = jax.random.uniform(k2, (batch_size,))
        x0 = jax.random.normal(k3, x1.shape, x1.dtype)
        xt = transport.interpolate(x0, x1, 1.0 - lam)[0]
        logits = module.apply({"params": p}, xt)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, bin_index(lam, num_bins)
        ).mean()

    params, losses = train_params(loss_fn, params, k_train, num_steps=num_steps, lr=lr)
    return Estimator(module, params), losses


def posterior_gap(log_p_exact, log_q) -> dict:
    """KL(p || q) and Wasserstein-1 between two (N, B) discrete posteriors on a uniform grid.

    W1 on [0, 1] with bin width 1/B is sum_j |CDF_p - CDF_q| / B. Returns means over N and the
    gap of the posterior means.
    """
    p, q = jnp.exp(log_p_exact), jnp.exp(log_q)
    b = p.shape[-1]
    kl = jnp.sum(p * (log_p_exact - log_q), axis=-1)
    w1 = jnp.sum(jnp.abs(jnp.cumsum(p, -1) - jnp.cumsum(q, -1)), axis=-1) / b
    grid = (jnp.arange(b) + 0.5) / b
    dmean = jnp.sum((p - q) * grid, axis=-1)
    return {
        "kl": float(kl.mean()),
        "w1": float(w1.mean()),
        "mean_gap_abs": float(jnp.abs(dmean).mean()),
    }


def bin_log_posterior(log_post_fine, num_bins: int) -> jax.Array:
    """Aggregates a (N, B * r) log posterior on a fine midpoint grid into B equal bins."""
    n, fine = log_post_fine.shape
    if fine % num_bins:
        raise ValueError(f"fine grid of {fine} levels is not a multiple of num_bins={num_bins}")
    return jax.nn.logsumexp(log_post_fine.reshape(n, num_bins, fine // num_bins), axis=-1)


def score_to_velocity_correction(transport, ds, x, t) -> jax.Array:
    """The velocity change that a score change ``ds`` makes, through the transport's conversion.

    ``Transport.velocity_from`` (score prediction) is ``a(t) x + var(t) score`` with
    ``var = transport.drift_var(t)``: affine in the score, so ``dv = var(t) ds`` (linear path:
    ``(1 - t) / t``). t: scalar SiT time (1 = data); infinite at t = 0 (pure noise).
    """
    del x
    return transport.drift_var(jnp.asarray(t, jnp.float32)) * ds


def classifier_nag_prediction(
    pred_fn: Callable,
    estimator: Estimator,
    scale: float,
    *,
    transport,
    interval: tuple[float, float] = (0.0, 0.6),
) -> Callable:
    """Classifier-based NAG: wraps a velocity ``pred_fn(x, t, y)`` (scalar SiT time t).

    Adds ``scale * grad_x log g(lambda_nominal | x)`` to the score, i.e. the velocity gains
    ``score_to_velocity_correction(transport, scale * grad, x, t)``, for nominal noise levels in
    ``interval`` (1 = noise). Composes with any guided pred_fn (CFG / classifier-free NAG).
    """
    if transport.prediction != "velocity":
        raise ValueError(
            f"classifier_nag_prediction wraps a velocity prediction, got transport.prediction="
            f"{transport.prediction!r}; use a velocity-prediction SiT transport"
        )
    lo, hi = interval

    def guided(x, t, y):
        v = pred_fn(x, t, y)
        level = transport.noise_level(jnp.asarray(t, jnp.float32))
        grad = jax.grad(lambda z: estimator.log_prob_level(z, level).sum())(x)
        dv = score_to_velocity_correction(transport, scale * grad, x, t)
        on = (level >= lo) & (level <= hi)
        return v + jnp.where(on, dv, 0.0).astype(v.dtype)

    return guided
