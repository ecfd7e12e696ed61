"""The NAG training objective: the release's loss plus class and noise-condition dropout.

Time conventions: SiT (`Transport`) float t in [0, 1], t = 0 noise, t = 1 data, drawn uniformly
on ``transport.train_interval()``; DiT (`GaussianDiffusion`) integer step, 0 = least noise, drawn
uniformly over the (respaced) indices and fed to the network as the ORIGINAL step (float).

Per example, independently: with probability ``p_class_drop`` the label is replaced by the null
class (``drop_class``), and with probability ``p_noise_drop`` the noise condition is replaced by
the null noise token (``drop_noise``). One set of weights thereby learns s(x|t,y), s(x|t,null)
and s(x|null,y). The masks are passed to the network; the regression target is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nag_jax.diffusion.family import SIT, family_of_process
from nag_jax.diffusion.gaussian import GaussianDiffusion
from nag_jax.diffusion.transport import Transport

__all__ = ["nag_loss", "draw_dropout_masks", "per_example_losses"]

# apply_fn(params, x, t, y, drop_class, drop_noise) -> raw output (N, H, W, out_channels)
ApplyFn = Callable


def _check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p}; expected a probability in [0, 1] (e.g. 0.1).")
    return p


def draw_dropout_masks(key: jax.Array, n: int, p_class_drop: float, p_noise_drop: float):
    """Independent Bernoulli masks ``(drop_class, drop_noise)``, each (n,) bool."""
    p_c = _check_prob("p_class_drop", p_class_drop)
    p_n = _check_prob("p_noise_drop", p_noise_drop)
    k_c, k_n = jax.random.split(key)
    return jax.random.bernoulli(k_c, p_c, (n,)), jax.random.bernoulli(k_n, p_n, (n,))


def per_example_losses(
    apply_fn: ApplyFn,
    params,
    x1: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    process: Transport | GaussianDiffusion,
    drop_class: jax.Array | None,
    drop_noise: jax.Array | None,
) -> dict:
    """The release loss terms per example (each (N,)) for given dropout masks.

    SiT: ``{"loss", "mse"}`` (the transport's loss on ``out[..., :C]``); DiT: ``{"loss", "mse",
    "vb"}`` (full 2C output when learn_sigma). ``key`` draws t and the Gaussian noise. The family
    (nag_jax.diffusion.family) of ``process`` decides the time draw and the output channels.
    """
    n = x1.shape[0]
    k_t, k_noise = jax.random.split(key)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
    family = family_of_process(process)
    if family is SIT:
        t = process.sample_t(k_t, n)
        xt, _ = process.interpolate(x0, x1, t)
        out = apply_fn(params, xt, t, y, drop_class, drop_noise)
        pred = family.net_output(out, x1.shape[-1]).astype(jnp.float32)
        per = process.loss(pred, x0, x1, t)
        return {"loss": per, "mse": per}
    i = process.sample_t(k_t, n)
    xt = process.q_sample(x1, i, x0)
    out = apply_fn(params, xt, process.model_t(i), y, drop_class, drop_noise)
    return process.training_losses(
        family.net_output(out, x1.shape[-1]).astype(jnp.float32), x1, xt, i, x0
    )


def nag_loss(
    apply_fn: ApplyFn,
    params,
    x1: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    process: Transport | GaussianDiffusion,
    p_class_drop: float = 0.1,
    p_noise_drop: float = 0.1,
):
    """NAG training loss for one batch.

    Args:
      apply_fn: ``(params, x, t, y, drop_class, drop_noise) -> raw output`` (N, H, W, out_ch);
        t (N,) float32 in the family's convention, masks (N,) bool.
      params: model parameters (differentiated by the caller).
      x1: (N, H, W, C) data (pixels in [-1, 1] or latents). y: (N,) int32 labels.
      key: PRNG key; split into t, noise and the two dropout masks.
      process: `Transport` (SiT) or `GaussianDiffusion` (DiT, usually ``create_diffusion("")``).
      p_class_drop, p_noise_drop: per-example dropout probabilities, drawn independently.

    Returns:
      ``(loss, aux)``: the scalar batch mean of the per-example loss, and scalar means: ``mse``
      (+ ``vb`` for DiT), ``frac_drop_class``, ``frac_drop_noise`` and ``loss_noise_dropped`` /
      ``loss_noise_kept`` (means over examples with / without the noise condition; 0 if none).
    """
    k_loss, k_drop = jax.random.split(key)
    drop_class, drop_noise = draw_dropout_masks(k_drop, x1.shape[0], p_class_drop, p_noise_drop)
    terms = per_example_losses(
        apply_fn,
        params,
        x1,
        y,
        k_loss,
        process=process,
        drop_class=drop_class,
        drop_noise=drop_noise,
    )
    per = terms["loss"]
    aux = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
    m = drop_noise.astype(per.dtype)
    aux["loss_noise_dropped"] = jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1.0)
    aux["loss_noise_kept"] = jnp.sum(per * (1 - m)) / jnp.maximum(jnp.sum(1 - m), 1.0)
    aux["frac_drop_class"] = jnp.mean(drop_class.astype(jnp.float32))
    aux["frac_drop_noise"] = jnp.mean(drop_noise.astype(jnp.float32))
    return jnp.mean(per), aux
