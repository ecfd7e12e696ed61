"""Training and validation of the noise-level estimator g(lambda | x).

The estimator itself (network, ``Estimator``, save / load, classifier-based NAG) lives in
nag_jax.models.noise_estimator, where sampling uses it (``sample.nag_mode = "classifier"``); its
names
are re-exported here for the analysis code.

Time conventions
----------------
The estimator is indexed by the paper's noise level lambda in [0, 1] (1 = pure noise); on SiT
transports lambda = 1 - t = ``transport.noise_level(t)``, on DiT lambda = (step + 1) / 1000. Its B
bins have centres ``(j + 1/2) / B`` = ``nag_jax.analysis.gmm.level_grid(B)``, so its output is
directly comparable with the exact GMM posterior on the same grid.

Training: cross-entropy of the bin of lambda on exact forward samples of the data
(``shift.forward_at_level``, either family), from a sampler of data (`train_estimator`: the
lab, the demo study) or from the project's data pipeline, sharded over the mesh
(`train_estimator_sharded`: the noise_shift mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_jax.analysis.shift import forward_at_level, sample_levels
from nag_jax.models.noise_estimator import (  # noqa: F401  (re-exported for the analysis code)
    Estimator,
    NoiseLevelEstimator,
    bin_index,
)


def _optimizer(lr: float, num_steps: int):
    """Adam with a linear warm-up over the first 5% of steps and a cosine decay to 10% of lr."""
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(1, num_steps // 20), num_steps, end_value=0.1 * lr
    )
    return optax.adam(sched)


def train_params(loss_fn, params, key, *, num_steps: int, lr: float, chunk: int = 100):
    """Adam on ``loss_fn(params, key) -> scalar``; ``chunk`` steps per jitted ``lax.scan``.

    Returns (params, losses (num_steps,) numpy). Linear warm-up over the first 5% of steps and a
    cosine decay to 10% of lr.
    """
    opt = _optimizer(lr, num_steps)
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

    ``sample_x1(key, n) -> (n, ...)`` draws data; lambda from ``shift.sample_levels`` (SiT
    U[0, 1]), x = ``shift.forward_at_level`` (SiT: ``transport.interpolate(noise, x1, t = 1 -
    lambda)``), target = the bin of lambda. ``transport``: the process of either family.
    Returns (Estimator, losses).
    """
    k_init, k_train = jax.random.split(key)
    module = NoiseLevelEstimator(num_bins=num_bins, hidden=hidden, depth=depth, conv=conv)
    x_ex = sample_x1(k_init, 2)
    params = module.init(k_init, x_ex)["params"]

    def loss_fn(p, k):
        k1, k2, k3 = jax.random.split(k, 3)
        x1 = sample_x1(k1, batch_size)
        lam = sample_levels(transport, k2, batch_size)
        x0 = jax.random.normal(k3, x1.shape, x1.dtype)
        xt = forward_at_level(transport, x0, x1, lam)
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


def estimator_loss(module, params, x1, key, process) -> jax.Array:
    """Mean cross-entropy of the bin of lambda for forward samples of ``x1`` (N, ...)."""
    k_lam, k_noise = jax.random.split(key)
    lam = sample_levels(process, k_lam, x1.shape[0])
    x0 = jax.random.normal(k_noise, x1.shape, jnp.float32)
    xt = forward_at_level(process, x0, jnp.asarray(x1, jnp.float32), lam)
    logits = module.apply({"params": params}, xt)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, bin_index(lam, module.num_bins)
    ).mean()


def train_estimator_sharded(
    key,
    batches: Iterator[np.ndarray],
    process,
    mesh,
    *,
    module: NoiseLevelEstimator,
    num_steps: int,
    lr: float,
    log_every: int = 100,
    on_log: Callable[[int, float], None] | None = None,
):
    """Trains g(lambda | x) on the project's data, data-parallel over ``mesh``.

    ``batches`` yields this process's (B_local, H, W, C) float arrays (pixels in [-1, 1] or
    latents, e.g. ``data.pipeline.create_dataset(config.data)``'s "image"); each step assembles
    the global batch sharded over the mesh's batch axes (``parallel.global_batch``), the params
    and optimizer state are replicated and the gradient is averaged by XLA (jit with shardings).
    Step k draws its levels and noise from ``fold_in(key, k)``. Returns (Estimator, losses
    (num_steps,) numpy).
    """
    from nag_jax import parallel

    first = next(batches)
    rep = parallel.replicated(mesh)
    x_ex = jnp.asarray(first[:2], jnp.float32)
    params = jax.device_put(module.init(jax.random.fold_in(key, 2**31 - 1), x_ex)["params"], rep)
    opt = _optimizer(lr, num_steps)
    state = jax.device_put(opt.init(params), rep)

    def step(params, state, x1, k):
        loss, g = jax.value_and_grad(lambda p: estimator_loss(module, p, x1, k, process))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    jstep = jax.jit(
        step,
        in_shardings=(rep, rep, parallel.batch_sharding(mesh), rep),
        out_shardings=(rep, rep, rep),
        donate_argnums=(0, 1),
    )
    losses = []
    batch = first
    for i in range(int(num_steps)):
        if i:
            batch = next(batches)
        x1 = parallel.global_batch(np.asarray(batch, np.float32), mesh)
        params, state, loss = jstep(params, state, x1, jax.random.fold_in(key, i))
        losses.append(loss)
        if on_log is not None and ((i + 1) % int(log_every) == 0 or i + 1 == num_steps):
            on_log(i + 1, float(np.mean(jax.device_get(losses[-int(log_every) :]))))
    return Estimator(module, jax.device_get(params)), np.asarray(jax.device_get(losses))
