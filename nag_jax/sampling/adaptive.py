"""Adaptive probability-flow ODE and the ODE log-likelihood through diffrax (SiT family).

`sample_ode_adaptive` is the SiT release's default ``sample_ode`` (torchdiffeq dopri5, atol 1e-6,
rtol 1e-3) and `ode_log_likelihood` its ``sample_ode_likelihood``. Both are diffrax
``diffeqsolve`` calls (while loops, not scans) and report their network evaluations.

Time convention (SiT family): float ``t`` in [0, 1], ``t = 0`` NOISE, ``t = 1`` DATA; the
likelihood integrates data -> noise in ``s = 1 - t``. ``pred_fn(x, t, y)`` as in
`nag_jax.sampling.scan` (scalar t, the transport's prediction type).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion.transport import Transport
from nag_jax.sampling.scan import PredFn, _method, _trajectory, ode_grid

__all__ = ["ADAPTIVE_SOLVERS", "DIVERGENCES", "sample_ode_adaptive", "ode_log_likelihood"]

ADAPTIVE_SOLVERS = ("dopri5", "tsit5", "dopri8")  # diffrax solvers of `sample_ode_adaptive`
DIVERGENCES = ("hutchinson", "exact")


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
