"""Classifier-free guidance (CFG) and Noise Awareness Guidance (NAG) as ONE batched network call.

Per sampling step, with up to three branches of the same network,

    c   = f(x, t, y)            conditional
    u_y = f(x, t, null_y)       class-unconditional   (needed when cfg_scale != 1)
    u_t = f(x, null_t, y)       noise-unconditional   (needed when nag_scale != 0)

    pred = c + (s_cfg - 1) * (c - u_y) + w_nag * (c - u_t)

The active branches are stacked as rows of one batch, so the network runs once per step with batch
``num_active_branches * N``. Which branches exist is decided at trace time from the scales (a
branch whose scale is off is never computed). Each guidance axis may be restricted to an interval
of noise levels; outside it the term is zero and, when an interval is set, the step runs a smaller
batch without that branch (``lax.switch`` over the active subsets, so only the needed branches
execute).

Time conventions: ``pred_fn(x, t, y)`` takes the scalar model time of the family (SiT: float t in
[0, 1], 1 = data; DiT: the original step index 0..999). Intervals are in the paper's noise level
lambda in [0, 1] with 1 = pure noise; ``noise_level_fn`` maps model time to lambda
(SiT: 1 - t; DiT: (step + 1) / 1000).

Channels: the combination applies to the first ``guided_channels`` channels of the network output
(all by default; DiT passes C so that epsilon is guided while the variance channels come from the
conditional branch). ``cfg_channels=3`` reproduces the releases' legacy CFG on channels 0-2 only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

COND, CLASS_UNCOND, NOISE_UNCOND = "cond", "class_uncond", "noise_uncond"

NetFn = Callable[..., jax.Array]  # (x, t (B,), y, drop_class (B,), drop_noise (B,)) -> output


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Guidance scales and where they act.

    Attributes:
      cfg_scale: s_cfg; 1.0 switches CFG (and its branch) off.
      nag_scale: w_nag; 0.0 switches NAG (and its branch) off.
      cfg_interval: (lo, hi) noise levels (1 = noise) where the CFG term is applied.
      nag_interval: (lo, hi) noise levels where the NAG term is applied.
      cfg_channels: None = all guided channels; an int k guides only channels [0, k) with CFG (3 is
        the releases' legacy behaviour).
    """

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    nag_interval: tuple[float, float] = (0.0, 1.0)
    cfg_channels: int | None = None

    def __post_init__(self):
        for name in ("cfg_interval", "nag_interval"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must satisfy 0 <= lo <= hi <= 1 "
                    "(noise levels, 1 = pure noise)."
                )
            object.__setattr__(self, name, (float(lo), float(hi)))
        if self.cfg_channels is not None and self.cfg_channels < 1:
            raise ValueError(f"cfg_channels must be None or >= 1, got {self.cfg_channels}")

    @property
    def use_cfg(self) -> bool:
        return float(self.cfg_scale) != 1.0

    @property
    def use_nag(self) -> bool:
        return float(self.nag_scale) != 0.0

    @property
    def branches(self) -> tuple[str, ...]:
        """Branches computed at a step where every term is active, in batch order."""
        return (
            (COND,)
            + ((CLASS_UNCOND,) if self.use_cfg else ())
            + ((NOISE_UNCOND,) if self.use_nag else ())
        )


def branch_inputs(x, t, y, branches: tuple[str, ...]):
    """Stacks the branches as rows of one batch.

    Args:
      x: (N, ...) states; t: scalar or (N,) model time; y: (N,) labels.
      branches: subset of (COND, CLASS_UNCOND, NOISE_UNCOND), in order.

    Returns:
      (x_b, t_b, y_b, drop_class, drop_noise) each with leading dim len(branches) * N.
    """
    n = x.shape[0]
    k = len(branches)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
    drop_class = jnp.concatenate([jnp.full((n,), b == CLASS_UNCOND) for b in branches])
    drop_noise = jnp.concatenate([jnp.full((n,), b == NOISE_UNCOND) for b in branches])
    tile = lambda a: jnp.concatenate([a] * k, axis=0) if k > 1 else a
    return tile(x), tile(t), tile(y), drop_class, drop_noise


