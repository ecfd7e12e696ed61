"""The noise-level estimator g(lambda | x) as a sampler component: its network, its weights on
disk (classifier-based NAG, ``config.sample.nag_mode = "classifier"``, uses it).

Training and validation of the estimator live in nag_jax.analysis.estimator (the lab, the demo
study and the noise_shift mode train it there); this module is what sampling needs at run time,
so nag_jax.sampling.build can use it without importing the analysis package.

Time conventions
----------------
The estimator is indexed by the paper's noise level lambda in [0, 1] (1 = pure noise) on B bins
with centres ``(j + 1/2) / B``. SiT: lambda = 1 - t (t = 1 data). DiT: lambda = (step + 1) / 1000
of the ORIGINAL step the network sees.

Classifier-based NAG (the estimator's gradient added to the score) is
nag_jax.guidance.classifier.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    """Writes the estimator's params and architecture (nag_jax.storage.weights.save_params
    layout)."""
    from nag_jax.storage import weights

    meta = dict(estimator.metadata(), **(extra or {}))
    weights.save_params(path, jax.device_get(estimator.params), meta, force=force)


@functools.lru_cache(maxsize=4)
def load_estimator(path: str) -> Estimator:
    """The estimator written by `save_estimator` (e.g. ``<noise_shift workdir>/estimator``)."""
    from nag_jax.storage import weights

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
