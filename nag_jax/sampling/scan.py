"""Samplers as pure ``jax.lax.scan`` loops over a prediction function.

Time conventions:
- SiT family (`sample_ode`, `sample_sde`): float ``t`` in [0, 1], ``t = 0`` NOISE, ``t = 1`` DATA;
  integration runs forward in ``t``. Noise level ``lambda = 1 - t``.
- DiT family (`sample_ddpm`, `sample_ddim`): integer step, 0 = least noise; the loop runs over the
  RESPACED indices ``i = T' - 1, ..., 0`` and the prediction function sees the ORIGINAL step
  ``diffusion.timestep_map[i]`` as a float scalar. Noise level ``lambda = (step + 1) / 1000``.

``pred_fn(x, t, y) -> prediction``: ``x`` (N, H, W, C), ``t`` a SCALAR (shape ``()``, float32) in
the family's convention, ``y`` whatever the caller passes (labels, usually (N,) int32). It returns
the raw prediction: SiT the transport's prediction type on C channels (velocity / score / noise);
DiT the full 2C output (eps, variance value v) when ``diffusion.learn_sigma`` else C (eps).
Guidance (CFG / NAG) lives inside ``pred_fn`` (see `nag_jax.guidance.guided_prediction`); the
samplers know nothing about models.

Every sampler is pure, jit-able (close over / mark static the non-array arguments) and
deterministic for a given PRNG key. ``key`` is one key, or (N,) per-image keys (typed, or raw
uint32 (N, 2)): image i's step noise then depends on ``keys[i]`` alone, whatever the batch or
device layout (step k of image i uses ``split(keys[i], S)[k]``). For parity tests the per-step
Gaussian noise can be injected with ``noise`` (shape ``(S, N, H, W, C)``, S = number of
stochastic steps, documented per sampler) instead of being drawn from ``key``.

Adaptive ODE (`sample_ode_adaptive`, diffrax dopri5 as the SiT release's default ``sample_ode``)
and the ODE log-likelihood (`ode_log_likelihood`, the release's ``sample_ode_likelihood``) are
diffrax ``diffeqsolve`` calls (while loops), not scans; they report their network evaluations.

Network calls per sample: ODE Euler ``num_steps``, ODE Heun ``2 num_steps``; SDE Euler
``num_steps`` (ONE call per step: drift and score come from the same prediction; the release
calls the network twice), SDE Heun ``2 (num_steps - 1) + 1``; DDPM/DDIM ``T'`` (respaced count).

With ``return_trajectory=True`` a sampler returns ``(x, traj)`` where ``traj = dict(x=(S+1, N, H,
W, C), t=(S+1,))`` holds the initial state and the state after every step (``traj["x"][-1] ==
x``) and the matching times (SiT ``t``; DiT original step index, ``-1.0`` after the final step).
Otherwise the final ``x`` (N, H, W, C) alone is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion.gaussian import GaussianDiffusion
from nag_jax.diffusion.transport import Transport

__all__ = [
    "sample_ode",
    "sample_sde",
    "sample_ddpm",
    "sample_ddim",
    "ode_grid",
    "sde_grid",
    "sample_ode_adaptive",
    "ode_log_likelihood",
    "ADAPTIVE_SOLVERS",
]

PredFn = Callable[[jax.Array, jax.Array, Any], jax.Array]

ODE_METHODS = ("euler", "heun")
SDE_METHODS = ("euler", "heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")
ADAPTIVE_SOLVERS = ("dopri5", "tsit5", "dopri8")  # diffrax solvers of `sample_ode_adaptive`
DIVERGENCES = ("hutchinson", "exact")


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


# --------------------------------------------------------------------------------------- SiT
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


# ------------------------------------------------------------------ SiT, adaptive ODE (diffrax)
def _diffrax_solver(name: str):
    import diffrax

    return {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5, "dopri8": diffrax.Dopri8}[name]()


def _max_rms_norm(tree) -> jax.Array:
    """torchdiffeq's norm of an error ratio: RMS of each leaf, max over leaves (one leaf: RMS
    over the whole batch, so the step size is shared by the batch as in the release)."""
    rms = [jnp.sqrt(jnp.mean(jnp.square(leaf))) for leaf in jax.tree.leaves(tree)]
    out = rms[0]
    for r in rms[1:]:
        out = jnp.maximum(out, r)
    return out


def _adaptive_solve(vf, y0, s0, s1, *, solver, atol, rtol, max_steps, save_ts=None):
    """diffrax ``diffeqsolve`` of ``dy/ds = vf(s, y)`` from s0 to s1 with a PID controller
    (``atol`` / ``rtol`` floats or traced scalars: one compilation serves every tolerance)
    (I-controller: torchdiffeq's dopri5 control; safety 0.9, factors 0.2 / 10), initial step by
    Hairer's rule (``dt0=None``). Returns (ys at s1 or at ``save_ts``, stats dict)."""
    import diffrax

    solver = _method(solver, ADAPTIVE_SOLVERS, "adaptive ODE solver")
    saveat = (
        diffrax.SaveAt(ts=jnp.asarray(save_ts)) if save_ts is not None else diffrax.SaveAt(t1=True)
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda s, y, args: vf(s, y)),
        _diffrax_solver(solver),
        t0=float(s0),
        t1=float(s1),
        dt0=None,
        y0=y0,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=_max_rms_norm),
        max_steps=int(max_steps),
    )
    steps = sol.stats["num_steps"]
    stats = {
        "num_steps": steps,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        # Vector-field evaluations: new stages per step (dopri5 / tsit5 are FSAL: 6 of their 7
        # stages) plus 1 at the start; counted by tests/test_ode_adaptive.py.
        "nfe": _STAGES_PER_STEP[solver] * steps + 1,
    }
    return sol.ys, stats