def combine(
    outputs: dict,
    guidance: GuidanceConfig,
    *,
    cfg_on=True,
    nag_on=True,
    guided_channels=None,
    scales=None,
):
    """The guidance algebra on branch outputs (each (N, ..., C_out)).

    ``cfg_on`` / ``nag_on`` (bools, possibly traced) switch the terms; a branch missing from
    ``outputs`` contributes nothing. Channels >= guided_channels come from the conditional branch.
    ``scales``: optional (s_cfg, w_nag), possibly traced, replacing the config's values (the
    branch set still comes from the config).
    """
    s_cfg, w_nag = (guidance.cfg_scale, guidance.nag_scale) if scales is None else scales
    c = outputs[COND]
    gc = c.shape[-1] if guided_channels is None else guided_channels
    guided = c[..., :gc]
    if CLASS_UNCOND in outputs:
        delta = (s_cfg - 1.0) * (c - outputs[CLASS_UNCOND])[..., :gc]
        if guidance.cfg_channels is not None and guidance.cfg_channels < gc:
            keep = jnp.arange(gc) < guidance.cfg_channels
            delta = jnp.where(keep, delta, 0.0)
        guided = guided + jnp.where(cfg_on, delta, 0.0)
    if NOISE_UNCOND in outputs:
        delta = w_nag * (c - outputs[NOISE_UNCOND])[..., :gc]
        guided = guided + jnp.where(nag_on, delta, 0.0)
    if gc == c.shape[-1]:
        return guided
    return jnp.concatenate([guided, c[..., gc:]], axis=-1)


def _call_branches(net_fn: NetFn, x, t, y, branches):
    n = x.shape[0]
    out = net_fn(*branch_inputs(x, t, y, branches))
    return {b: out[i * n : (i + 1) * n] for i, b in enumerate(branches)}


def _in_interval(level, interval):
    lo, hi = interval
    return (level >= lo) & (level <= hi)


def guided_prediction(
    net_fn: NetFn,
    guidance: GuidanceConfig,
    *,
    noise_level_fn: Callable,
    guided_channels: int | None = None,
    scales=None,
) -> Callable:
    """Wraps a raw network call into a guided prediction ``pred_fn(x, t, y)``.

    Args:
      net_fn: ``(x (B,...), t (B,), y (B,), drop_class (B,), drop_noise (B,)) -> (B, ..., C_out)``.
      guidance: the scales, intervals and channels.
      noise_level_fn: scalar model time -> noise level in [0, 1] (1 = noise).
      guided_channels: number of leading output channels that are guided (None = all).
      scales: optional traced (s_cfg, w_nag) overriding the config's values, so one compiled
        sampler serves a sweep or a slider; which branches run is still fixed by ``guidance``.

    Returns:
      ``pred_fn(x, t, y)`` with scalar t in the family's convention, returning (N, ..., C_out).
      It calls ``net_fn`` exactly once per invocation, on ``active_branches * N`` rows.
    """
    full = guidance.branches
    full_cfg = guidance.cfg_interval == (0.0, 1.0)
    full_nag = guidance.nag_interval == (0.0, 1.0)

    def run(x, t, y, cfg_active: bool, nag_active: bool):
        branches = tuple(
            b
            for b in full
            if b == COND or (b == CLASS_UNCOND and cfg_active) or (b == NOISE_UNCOND and nag_active)
        )
        outs = _call_branches(net_fn, x, t, y, branches)
        return combine(outs, guidance, guided_channels=guided_channels, scales=scales)

    def pred_fn(x, t, y):
        t = jnp.asarray(t)
        if t.ndim:
            raise ValueError(f"pred_fn expects a scalar time, got shape {t.shape}")
        dynamic_cfg = guidance.use_cfg and not full_cfg
        dynamic_nag = guidance.use_nag and not full_nag
        if not (dynamic_cfg or dynamic_nag):
            return run(x, t, y, guidance.use_cfg, guidance.use_nag)
        level = noise_level_fn(t)
        # Enumerate the subsets of the interval-restricted terms; lax.switch executes only one.
        cfg_opts = (False, True) if dynamic_cfg else (guidance.use_cfg,)
        nag_opts = (False, True) if dynamic_nag else (guidance.use_nag,)
        cases = [(c, n) for c in cfg_opts for n in nag_opts]
        index = 0
        if dynamic_cfg:
            index = index + _in_interval(level, guidance.cfg_interval).astype(jnp.int32) * len(
                nag_opts
            )
        if dynamic_nag:
            index = index + _in_interval(level, guidance.nag_interval).astype(jnp.int32)
        fns = [lambda x, t, y, c=c, n=n: run(x, t, y, c, n) for c, n in cases]
        return jax.lax.switch(index, fns, x, t, y)

    return pred_fn
