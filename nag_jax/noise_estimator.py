"""The noise-level estimator g(lambda | x) as a sampler component: its network, its weights on
disk, and classifier-based NAG for image models (``config.sample.nag_mode = "classifier"``).

Training and validation of the estimator live in nag_jax.analysis.estimator (the lab, the demo
study and the noise_shift mode train it there); this module is what sampling needs at run time,
so nag_jax.builders can use it without importing the analysis package.

Time conventions
----------------
The estimator is indexed by the paper's noise level lambda in [0, 1] (1 = pure noise) on B bins
with centres ``(j + 1/2) / B``. SiT: lambda = 1 - t (t = 1 data). DiT: lambda = (step + 1) / 1000
of the ORIGINAL step the network sees.

Classifier-based NAG
--------------------
Bayes: s(x | t) = s(x) + grad_x log p(t | x). Classifier-based NAG adds ``w grad_x log g(lambda |
x)`` (lambda the nominal level) to the model's score, mapped to what the network predicts
(each is affine in the score):

- SiT velocity: ``v = a(t) x + var(t) s`` so ``dv = var(t) ds`` (linear path: ``(1 - t) / t =
  lambda / (1 - lambda)``, infinite at pure noise: keep the interval's upper end below 1; the lab
  found (0, 0.6) safe with Euler).
- SiT score: ``ds``; SiT noise (``E[x0 | x_t]`` = ``-sigma s``): ``-sigma(t) ds``.
- DiT epsilon (``eps = -sqrt(1 - abar) s``): ``d eps = -sqrt(1 - abar_step) ds`` on the first C
  channels (the variance channels are left alone).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.diffusion.gaussian import GaussianDiffusion

ESTIMATOR_KIND = "noise_level_estimator"


class NoiseLevelEstimator(nn.Module):
    """g(lambda | x): a classifier over ``num_bins`` noise-level bins (class-agnostic).

    ``apply({'params': p}, x) -> (N, num_bins)`` logits; bin j covers lambda in
    [j / B, (j + 1) / B). Classification rather than regression: the posterior over noise levels
    is a distribution (skewed and wide near both ends), a softmax trained with cross-entropy is a
    proper scoring rule whose optimum is the exact binned posterior -- directly comparable (KL /
    Wasserstein) with the closed form on the same grid -- and log g(lambda | x) is exactly what
    classifier-based NAG differentiates. A regressor gives only a point estimate and no
    log-probability.

    x: (N, ...) any rank with batch first (flattened); images (N, H, W, C) -- pixels or latents --
    may pass ``conv=True`` for a small convolutional front end: ``conv_layers`` stride-2 3x3
    convolutions (32, 64, 128, ... features), then the residual MLP.
    """

    num_bins: int = 50
    hidden: int = 256
    depth: int = 3
    conv: bool = False
    conv_layers: int = 2

    @nn.compact
    def __call__(self, x):
        n = x.shape[0]
        h = jnp.asarray(x, jnp.float32)
        if self.conv and h.ndim == 4:
            for i in range(self.conv_layers):
                feats = 32 * 2**i
                h = nn.silu(nn.Conv(feats, (3, 3), strides=(2, 2), name=f"conv_{i}")(h))
        h = h.reshape(n, -1)
        h = nn.Dense(self.hidden, name="embed")(h)
        for i in range(self.depth):
            z = nn.LayerNorm(name=f"ln_{i}")(h)
            z = nn.Dense(self.hidden, name=f"fc1_{i}")(nn.silu(z))
            h = h + nn.Dense(self.hidden, name=f"fc2_{i}")(nn.silu(z))
        return nn.Dense(self.num_bins, name="head")(nn.silu(h))


def bin_index(levels, num_bins: int) -> jax.Array:
    """Noise levels in [0, 1] -> bin indices in [0, num_bins) (level 1 goes to the last bin)."""
    return jnp.clip(jnp.floor(levels * num_bins).astype(jnp.int32), 0, num_bins - 1)


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

    def metadata(self) -> dict:
        m = self.module
        return dict(
            kind=ESTIMATOR_KIND,
            num_bins=int(m.num_bins),
            hidden=int(m.hidden),
            depth=int(m.depth),
            conv=bool(m.conv),
            conv_layers=int(m.conv_layers),
        )


def save_estimator(path: str, estimator: Estimator, *, extra: dict | None = None, force=False):
    """Writes the estimator's params and architecture (nag_jax.weights.save_params layout)."""
    from nag_jax import weights

    meta = dict(estimator.metadata(), **(extra or {}))
    weights.save_params(path, jax.device_get(estimator.params), meta, force=force)


@functools.lru_cache(maxsize=4)
def load_estimator(path: str) -> Estimator:
    """The estimator written by `save_estimator` (e.g. ``<noise_shift workdir>/estimator``)."""
    from nag_jax import weights

    params, meta = weights.load_params(path)
    if meta.get("kind") != ESTIMATOR_KIND:
        raise ValueError(
            f"sample.estimator={path} holds no noise-level estimator (metadata kind="
            f"{meta.get('kind')!r}); train one with mode=noise_shift (it writes "
            "<workdir>/estimator) and point sample.estimator at it."
        )
    module = NoiseLevelEstimator(
        num_bins=int(meta["num_bins"]),
        hidden=int(meta["hidden"]),
        depth=int(meta["depth"]),
        conv=bool(meta["conv"]),
        conv_layers=int(meta.get("conv_layers", 2)),
    )
    return Estimator(module, jax.tree.map(jnp.asarray, params))


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
