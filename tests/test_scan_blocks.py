"""``DiT.scan_blocks``: the blocks as one lax.scan over their stacked params, same param tree.

Reference: the unrolled model (the default, what the parity tests against the releases use) with
the same params. The scan runs the same per-block arithmetic, so outputs agree to float32
rounding; the parameter tree (names, shapes) must be identical, so checkpoints and converters
work with either setting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import init_params, rel_err, rerandomize, tiny_model


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("name", ["SiT-S/2", "DiT-S/2"])
def test_scan_blocks_matches_unrolled_forward_and_grads(name, remat):
    model = tiny_model(name, depth=3, remat=remat)
    scanned = model.clone(scan_blocks=True)
    params = rerandomize(init_params(model), scale=0.2)
    k = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(k[0], (4, 8, 8, 3))
    t = jnp.array([0.1, 0.4, 0.7, 0.95]) * (999.0 if name.startswith("DiT") else 1.0)
    y = jnp.array([0, 1, 2, 5])  # 5 = the null class row
    drop = jnp.array([False, True, False, True])

    def out(m, p):
        return m.apply({"params": p}, x, t, y, drop_class=drop, drop_noise=~drop)

    ref, got = out(model, params), out(scanned, params)
    assert np.abs(np.asarray(ref)).max() > 0.1  # the blocks matter (rerandomised params)
    assert rel_err(got, ref) < 1e-5

    loss = lambda m: jax.grad(lambda p: jnp.sum(out(m, p) ** 2))(params)
    g_ref, g_got = loss(model), loss(scanned)
    assert jax.tree.structure(g_ref) == jax.tree.structure(g_got)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
        assert rel_err(a, b) < 1e-4


def test_scan_blocks_keeps_the_parameter_tree():
    model = tiny_model("SiT-S/2", depth=3)
    x, t, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    shapes = lambda m: jax.tree.map(
        lambda a: a.shape, jax.eval_shape(lambda k: m.init(k, x, t, y), jax.random.key(0))
    )
    unrolled, scanned = shapes(model), shapes(model.clone(scan_blocks=True))
    assert unrolled == scanned
    assert {"blocks_0", "blocks_1", "blocks_2"} <= set(scanned["params"])
    # init draws the same values either way (init always builds the unrolled blocks)
    a = model.init(jax.random.key(1), x, t, y)
    b = model.clone(scan_blocks=True).init(jax.random.key(1), x, t, y)
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
