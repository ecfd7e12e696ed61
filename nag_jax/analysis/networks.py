"""Small networks for the noise-shift lab: an MLP denoiser and a noise-level estimator.

Time conventions
----------------
``MLPDenoiser`` speaks the SiT convention, like the image models it stands in for: float t in
[0, 1], t = 0 noise, t = 1 data. ``NoiseLevelEstimator`` (defined in nag_jax.models.noise_estimator)
is indexed by noise level lambda (1 = pure noise, lambda = 1 - t on SiT paths) on a uniform grid
of ``num_bins`` bins.

Both accept any "image" with the batch first: (N, d) vectors or (N, H, W, C) images (flattened).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nag_jax.models.embeddings import timestep_embedding
from nag_jax.models.noise_estimator import NoiseLevelEstimator, bin_index

__all__ = ["MLPDenoiser", "NoiseLevelEstimator", "bin_index"]  # the estimator's home:
# nag_jax.models.noise_estimator (sampling uses it for classifier-based NAG)


class MLPDenoiser(nn.Module):
    """Residual MLP with the image models' conditioning interface.

    ``apply({'params': p}, x, t, y, drop_class=None, drop_noise=None) -> (N, d)`` raw output
    (the velocity for a SiT velocity-prediction transport). x: (N, d); t: (N,) float in the
    SiT convention; y: (N,) int32 in [0, num_classes); drop_class -> the null label row
    ``num_classes``; drop_noise -> the learned ``null_noise_token`` replaces the whole time
    embedding (output independent of t), exactly as in ``nag_jax.models``.

    Attributes:
      dim: data dimension d.
      num_classes: number of classes (the label table has one more, null row).
      hidden: width; depth: number of residual blocks.
      time_scale: t is multiplied by this before the sinusoidal embedding (SiT feeds raw t in
        [0, 1]; for a small MLP a larger scale resolves the time axis better).
      null_noise: "learned" (a trained vector) or "zero" (no new parameter).
    """

    dim: int
    num_classes: int
    hidden: int = 256
    depth: int = 3
    time_scale: float = 1000.0
    null_noise: str = "learned"

    @nn.compact
    def __call__(self, x, t, y, drop_class=None, drop_noise=None):
        n = x.shape[0]
        shape = x.shape
        h_in = x.reshape(n, -1).astype(jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
        temb = timestep_embedding(t * self.time_scale, 128)
        temb = nn.Dense(self.hidden, name="t_mlp_0")(temb)
        temb = nn.Dense(self.hidden, name="t_mlp_2")(nn.silu(temb))
        if self.null_noise == "learned":
            null = self.param("null_noise_token", nn.initializers.normal(0.02), (self.hidden,))
        elif self.null_noise == "zero":
            null = jnp.zeros((self.hidden,), jnp.float32)
        else:
            raise ValueError(f"null_noise={self.null_noise!r}; expected 'learned' or 'zero'")
        if drop_noise is not None:
            temb = jnp.where(jnp.asarray(drop_noise)[:, None], null[None], temb)
        y = jnp.asarray(y, jnp.int32)
        if drop_class is not None:
            y = jnp.where(jnp.asarray(drop_class), self.num_classes, y)
        yemb = nn.Embed(self.num_classes + 1, self.hidden, name="y_embedder")(y)
        c = nn.silu(temb + yemb)
        h = nn.Dense(self.hidden, name="x_embedder")(h_in)
        for i in range(self.depth):
            mod = nn.Dense(2 * self.hidden, name=f"blocks_{i}_mod")(c)
            scale, shift = jnp.split(mod, 2, axis=-1)
            z = nn.LayerNorm(use_scale=False, use_bias=False)(h) * (1 + scale) + shift
            z = nn.Dense(self.hidden, name=f"blocks_{i}_fc1")(nn.silu(z))
            h = h + nn.Dense(self.hidden, name=f"blocks_{i}_fc2")(nn.silu(z))
        out = nn.Dense(h_in.shape[-1], name="final")(nn.silu(h))
        return out.reshape(shape)
