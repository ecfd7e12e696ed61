"""nag_jax.models.linear: the "transposed_input" dense products against hand computations and
autodiff of ``lax.dot_general`` ("xla"), the compiled form of its kernel gradient on CPU, and which
implementation each platform gets.

References: numpy products written here (x^T dy for the kernel gradient, dy W^T for the input
gradient) and jax's own autodiff of the plain product. The model-level check compares whole DiT
outputs and gradients of the two implementations on re-randomised weights (fresh DiT weights
output exactly zero)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.models import create_model
from nag_jax.models.linear import dot_general_for, resolve_impl, transposed_input_dense
from tests.helpers import init_params, rerandomize, tiny_model

DIMS = (((2,), (0,)), ((), ()))  # (N, T, Din) x (Din, Dout), as flax's Dense calls it


def _arrays(din=6, dout=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, din)).astype(np.float32)
    w = rng.standard_normal((din, dout)).astype(np.float32)
    ct = rng.standard_normal((2, 5, dout)).astype(np.float32)
    return x, w, ct


def test_gradients_are_the_hand_products():
    """d/dW <ct, x W> = x^T ct over the N*T rows and d/dx = ct W^T, computed in numpy."""
    x, w, ct = _arrays()
    gx, gw = jax.grad(lambda a, b: jnp.sum(transposed_input_dense(a, b) * ct), (0, 1))(x, w)
    x2, ct2 = x.reshape(-1, 6).astype(np.float64), ct.reshape(-1, 9).astype(np.float64)
    np.testing.assert_allclose(np.asarray(gw), x2.T @ ct2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), ct @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    y = transposed_input_dense(x, w)
    np.testing.assert_allclose(np.asarray(y), x @ w, rtol=1e-5, atol=1e-5)


def test_forward_mode_in_either_argument():
    """jax.jvp works (the ODE likelihood's divergence is forward mode in the input, with the
    kernel's tangent a symbolic zero) and equals x' W + x W'."""
    x, w, _ = _arrays(seed=1)
    dx, dw, _ = _arrays(seed=2)
    for tangents, want in (
        ((dx, np.zeros_like(w)), dx @ w),
        ((np.zeros_like(x), dw), x @ dw),
        ((dx, dw), dx @ w + x @ dw),
    ):
        _, tangent = jax.jvp(transposed_input_dense, (x, w), tangents)
        np.testing.assert_allclose(np.asarray(tangent), want, rtol=1e-5, atol=1e-5)
    # the input alone, the kernel closed over: its tangent never enters
    _, tangent = jax.jvp(lambda a: transposed_input_dense(a, w), (x,), (dx,))
    np.testing.assert_allclose(np.asarray(tangent), dx @ w, rtol=1e-5, atol=1e-5)


def _dots(hlo: str) -> list[tuple[str, str]]:
    """(output shape, lhs contracting dims) of every dot in an optimised HLO module."""
    return re.findall(r"= f32\[([\d,]*)\]\S* dot\(.*?lhs_contracting_dims=\{([\d,]*)\}", hlo)


def test_cpu_kernel_gradient_is_a_row_major_product():
    """Compiled for this CPU, the kernel gradient of a Din < Dout layer contracts the LAST
    dimension of a (Din, M) left operand ("transposed_input") where autodiff of the plain product
    contracts the rows, dimension 0 ("xla"): the form XLA's CPU GEMMs take without a copy."""
    x, w, ct = _arrays(din=32, dout=96)
    x = np.tile(x, (1, 20, 1))  # M = 200 rows
    ct = np.tile(ct, (1, 20, 1))

    def grad_w(dot_general):
        dg = dot_general or jax.lax.dot_general
        # x and ct as arguments: as constants, XLA would fold the whole gradient away
        return jax.jit(jax.grad(lambda b, a, c: jnp.sum(dg(a, b, DIMS) * c)))

    def compiled(impl):
        return grad_w(dot_general_for(impl)).lower(w, x, ct).compile().as_text()

    xla, ours = _dots(compiled("xla")), _dots(compiled("transposed_input"))
    assert ("32,96", "0") in xla  # autodiff: rows contracted as dimension 0 of both operands
    assert ("32,96", "1") in ours and ("32,96", "0") not in ours


def test_only_layers_narrower_in_than_out_change():
    """ "transposed_input" routes a product through the hand-written JVP only where Din < Dout and
    the call is a dense layer's; everything else is lax.dot_general itself (same jaxpr)."""
    dg = dot_general_for("transposed_input")
    x, w, _ = _arrays(din=6, dout=9)
    assert "custom_jvp_call" in str(jax.make_jaxpr(lambda a, b: dg(a, b, DIMS))(x, w))
    for kernel in (jnp.ones((6, 6)), jnp.ones((6, 3))):  # Din == Dout, Din > Dout
        jaxpr = str(jax.make_jaxpr(lambda a, b: dg(a, b, DIMS))(x, kernel))
        assert "custom_jvp_call" not in jaxpr and "dot_general" in jaxpr
    batched = (((2,), (1,)), ((0,), (0,)))  # a batched product is never a dense layer's
    jaxpr = str(jax.make_jaxpr(lambda a, bb: dg(a, bb, batched))(x, jnp.ones((2, 6, 9))))
    assert "custom_jvp_call" not in jaxpr


@pytest.mark.parametrize(
    "platform, want",
    [("cpu", "transposed_input"), ("gpu", "xla"), ("cuda", "xla"), ("tpu", "xla")],
)
def test_platform_defaults(platform, want):
    assert resolve_impl(None, platform) == want
    assert resolve_impl("xla", platform) == "xla"  # an explicit choice is kept
    assert create_model("SiT-S/2", platform=platform).dense_impl == want


def test_unknown_implementation_is_named():
    with pytest.raises(ValueError, match=r"dense_impl='fast'.*None picks"):
        resolve_impl("fast")


def test_model_outputs_and_gradients_equal_across_implementations():
    """Whole DiT (the layers with Din < Dout take the hand-written JVP),
    re-randomised weights: the output is bit-identical and every parameter gradient equals
    autodiff of the plain products to float32 rounding."""
    ours, xla = (tiny_model(dense_impl=impl) for impl in ("transposed_input", "xla"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 3)), jnp.float32)
    t = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    y = jnp.asarray([0, 3, 4], jnp.int32)
    params = rerandomize(init_params(xla))

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2)

    out_ours = ours.apply({"params": params}, x, t, y)
    out_xla = xla.apply({"params": params}, x, t, y)
    np.testing.assert_array_equal(np.asarray(out_ours), np.asarray(out_xla))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(ours)))(params))
    # in each of 2 blocks adaLN (32 -> 192), qkv (32 -> 96) and fc1 (32 -> 128), and the final
    # layer's adaLN (32 -> 64); not t_embedder.mlp_0 (256 -> 32) or the 32 -> 32 ones
    assert jaxpr.count("optimization_barrier") == 7
    (l_o, g_o), (l_x, g_x) = (jax.value_and_grad(loss(m))(params) for m in (ours, xla))
    assert float(l_x) > 1.0
    np.testing.assert_allclose(float(l_o), float(l_x), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_o), jax.tree.leaves(g_x), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert float(np.abs(a - b).max()) <= 1e-5 * float(np.abs(b).max())
