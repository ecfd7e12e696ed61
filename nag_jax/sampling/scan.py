"""SiT's fixed-step ODE / SDE samplers as pure ``jax.lax.scan`` loops over a prediction function.

Time convention (SiT family): float ``t`` in [0, 1], ``t = 0`` NOISE, ``t = 1`` DATA; integration
runs forward in ``t``. Noise level ``lambda = 1 - t``.

``pred_fn(x, t, y) -> prediction``: ``x`` (N, H, W, C), ``t`` a SCALAR (shape ``()``, float32) in
the family's convention, ``y`` whatever the caller passes (labels, usually (N,) int32). It returns
the raw prediction: the transport's prediction type on C channels (velocity / score / noise).
Guidance (CFG / NAG) lives inside ``pred_fn`` (see `nag_jax.guidance.guided_prediction`); the
samplers know nothing about models.

Every sampler is pure, jit-able (close over / mark static the non-array arguments) and
deterministic for a given PRNG key. ``key`` is one key, or (N,) per-image keys (typed, or raw
uint32 (N, 2)): image i's step noise then depends on ``keys[i]`` alone, whatever the batch or
device layout (step k of image i uses ``split(keys[i], S)[k]``). For parity tests the per-step
Gaussian noise can be injected with ``noise`` (shape ``(S, N, H, W, C)``, S = number of
stochastic steps, documented per sampler) instead of being drawn from ``key``.

Network calls per sample: ODE Euler ``num_steps``, ODE Heun ``2 num_steps``; SDE Euler
``num_steps`` (ONE call per step: drift and score come from the same prediction; the release
calls the network twice), SDE Heun ``2 (num_steps - 1) + 1``.

With ``return_trajectory=True`` a sampler returns ``(x, traj)`` where ``traj = dict(x=(S+1, N, H,
W, C), t=(S+1,))`` holds the initial state and the state after every step (``traj["x"][-1] ==
x``) and the matching times. Otherwise the final ``x`` (N, H, W, C) alone is returned.

The helpers below (per-image keys, float64 grids, trajectories) are shared with the sibling
modules `nag_jax.sampling.ddpm` (DiT's DDPM / DDIM) and `nag_jax.sampling.adaptive` (diffrax).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion.transport import Transport

__all__ = [
    "PredFn",
    "ODE_METHODS",
    "SDE_METHODS",
    "LAST_STEPS",
    "sample_ode",
    "sample_sde",
    "ode_grid",
    "sde_grid",
]

PredFn = Callable[[jax.Array, jax.Array, Any], jax.Array]

ODE_METHODS = ("euler", "heun")
SDE_METHODS = ("euler", "heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")


def _is_key_batch(key) -> bool:
    """True for a batch of per-image keys: typed (N,) or raw uint32 (N, 2)."""
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def _split_steps(key, n: int):
    """Step keys: (n,) from one key, or (n, N) from N per-image keys (image i's noise at every
    step then depends on its own key alone, whatever the batch or device layout)."""
    if _is_key_batch(key):
        return jax.vmap(lambda k: jax.random.split(k, n), out_axes=1)(key)
    return jax.random.split(key, n)


def _normal(key, shape, dtype):
    """Standard normals of ``shape`` (N, ...) from one key or from N per-image keys."""
    if _is_key_batch(key):
        return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(key)
    return jax.random.normal(key, shape, dtype)


def _linspace32(t0: float, t1: float, n: int) -> np.ndarray:
    """``linspace`` computed in float64 and rounded once to float32 (``(n,)``)."""
    return np.linspace(float(t0), float(t1), int(n), dtype=np.float64).astype(np.float32)


def _method(method: str, allowed: tuple[str, ...], what: str) -> str:
    m = str(method).lower()
    if m not in allowed:
        raise ValueError(f"{what} method={method!r}; expected one of {allowed}.")
    return m


def _trajectory(x_init, xs, ts) -> dict:
    return {
        "x": jnp.concatenate([x_init[None], xs], axis=0),
        "t": jnp.asarray(ts, jnp.float32),
    }


def ode_grid(transport: Transport, num_steps: int) -> np.ndarray:
    """The ODE time grid ``(num_steps + 1,)`` float32 over ``transport.sample_interval(False)``."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps={num_steps}; expected >= 1 ODE steps.")
    t0, t1 = transport.sample_interval(sde=False)
    return _linspace32(t0, t1, int(num_steps) + 1)


