"""The sharded train step: ONE ``jax.jit`` with explicit in/out shardings and a donated state.

Time convention: the step knows nothing of time; the loss (``nag_jax.diffusion.objective.nag_loss``)
draws t in the family's convention (SiT float t in [0, 1], t = 1 is data; DiT integer step 0..999)
and the class / noise-condition dropout masks from the step's key ``fold_in(state.rng, step)``.

Batch: ``{"x": (N, H, W, C) float32 (pixels in [-1, 1] or latents), "y": (N,) int32}``, sharded
over ('data', 'fsdp') on N.
"""

from __future__ import annotations

import functools
import platform as host
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from nag_jax import parallel
from nag_jax.training.state import TrainState, ema_update

# loss_fn(apply_fn, params, x1, y, key) -> (scalar loss, aux dict of scalars)
LossFn = Callable

# config.train.cpu_dot_library "onednn": XLA:CPU's oneDNN fusions for the step's dot products.
_ONEDNN_DOTS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


def compiler_options(cpu_dot_library: str | None, mesh: jax.sharding.Mesh) -> dict | None:
    """XLA compile options of the train step on ``mesh``'s devices.

    On CPU, ``cpu_dot_library="onednn"`` compiles the step's dot products as XLA's oneDNN
    fusions; "xla" leaves XLA's own choice (YNNPACK for row-major products, Eigen for the rest).
    None picks "onednn" on an x86-64 host and "xla" on others (oneDNN's x86 kernels are what was
    measured: docs/benchmarks.md).
    Off CPU: None, whatever the choice (a GPU or TPU compiler has its own GEMMs). Unknown names
    raise a ValueError naming the choices.

    XLA (jaxlib 0.10.2) cannot write a step with oneDNN fusions to jax's persistent compilation
    cache: with a cache directory set, jax warns ("ToProto is not implemented for thunk kind:
    onednn-fusion") and the step is compiled anew in each process. Choose "xla" where reusing
    the cache matters more than the step's speed."""
    from nag_jax.config.schema import choices

    libraries = choices()["train.cpu_dot_library"]
    if cpu_dot_library not in libraries:
        raise ValueError(
            f"train.cpu_dot_library={cpu_dot_library!r} is not one of {libraries}; "
            "None picks the host's default."
        )
    if mesh.devices.flat[0].platform != "cpu":
        return None
    if cpu_dot_library is None:
        cpu_dot_library = "onednn" if host.machine().lower() in ("x86_64", "amd64") else "xla"
    return dict(_ONEDNN_DOTS) if cpu_dot_library == "onednn" else None


def make_apply_fn(model):
    """apply_fn(params, x, t, y, drop_class, drop_noise) -> raw model output (float32)."""

    def apply_fn(params, x, t, y, drop_class=None, drop_noise=None):
        return model.apply(
            {"params": params}, x, t, y, drop_class=drop_class, drop_noise=drop_noise
        )

    return apply_fn


def make_nag_loss(config, process) -> LossFn:
    """The project's NAG objective bound to the config's dropout probabilities."""
    from nag_jax.diffusion.objective import nag_loss

    return functools.partial(
        nag_loss,
        process=process,
        p_class_drop=float(config.objective.p_class_drop),
        p_noise_drop=float(config.objective.p_noise_drop),
    )


def train_step(
    state: TrainState,
    batch,
    *,
    apply_fn,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema_decay: float,
):
    """One optimizer update + EMA. Pure; returns (new state, metrics of float32 scalars)."""
    key = jax.random.fold_in(state.rng, state.step)

    def loss_of(params):
        return loss_fn(apply_fn, params, batch["x"], batch["y"], key)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = {
        "loss": loss.astype(jnp.float32),
        "grad_norm": grad_norm.astype(jnp.float32),
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    for k, v in (aux or {}).items():
        if jnp.ndim(v) == 0:
            metrics[k] = jnp.asarray(v, jnp.float32)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, ema_decay),
        opt_state=opt_state,
    )
    return new_state, metrics


def jit_train_step(
    state_shardings,
    mesh: jax.sharding.Mesh,
    *,
    apply_fn,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema_decay: float,
    donate: bool = True,
    cpu_dot_library: str | None = None,
):
    """``train_step`` as one jit: state in/out with ``state_shardings``, batch over data x fsdp,
    compiled with `compiler_options` of ``cpu_dot_library`` for the mesh's platform."""
    step = functools.partial(
        train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, ema_decay=float(ema_decay)
    )
    return jax.jit(
        step,
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options(cpu_dot_library, mesh),
    )


def jit_train_step_from_config(
    config, model, state_shardings, mesh: jax.sharding.Mesh, tx, *, loss_fn: LossFn | None = None,
    donate: bool = True,
):  # fmt: skip
    """The configured train step: `jit_train_step` with ``model``'s apply, the NAG objective of
    ``config.objective`` on the config's process (or ``loss_fn``), ``config.optim.ema_decay`` and
    ``config.train.cpu_dot_library``.
    The one place that builds it (training loop, compile mode, benchmarks)."""
    if loss_fn is None:
        from nag_jax.sampling import build

        loss_fn = make_nag_loss(config, build.build_process(config))
    return jit_train_step(
        state_shardings,
        mesh,
        apply_fn=make_apply_fn(model),
        loss_fn=loss_fn,
        tx=tx,
        ema_decay=float(config.optim.ema_decay),
        donate=donate,
        cpu_dot_library=config.train.get("cpu_dot_library"),
    )
