"""nag_jax.models.attention: the explicit attention (custom VJP) against independent references,
and which implementation each platform gets.

References: a float64 numpy softmax attention written here (forward), and autodiff of
``jax.nn.dot_product_attention`` (XLA's own attention, a separate implementation) for the
gradients. The model-level check compares whole DiT outputs and gradients of the two
implementations on re-randomised weights (fresh DiT weights output exactly zero)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.models import create_model
from nag_jax.models.attention import attention, default_impl, explicit_attention, resolve_impl

N, T, HEADS, HD = 2, 10, 3, 8


def _qkv(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((N, T, 3, HEADS, HD)).astype(dtype)


def _numpy_attention(qkv):
    """float64 softmax(q k^T / sqrt(hd)) v per example and head, from the definition."""
    qkv = qkv.astype(np.float64)
    out = np.zeros((N, T, HEADS, HD))
    for b in range(N):
        for h in range(HEADS):
            q, k, v = qkv[b, :, 0, h], qkv[b, :, 1, h], qkv[b, :, 2, h]
            s = q @ k.T / np.sqrt(HD)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[b, :, h] = p @ v
    return out


def test_forward_matches_the_definition():
    qkv = _qkv()
    got = np.asarray(explicit_attention(jnp.asarray(qkv)))
    np.testing.assert_allclose(got, _numpy_attention(qkv), rtol=0, atol=2e-6)


def test_gradient_matches_autodiff_of_xla_attention():
    qkv = jnp.asarray(_qkv(1))
    g = jnp.asarray(np.random.default_rng(2).standard_normal((N, T, HEADS, HD)), jnp.float32)

    def xla(a):
        return jax.nn.dot_product_attention(a[:, :, 0], a[:, :, 1], a[:, :, 2])

    _, vjp_ref = jax.vjp(xla, qkv)
    _, vjp = jax.vjp(explicit_attention, qkv)
    (want,), (got,) = vjp_ref(g), vjp(g)
    assert got.shape == qkv.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5)
    # every block of the packed gradient is non-trivial: q, k and v rows are all reached
    for i in range(3):
        assert float(jnp.abs(got[:, :, i]).max()) > 1e-3


def test_bfloat16_inputs_give_bfloat16_out_close_to_float32():
    qkv = _qkv(3)
    got = explicit_attention(jnp.asarray(qkv, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), _numpy_attention(qkv), rtol=0, atol=5e-2
    )
    grad = jax.grad(lambda a: explicit_attention(a).astype(jnp.float32).sum())(
        jnp.asarray(qkv, jnp.bfloat16)
    )
    assert grad.dtype == jnp.bfloat16 and bool(jnp.isfinite(grad.astype(jnp.float32)).all())


@pytest.mark.parametrize(
    "platform, want", [("cpu", "explicit"), ("gpu", "xla"), ("cuda", "xla"), ("tpu", "xla")]
)
def test_platform_defaults(platform, want):
    assert default_impl(platform) == want
    assert resolve_impl(None, platform) == want
    assert resolve_impl("cudnn", platform) == "cudnn"  # an explicit choice is kept


def test_unknown_implementation_is_named():
    with pytest.raises(ValueError, match=r"attention_impl='flash'.*None picks"):
        resolve_impl("flash")
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        attention(jnp.zeros((1, 2, 3, 1, 4)), "flash")


def test_create_model_resolves_none_for_the_target_platform():
    assert create_model("SiT-S/2", platform="cpu").attention_impl == "explicit"
    assert create_model("SiT-S/2", platform="tpu").attention_impl == "xla"
    assert create_model("SiT-S/2", attention_impl="xla", platform="cpu").attention_impl == "xla"


def test_model_outputs_and_gradients_equal_across_implementations():
    """Whole DiT, re-randomised weights: "explicit" and "xla" agree in output and in every
    parameter gradient."""
    kw = dict(input_size=8, in_channels=4, num_classes=5, hidden_size=32, depth=2, num_heads=4)
    m_exp = create_model("SiT-S/2", attention_impl="explicit", **kw)
    m_xla = create_model("SiT-S/2", attention_impl="xla", **kw)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32)
    t = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    y = jnp.asarray([0, 3, 4], jnp.int32)
    params = m_exp.init(jax.random.key(0), x, t, y)["params"]
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    params = jax.tree.map(lambda p: 0.2 * jax.random.normal(next(keys), p.shape, p.dtype), params)

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2)

    (l_e, g_e), (l_x, g_x) = (jax.value_and_grad(loss(m))(params) for m in (m_exp, m_xla))
    assert float(l_x) > 1.0  # re-randomised: not the all-zero output of fresh weights
    np.testing.assert_allclose(float(l_e), float(l_x), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_e), jax.tree.leaves(g_x), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        scale = float(np.abs(b).max())  # 0 for the unused null-noise token
        # float32 rounding relative to the leaf's largest entry (gradients reach ~1e2 here)
        assert float(np.abs(a - b).max()) <= 1e-5 * scale


def test_forward_mode_matches_xla_attention():
    """jax.jvp works (the ODE likelihood's divergence needs forward mode; a custom VJP would
    refuse it) and its tangent equals forward-mode autodiff of XLA's attention."""
    qkv = jnp.asarray(_qkv(4))
    d = jnp.asarray(np.random.default_rng(5).standard_normal(qkv.shape), jnp.float32)

    def xla(a):
        return jax.nn.dot_product_attention(a[:, :, 0], a[:, :, 1], a[:, :, 2])

    out, tangent = jax.jvp(explicit_attention, (qkv,), (d,))
    out_ref, tangent_ref = jax.jvp(xla, (qkv,), (d,))
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(tangent_ref), rtol=0, atol=2e-5)
    assert float(jnp.abs(tangent).max()) > 1e-2
