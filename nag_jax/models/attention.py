"""Scaled dot-product attention for the DiT/SiT blocks, and which implementation a platform gets.

Layout: the qkv projection's output as one packed array ``(N, T, 3, heads, head_dim)`` (timm's
``Attention``: rows [q; k; v], head-major, what the DiT/SiT releases use); the output is
``(N, T, heads, head_dim)`` as ``jax.nn.dot_product_attention``'s. No mask, no bias, scale
``head_dim ** -0.5``.

Implementations (``config.model.attention_impl``):
- ``"explicit"``: `explicit_attention` below: head-major batched matmuls and a hand-written JVP
  whose transpose keeps the softmax probabilities P and the output O and forms the backward with
  ``rowsum(dO * O)`` (head_dim terms per row) instead of ``rowsum(dP * P)`` (T terms per row), the
  identity flash attention's backward uses. One thread, one SiT-S/2 attention op (batch 8, 256
  tokens) forward + backward: 31 ms against 49 ms for XLA's autodiff of
  ``jax.nn.dot_product_attention`` (torch's fused SDPA: 19 ms); ``benchmarks/vs_pytorch.py --part
  attention``. The whole train step: docs/benchmarks.md.
- ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")``.
- ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, fp16/bf16).
- ``None``: the platform's default, `default_impl`: CPU "explicit"; GPU and TPU "xla", whose
  fusions there are XLA's own business and were not measured against "explicit" (no accelerator
  was available to this project when it was written; ``benchmarks/accelerator_check.py`` times
  both on the first GPU run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.models import platforms

IMPLEMENTATIONS = (None, "explicit", "xla", "cudnn")
_PLATFORM_DEFAULT = {"cpu": "explicit"}


def default_impl(platform: str) -> str:
    """The implementation ``attention_impl=None`` resolves to on ``platform`` ("cpu", "gpu",
    "tpu", ...)."""
    return resolve_impl(None, platform)


def resolve_impl(implementation: str | None, platform: str | None = None) -> str:
    """``implementation`` itself, or for None the default of ``platform`` (default: the backend
    jax runs on). Unknown names raise a ValueError naming the choices."""
    return platforms.resolve(
        "attention_impl", implementation, IMPLEMENTATIONS, _PLATFORM_DEFAULT, "xla", platform
    )


def _head_major(a):
    """(N, T, heads, head_dim) <-> (N, heads, T, head_dim)."""
    return jnp.swapaxes(a, 1, 2)


def _split_head_major(qkv):
    """Packed (N, T, 3, heads, hd) -> q / sqrt(hd), k, v, each (N, heads, T, hd), through one
    transpose. Linear, so it maps the tangent of ``qkv`` the same way."""
    h = jnp.transpose(qkv, (2, 0, 3, 1, 4))
    return h[0] * jnp.asarray(qkv.shape[-1] ** -0.5, qkv.dtype), h[1], h[2]


def _forward(qkv):
    """Head-major attention of packed ``qkv``: O (N, heads, T, hd), and the scaled q, k, v and
    the softmax probabilities P that the JVP reuses."""
    qh, kh, vh = _split_head_major(qkv)
    logits = jnp.einsum("bnth,bnsh->bnts", qh, kh, preferred_element_type=jnp.float32)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = (e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))).astype(qkv.dtype)
    return jnp.einsum("bnts,bnsh->bnth", p, vh), (qh, kh, vh, p)


@jax.custom_jvp
def explicit_attention(qkv):
    """softmax(q k^T / sqrt(head_dim)) v for packed ``qkv`` (N, T, 3, heads, head_dim) (the
    qkv projection's output reshaped, timm's [q; k; v] order) -> (N, T, heads, head_dim).

    Forward: one transpose to head-major for q, k and v together, the scale folded into q (T x hd
    multiplies instead of T x T), the softmax's divide as one reciprocal per row, logits and
    softmax in float32 whatever the input dtype.

    Derivatives: a custom JVP (so forward mode works too: the likelihood's divergence) written so
    that its transpose, the backward pass, is flash attention's. With dS = dQ K^T + Q dK^T
    (scaled) and c = rowsum(P * dS), the tangent is dO = P dV + (P * dS) V - c * O (P V = O).
    Transposed: dV = P^T dO, dS = P * (dO V^T - D) with D = rowsum(dO * O) over head_dim terms
    (instead of rowsum(dP * P) over T), dQ = dS K / sqrt(hd), dK = dS^T Q / sqrt(hd). Equal to
    autodiff of XLA's attention up to rounding (``tests/test_attention.py``)."""
    return _head_major(_forward(qkv)[0])


@explicit_attention.defjvp
def _explicit_jvp(primals, tangents):
    (qkv,), (d_qkv,) = primals, tangents
    o, (qh, kh, vh, p) = _forward(qkv)
    f32 = jnp.float32
    dq, dk, dv = _split_head_major(d_qkv)
    ds = jnp.einsum("bnth,bnsh->bnts", dq, kh, preferred_element_type=f32) + jnp.einsum(
        "bnth,bnsh->bnts", qh, dk, preferred_element_type=f32
    )
    pds = p.astype(f32) * ds
    c = jnp.sum(pds, axis=-1, keepdims=True)
    d_o = (
        jnp.einsum("bnts,bnsh->bnth", p, dv)
        + jnp.einsum("bnts,bnsh->bnth", pds.astype(qkv.dtype), vh)
        - (c * o.astype(f32)).astype(qkv.dtype)
    )
    return _head_major(o), _head_major(d_o)


def attention(qkv, implementation: str | None = None):
    """Self-attention of packed ``qkv`` (N, T, 3, heads, head_dim) -> (N, T, heads, head_dim)
    with ``implementation`` (see the module docstring; None: the platform's default)."""
    impl = resolve_impl(implementation)
    if impl == "explicit":
        return explicit_attention(qkv)
    q, k, v = (qkv[:, :, i] for i in range(3))
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