_STAGES_PER_STEP = {"dopri5": 6, "tsit5": 6, "dopri8": 13}


def sample_ode_adaptive(
    pred_fn: PredFn,
    x_init: jax.Array,
    y,
    *,
    transport: Transport,
    solver: str = "dopri5",
    atol: float = 1e-6,
    rtol: float = 1e-3,
    max_steps: int = 4096,
    num_steps: int = 50,
    per_image: bool = False,
    return_trajectory: bool = False,
    return_stats: bool = False,
):
    """Adaptive probability-flow ODE (the SiT release's default ``sample_ode``: torchdiffeq
    dopri5, atol 1e-6, rtol 1e-3) through diffrax, from noise (t0) to data (t1), SiT time.

    ``per_image=False`` (the release): the state is the whole batch and the error norm is the RMS
    over it (odeint on an (N, C, H, W) tensor): the images share the step sizes, so image i
    depends (within the tolerance) on the batch it is drawn in. ``per_image=True``: one solve per
    image (vmapped; ``y`` must then have a leading batch axis): image i depends on its own noise
    and label only, as with the fixed-step samplers (nag_jax.sampling.generate's identity), and the
    stats
    are (N,) per image. Guidance stays in
    ``pred_fn`` (one batched network call per evaluation). Differences from torchdiffeq that are
    within the tolerance: diffrax clips the last step to end at t1, torchdiffeq steps past t1
    and interpolates (so the release evaluates the network at t > 1).

    Args:
      pred_fn: ``(x, t, y) -> prediction`` (transport's type), scalar t.
      x_init: (N, H, W, C) noise at t0.
      solver: one of ``ADAPTIVE_SOLVERS`` (diffrax Dopri5 / Tsit5 / Dopri8).
      max_steps: diffrax's step budget (an error is raised when it is exhausted).
      num_steps: with ``return_trajectory``, the states are saved on ``ode_grid(transport,
        num_steps)`` (``num_steps + 1`` points, dense output; the release saves on
        ``linspace(t0, t1, num_steps)``); it does not change the steps taken.
    Returns: x (N, H, W, C) at t1; ``(x, traj)`` with ``return_trajectory``; with
      ``return_stats`` a trailing dict (num_steps, num_accepted_steps, num_rejected_steps, nfe:
      network evaluations, int32 arrays).
    """
    t0, t1 = transport.sample_interval(sde=False)
    dtype = x_init.dtype
    ts = ode_grid(transport, num_steps) if return_trajectory else None

    def solve(x_init, y):
        def vf(t, x):
            return transport.velocity_from(pred_fn(x, t, y), x, t).astype(dtype)

        return _adaptive_solve(
            vf, x_init, t0, t1, solver=solver, atol=atol, rtol=rtol, max_steps=max_steps, save_ts=ts
        )

    if per_image:
        # vmap over images of a one-image solve: each has its own steps; the network still runs
        # once per evaluation on the whole batch (finished images are carried along, masked).
        one = lambda xi, yi: solve(xi[None], jax.tree.map(lambda a: a[None], yi))
        ys, stats = jax.vmap(one)(x_init, y)
        ys = jnp.moveaxis(ys[:, :, 0], 0, 1)  # (S, N, ...)
    else:
        ys, stats = solve(x_init, y)
    x = ys[-1]
    out = (x, _trajectory(x_init, ys[1:], ts)) if return_trajectory else (x,)
    if return_stats:
        out = out + (stats,)
    return out[0] if len(out) == 1 else out


