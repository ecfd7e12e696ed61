"""Classifier-free guidance (CFG) and Noise Awareness Guidance (NAG) as ONE batched network call.

Per sampling step, with up to three branches of the same network,

    c   = f(x, t, y)            conditional
    u_y = f(x, t, null_y)       class-unconditional   (needed when cfg_scale != 1)
    u_t = f(x, null_t, y)       noise-unconditional   (needed when nag_scale != 0)

    pred = c + (s_cfg - 1) * (c - u_y) + w_nag * (c - u_t)

The domain branch of two-model guidance (Domain Guidance, ``DOMAIN``, a second set of weights)
is one more term of the same sum, ``(s_dog - 1) * (c - u_pre)``; its networks are
`nag_jax.guidance.two_model`.

The active branches are stacked as rows of one batch, so the network runs once per step with batch
``num_active_branches * N``. Which branches exist is decided at trace time from the scales (a
branch whose scale is off is never computed). Each guidance axis may be restricted to an interval
of noise levels; outside it the term is zero and, when an interval is set, the step runs a smaller
batch without that branch (``lax.switch`` over the active subsets, so only the needed branches
execute). Intervals (and scales) may also be TRACED run-time arrays (`guided_prediction`'s
``intervals`` / ``scales``): every guidance term whose branch exists is then switched per step by
``in interval and scale != off`` at run time, so one compiled sampler serves a whole sweep.

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

from nag_jax.guidance.two_model import DOMAIN, TwoModelNet

COND, CLASS_UNCOND, NOISE_UNCOND = "cond", "class_uncond", "noise_uncond"

NetFn = Callable[..., jax.Array]  # (x, t (B,), y, drop_class (B,), drop_noise (B,)) -> output


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Guidance scales and where they act.

    Attributes:
      cfg_scale: s_cfg; 1.0 switches CFG (and its branch) off.
      nag_scale: w_nag; 0.0 switches NAG (and its branch) off.
      dog_scale: omega of Domain Guidance; 1.0 switches DoG (and the second network) off.
      cfg_interval: (lo, hi) noise levels (1 = noise) where the CFG term is applied.
      nag_interval: (lo, hi) noise levels where the NAG term is applied.
      cfg_channels: None = all guided channels; an int k guides only channels [0, k) with CFG (3 is
        the releases' legacy behaviour).
    """

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    dog_scale: float = 1.0
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
    def use_dog(self) -> bool:
        return float(self.dog_scale) != 1.0

    @property
    def branches(self) -> tuple[str, ...]:
        """Branches computed at a step where every term is active, in batch order."""
        return (
            (COND,)
            + ((CLASS_UNCOND,) if self.use_cfg else ())
            + ((NOISE_UNCOND,) if self.use_nag else ())
            + ((DOMAIN,) if self.use_dog else ())
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
    ``scales``: optional (s_cfg, w_nag) or (s_cfg, w_nag, s_dog), possibly traced, replacing the
    config's values (the branch set still comes from the config).
    """
    s_cfg, w_nag, s_dog = _scales(guidance, scales)
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
    if DOMAIN in outputs:
        guided = guided + (s_dog - 1.0) * (c - outputs[DOMAIN])[..., :gc]
    if gc == c.shape[-1]:
        return guided
    return jnp.concatenate([guided, c[..., gc:]], axis=-1)


def _scales(guidance: GuidanceConfig, scales):
    """(s_cfg, w_nag, s_dog): the config's, or the (possibly traced) ``scales`` given."""
    if scales is None:
        return guidance.cfg_scale, guidance.nag_scale, guidance.dog_scale
    if len(scales) == 2:
        return scales[0], scales[1], guidance.dog_scale
    if len(scales) == 3:
        return tuple(scales)
    raise ValueError(
        f"scales has {len(scales)} entries; expected (s_cfg, w_nag) or (s_cfg, w_nag, s_dog)."
    )


def _call_branches(net_fn, x, t, y, branches):
    n = x.shape[0]
    main = tuple(b for b in branches if b != DOMAIN)
    main_in = branch_inputs(x, t, y, main)
    if DOMAIN in branches:
        if not isinstance(net_fn, TwoModelNet):
            raise ValueError(
                "dog_scale != 1 (Domain Guidance) needs a second set of weights: pass a "
                "guidance.TwoModelNet (builders: params={'main': ..., 'domain': ...}, "
                "config.model.domain_weights)."
            )
        dom_in = branch_inputs(x, t, y, (CLASS_UNCOND,))  # the pre-trained model's null class
        out, dom = net_fn.both(main_in, dom_in)
    else:
        out = net_fn.main(*main_in) if isinstance(net_fn, TwoModelNet) else net_fn(*main_in)
        dom = None
    outs = {b: out[i * n : (i + 1) * n] for i, b in enumerate(main)}
    if dom is not None:
        outs[DOMAIN] = dom
    return outs


def _in_interval(level, interval):
    lo, hi = interval
    return (level >= lo) & (level <= hi)


def guided_prediction(
    net_fn: NetFn | TwoModelNet,
    guidance: GuidanceConfig,
    *,
    noise_level_fn: Callable,
    guided_channels: int | None = None,
    scales=None,
    intervals=None,
) -> Callable:
    """Wraps a raw network call into a guided prediction ``pred_fn(x, t, y)``.

    Args:
      net_fn: ``(x (B,...), t (B,), y (B,), drop_class (B,), drop_noise (B,)) -> (B, ..., C_out)``,
        or a `TwoModelNet` (required when ``guidance.use_dog``).
      guidance: the scales, intervals and channels.
      noise_level_fn: scalar model time -> noise level in [0, 1] (1 = noise).
      guided_channels: number of leading output channels that are guided (None = all).
      scales: optional traced (s_cfg, w_nag) or (s_cfg, w_nag, s_dog) overriding the config's
        values, so one compiled sampler serves a sweep or a slider; which branches exist is
        still fixed by ``guidance``.
      intervals: optional traced (2, 2) array ``[[cfg_lo, cfg_hi], [nag_lo, nag_hi]]`` (noise
        levels) overriding the config's intervals. With it, every existing guidance branch is
        switched at run time (``lax.switch`` over the subsets of terms): CFG where the level is
        in its interval and s_cfg != 1, NAG likewise with w_nag != 0, DoG where s_dog != 1; an
        off term's branch is not computed at that step.

    Returns:
      ``pred_fn(x, t, y)`` with scalar t in the family's convention, returning (N, ..., C_out).
      It calls ``net_fn`` exactly once per invocation, on ``active_branches * N`` rows (a
      stacked `TwoModelNet`: one vmapped call; sequential: one call per network).
    """
    full = guidance.branches
    traced = intervals is not None
    s_cfg, w_nag, s_dog = _scales(guidance, scales)
    on = {CLASS_UNCOND: guidance.use_cfg, NOISE_UNCOND: guidance.use_nag, DOMAIN: guidance.use_dog}
    if traced:
        iv = jnp.asarray(intervals, jnp.float32).reshape(2, 2)
        dynamic = [b for b in (CLASS_UNCOND, NOISE_UNCOND, DOMAIN) if on[b]]
    else:
        static_iv = {CLASS_UNCOND: guidance.cfg_interval, NOISE_UNCOND: guidance.nag_interval}
        dynamic = [b for b in (CLASS_UNCOND, NOISE_UNCOND) if on[b] and static_iv[b] != (0, 1)]

    def active(b, level):
        """Traced bool: is term ``b`` on at noise level ``level``?"""
        if not traced:
            return _in_interval(level, static_iv[b])
        if b == CLASS_UNCOND:
            return _in_interval(level, (iv[0, 0], iv[0, 1])) & (s_cfg != 1.0)
        if b == NOISE_UNCOND:
            return _in_interval(level, (iv[1, 0], iv[1, 1])) & (w_nag != 0.0)
        return jnp.asarray(s_dog != 1.0)

    def run(x, t, y, subset: frozenset):
        branches = tuple(b for b in full if b == COND or b not in dynamic or b in subset)
        outs = _call_branches(net_fn, x, t, y, branches)
        return combine(outs, guidance, guided_channels=guided_channels, scales=scales)

    def pred_fn(x, t, y):
        t = jnp.asarray(t)
        if t.ndim:
            raise ValueError(f"pred_fn expects a scalar time, got shape {t.shape}")
        if not dynamic:
            return run(x, t, y, frozenset())
        level = noise_level_fn(t)
        # Enumerate the subsets of the switched terms; lax.switch executes only one.
        index = 0
        for i, b in enumerate(dynamic):
            index = index + active(b, level).astype(jnp.int32) * (1 << i)
        subsets = [
            frozenset(b for i, b in enumerate(dynamic) if k >> i & 1)
            for k in range(1 << len(dynamic))
        ]
        fns = [lambda x, t, y, s=s: run(x, t, y, s) for s in subsets]
        return jax.lax.switch(index, fns, x, t, y)

    return pred_fn