def sample_ode(
    pred_fn: PredFn,
    x_init: jax.Array,
    y,
    *,
    transport: Transport,
    num_steps: int,
    method: str = "euler",
    return_trajectory: bool = False,
):
    """Fixed-step probability-flow ODE from noise (t0) to data (t1), SiT time.

    ``num_steps`` is the number of integration steps on ``linspace(t0, t1, num_steps + 1)``
    (``(t0, t1) = transport.sample_interval(sde=False)``; Linear/GVP velocity: [0, 1]). The
    release's torchdiffeq call with a fixed-grid method and ``num_steps = K`` takes ``K - 1``
    steps, i.e. ours with ``num_steps = K - 1``.

    Euler: ``x += dt v(x, t)``. Heun (2nd order, 2 calls/step): ``k1 = v(x, t)``,
    ``k2 = v(x + dt k1, t + dt)``, ``x += dt (k1 + k2) / 2``.

    Args:
      pred_fn: ``(x, t, y) -> prediction`` of the transport's type, scalar t.
      x_init: (N, H, W, C) noise at t0.
      y: passed through to ``pred_fn``.
    Returns: x (N, H, W, C) at t1, or ``(x, traj)`` with ``num_steps + 1`` trajectory entries.
    """
    method = _method(method, ODE_METHODS, "ODE")
    ts = ode_grid(transport, num_steps)
    dtype = x_init.dtype

    def velocity(x, t):
        return transport.velocity_from(pred_fn(x, t, y), x, t)

    def step(x, tt):
        t, t_next = tt
        dt = t_next - t
        k1 = velocity(x, t)
        if method == "euler":
            x_new = x + dt * k1
        else:
            k2 = velocity((x + dt * k1).astype(dtype), t_next)
            x_new = x + 0.5 * dt * (k1 + k2)
        x_new = x_new.astype(dtype)
        return x_new, (x_new if return_trajectory else None)

    x, xs = jax.lax.scan(step, x_init, (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])))
    if return_trajectory:
        return x, _trajectory(x_init, xs, ts)
    return x


def sde_grid(
    transport: Transport,
    num_steps: int,
    *,
    diffusion_form: str = "sigma",
    last_step: str | None = "Mean",
    last_step_size: float = 0.04,
) -> tuple[np.ndarray, float]:
    """The SDE grid ``linspace(t0, t1, num_steps)`` (float32) and the last step size.

    The first ``num_steps - 1`` grid points start a stochastic step; the last one (``t1``) starts
    the deterministic last step of size ``last_step_size`` (0 when ``last_step is None``).
    """
    if int(num_steps) < 2:
        raise ValueError(f"num_steps={num_steps}; the SDE sampler needs >= 2 grid points.")
    if last_step not in LAST_STEPS:
        raise ValueError(f"last_step={last_step!r}; expected one of {LAST_STEPS}.")
    lss = 0.0 if last_step is None else float(last_step_size)
    t0, t1 = transport.sample_interval(sde=True, diffusion_form=diffusion_form, last_step_size=lss)
    if diffusion_form == "SBDM" and transport.path != "vp" and t0 == 0.0:
        raise ValueError(
            f"diffusion_form='SBDM' with path={transport.path!r}, prediction="
            f"{transport.prediction!r} and sample_eps={transport.sample_eps} starts at t=0 where "
            "the SBDM coefficient is infinite (the release yields NaN there). Use "
            "diffusion_form='sigma' or a Transport with sample_eps > 0."
        )
    return _linspace32(t0, t1, num_steps), lss