def _divergence(fn, x, eps, divergence: str):
    """``(f(x), div f(x))`` for ``fn: (N, ...) -> (N, ...)`` acting on each example separately.

    "hutchinson": ``eps . (J eps)`` with the given probe (one jvp; the release uses
    ``eps . (J^T eps)`` through autograd, equal for the same probe). "exact": the trace of the
    per-example Jacobian through D = prod(x.shape[1:]) jvps (one per input dimension, batched
    with vmap: for small inputs only).
    """
    n = x.shape[0]
    if divergence == "hutchinson":
        v, jv = jax.jvp(fn, (x,), (eps,))
        return v, jnp.sum((jv * eps).reshape(n, -1), axis=-1)
    d = int(np.prod(x.shape[1:]))
    v = fn(x)

    def diag(j):
        e = jnp.broadcast_to(jax.nn.one_hot(j, d, dtype=x.dtype).reshape(x.shape[1:]), x.shape)
        return jax.jvp(fn, (x,), (e,))[1].reshape(n, -1)[:, j]

    return v, jnp.sum(jax.vmap(diag)(jnp.arange(d)), axis=0)


def ode_log_likelihood(
    pred_fn: PredFn,
    x: jax.Array,
    y,
    *,
    transport: Transport,
    key: jax.Array | None = None,
    divergence: str = "hutchinson",
    solver: str = "dopri5",
    atol: float = 1e-6,
    rtol: float = 1e-3,
    max_steps: int = 4096,
    eps: jax.Array | None = None,
) -> dict:
    """log p(x) under the probability-flow ODE (the release's ``sample_ode_likelihood``).

    Integrates data -> noise in ``s = 1 - t`` (SiT time t, 1 = data) the augmented state
    ``(z, delta)``: ``dz/ds = -v(z, 1 - s)``, ``d delta/ds = div v(z, 1 - s)``, then
    ``log p(x) = log N(z; 0, I) - delta`` (nats) and bits/dim ``= -log p(x) / (D ln 2)`` of the
    continuous density in the model's space (a discrete 8-bit bpd needs dequantisation noise and
    the change of scale, ``+ log2(127.5)`` per dimension for pixels in [-1, 1]; not done here).
    The tolerance norm is torchdiffeq's mixed norm (max over the two parts of each part's RMS).

    Divergence: "hutchinson" with one Rademacher probe ``eps`` (from ``key``, or given) held
    fixed over the solve (FFJORD); the release draws a fresh probe at every evaluation, which
    has the same expectation but makes the ODE right-hand side random (step control then sees
    noise). "exact": the Jacobian trace (D jvps per evaluation; small inputs).

    Args:
      x: (N, H, W, C) data at t1.
      key: PRNG key of the Hutchinson probe (or ``eps`` (N, H, W, C)).
    Returns: dict of (N,) arrays ``logp``, ``bpd``, ``prior_logp``, ``delta_logp``, the noise
      ``z`` (N, H, W, C) and solver stats (``num_steps``, ``nfe``).
    """
    divergence = _method(divergence, DIVERGENCES, "divergence")
    t0, t1 = transport.sample_interval(sde=False)
    n = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    if divergence == "hutchinson" and eps is None:
        if key is None:
            raise ValueError("ode_log_likelihood(divergence='hutchinson') needs a key or eps.")
        eps = jax.random.rademacher(key, x.shape, dtype=x.dtype)

    def vf(s, state):
        z, _ = state
        t = 1.0 - s
        fn = lambda zz: transport.velocity_from(pred_fn(zz, t, y), zz, t)
        v, div = _divergence(fn, z, eps, divergence)
        return (-v).astype(z.dtype), div.astype(jnp.float32)

    state0 = (x, jnp.zeros((n,), jnp.float32))
    (zs, deltas), stats = _adaptive_solve(
        vf, state0, 1.0 - t1, 1.0 - t0, solver=solver, atol=atol, rtol=rtol, max_steps=max_steps
    )
    z, delta = zs[-1], deltas[-1]
    prior = -0.5 * d * np.log(2 * np.pi) - 0.5 * jnp.sum(jnp.square(z).reshape(n, -1), axis=-1)
    logp = prior - delta
    return dict(
        logp=logp,
        bpd=-logp / (d * np.log(2.0)),
        prior_logp=prior,
        delta_logp=delta,
        z=z,
        **stats,
    )


# --------------------------------------------------------------------------------------- DiT
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
