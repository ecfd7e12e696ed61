"""Test utilities shared across test files: tiny models, re-randomised params, jaxpr inspection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.models import create_model

TINY = dict(input_size=8, in_channels=3, num_classes=5, hidden_size=32, depth=2, num_heads=4)


def tiny_model(name: str = "SiT-S/2", **overrides):
    """A 2-block, 32-wide backbone on 8x8x3 inputs with 5 classes (compiles in about a second)."""
    return create_model(name, **{**TINY, **overrides})


def init_params(model, seed: int = 0):
    n = 2
    x = jnp.zeros((n, model.input_size, model.input_size, model.in_channels))
    return model.init(jax.random.key(seed), x, jnp.zeros((n,)), jnp.zeros((n,), jnp.int32))[
        "params"
    ]


def rerandomize(params, seed: int = 1, scale: float = 0.2):
    """Replaces every parameter with N(0, scale^2) draws so that outputs are nonzero."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, new)


def iter_eqns(jaxpr):
    """Yields every equation of a (closed) jaxpr, recursing into scan/cond/pjit sub-jaxprs."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            subs = param if isinstance(param, (tuple, list)) else (param,)
            for sub in subs:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    yield from iter_eqns(sub)


def conv_batch_sizes(fn, *args) -> list[int]:
    """Batch sizes of every convolution in the traced computation of fn(*args).

    The backbone has exactly one convolution (the patch embedding), so this lists the network
    calls and the batch each one runs on.
    """
    closed = jax.make_jaxpr(fn)(*args)
    return [
        int(eqn.invars[0].aval.shape[0])
        for eqn in iter_eqns(closed)
        if eqn.primitive.name == "conv_general_dilated"
    ]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def linear_em_reference(velocity, x_init, noise, n_steps, last_step_size=0.04):
    """The release's Euler-Maruyama on the Linear path, written out in float64 numpy: grid
    linspace(0, 1 - h, n_steps), 'sigma' diffusion w = 1 - t, so drift = v + w score =
    (1 + t) v - x; then the deterministic 'Mean' last step of size h. ``velocity(x, t)`` numpy."""
    ts = np.linspace(0.0, 1.0 - last_step_size, n_steps)
    dt = ts[1] - ts[0]
    x = np.asarray(x_init, np.float64)
    for i, t in enumerate(ts[:-1]):
        drift = (1 + t) * velocity(x, t) - x  # v + (1 - t) * (t v - x) / (1 - t)
        x = x + drift * dt + np.sqrt(2 * (1 - t)) * np.sqrt(dt) * np.asarray(noise[i], np.float64)
    t = ts[-1]
    return x + last_step_size * ((1 + t) * velocity(x, t) - x)


def read_tensorboard(logdir: str) -> dict:
    """{(tag, step): value} of every TensorBoard event file under ``logdir``: scalars as floats,
    images as their encoded PNG bytes, hparams as the plugin's content bytes (read back with TF's
    own event reader, independent of the writer)."""
    import os

    import tensorflow as tf

    out = {}
    for root, _, files in os.walk(logdir):
        for name in files:
            if not name.startswith("events.out.tfevents"):
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for v in event.summary.value:
                    plugin = v.metadata.plugin_data.plugin_name
                    if plugin == "scalars" or v.HasField("simple_value"):
                        value = (
                            v.simple_value
                            if v.HasField("simple_value")
                            else float(tf.make_ndarray(v.tensor))
                        )
                    elif plugin == "images":
                        value = tf.make_ndarray(v.tensor)[-1]
                    else:
                        value = v.metadata.plugin_data.content
                    out[(v.tag, event.step)] = value
    return out