def sample_sde(
    pred_fn: PredFn,
    key: jax.Array | None,
    x_init: jax.Array,
    y,
    *,
    transport: Transport,
    num_steps: int = 250,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str | None = "Mean",
    last_step_size: float = 0.04,
    method: str = "euler",
    noise: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """Reverse SDE sampler of the SiT release (noise t0 -> data), SiT time.

    SDE: ``dx = [v(x,t) + w(t) s(x,t)] dt + sqrt(2 w(t)) dW``, ``w`` = `Transport.
    diffusion_coefficient` (form "sigma": ``w = sigma(t)``; Linear: ``drift = (1 + t) v - x``).
    Grid ``ts = linspace(t0, t1, num_steps)``, ``dt = ts[1] - ts[0]``, ``t1 = 1 - last_step_size``
    (see `sde_grid`); ``num_steps - 1`` stochastic steps at ``ts[:-1]`` then a last step at ``t1``:

    - Euler-Maruyama: ``mean = x + drift(x, t) dt; x = mean + sqrt(2 w(t)) sqrt(dt) z``;
      ONE ``pred_fn`` call per step (velocity and score from the same prediction).
    - Heun (release): ``xh = x + sqrt(2 w(t)) sqrt(dt) z; k1 = drift(xh, t);
      k2 = drift(xh + dt k1, t + dt); x = xh + dt (k1 + k2) / 2``.
    - last step "Mean": ``x + last_step_size * drift(x, t1)``; "Euler": ``x + last_step_size *
      v(x, t1)``; "Tweedie": ``(x + sigma^2 s(x, t1)) / alpha``; None: ``x`` unchanged.

    Args:
      key: PRNG key for the step noise, or (N,) per-image keys (ignored when ``noise`` is given).
      x_init: (N, H, W, C) noise at t0.
      noise: optional (num_steps - 1, N, H, W, C) standard normals used instead of ``key``.
    Returns: x (N, H, W, C) or ``(x, traj)`` with ``num_steps + 1`` trajectory entries (times:
      the grid, then ``t1 + last_step_size``, or 1.0 for "Tweedie").
    """
    method = _method(method, SDE_METHODS, "SDE")
    ts, lss = sde_grid(
        transport,
        num_steps,
        diffusion_form=diffusion_form,
        last_step=last_step,
        last_step_size=last_step_size,
    )
    n_stoch = int(num_steps) - 1
    dt = np.float32(ts[1] - ts[0])
    dtype = x_init.dtype

    def drift_w(x, t):
        return transport.sde_drift(pred_fn(x, t, y), x, t, diffusion_form, diffusion_norm)

    def step(x, inp):
        t, z_or_key = inp
        if noise is None:
            z = _normal(z_or_key, x.shape, dtype)
        else:
            z = z_or_key.astype(dtype)
        if method == "euler":
            drift, w = drift_w(x, t)
            x_new = x + drift * dt + jnp.sqrt(2.0 * w) * jnp.sqrt(dt) * z
        else:
            w = transport.diffusion_coefficient(t, diffusion_form, diffusion_norm)
            xh = x + jnp.sqrt(2.0 * w) * jnp.sqrt(dt) * z
            k1, _ = drift_w(xh, t)
            k2, _ = drift_w((xh + dt * k1).astype(dtype), t + dt)
            x_new = xh + 0.5 * dt * (k1 + k2)
        x_new = x_new.astype(dtype)
        return x_new, (x_new if return_trajectory else None)

    if noise is not None:
        noise = jnp.asarray(noise)
        expected = (n_stoch,) + tuple(x_init.shape)
        if tuple(noise.shape) != expected:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; expected {expected} = (num_steps - 1, "
                "*x_init.shape), one standard normal draw per stochastic step."
            )
        zs = noise
    else:
        if key is None:
            raise ValueError("sample_sde needs a PRNG key (or an explicit `noise` array).")
        zs = _split_steps(key, n_stoch)
    x, xs = jax.lax.scan(step, x_init, (jnp.asarray(ts[:-1]), zs))

    t1 = jnp.float32(ts[-1])
    if last_step == "Mean":
        drift, _ = drift_w(x, t1)
        x_last = x + lss * drift
        t_end = float(ts[-1]) + lss
    elif last_step == "Euler":
        x_last = x + lss * transport.velocity_from(pred_fn(x, t1, y), x, t1)
        t_end = float(ts[-1]) + lss
    elif last_step == "Tweedie":
        alpha, sigma, _, _ = transport.alpha_sigma(t1)
        score = transport.score_from(pred_fn(x, t1, y), x, t1)
        x_last = x / alpha + sigma**2 / alpha * score
        t_end = 1.0
    else:
        x_last = x
        t_end = float(ts[-1])
    x_last = x_last.astype(dtype)
    if return_trajectory:
        xs_all = jnp.concatenate([xs, x_last[None]], axis=0)
        return x_last, _trajectory(x_init, xs_all, np.append(ts, np.float32(t_end)))
    return x_last
