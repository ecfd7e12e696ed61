"""Scaled dot-product attention for the DiT/SiT blocks, and which implementation a platform gets.

Layout: the qkv projection's output as one packed array ``(N, T, 3, heads, head_dim)`` (timm's
``Attention``: rows [q; k; v], head-major, what the DiT/SiT releases use); the output is
``(N, T, heads, head_dim)`` as ``jax.nn.dot_product_attention``'s. No mask, no bias, scale
``head_dim ** -0.5``.

Implementations (``config.model.attention_impl``):
- ``"explicit"``: `explicit_attention` below: head-major batched matmuls and a hand-written VJP
  that keeps the softmax probabilities P and the output O and forms the softmax backward with
  ``rowsum(dO * O)`` (head_dim terms per row) instead of ``rowsum(dP * P)`` (T terms per row), the
  identity flash attention's backward uses. On one CPU thread, forward + backward of one SiT-S/2
  attention (batch 8, 256 tokens) take 26 ms against 69 ms for XLA's autodiff of
  ``jax.nn.dot_product_attention``, and the whole train step is ~1.1x faster (docs/benchmarks.md,
  ``benchmarks/vs_pytorch.py --part train --attention default,xla``).
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

IMPLEMENTATIONS = (None, "explicit", "xla", "cudnn")
_PLATFORM_DEFAULT = {"cpu": "explicit"}


def default_impl(platform: str) -> str:
    """The implementation ``attention_impl=None`` resolves to on ``platform`` ("cpu", "gpu",
    "tpu", ...)."""
    return _PLATFORM_DEFAULT.get(platform, "xla")


def resolve_impl(implementation: str | None, platform: str | None = None) -> str:
    """``implementation`` itself, or for None the default of ``platform`` (default: the backend
    jax runs on). Unknown names raise a ValueError naming the choices."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention_impl={implementation!r} is not one of {IMPLEMENTATIONS}; "
            "None picks the platform's default."
        )
    if implementation is None:
        return default_impl(platform or jax.default_backend())
    return implementation


def _head_major(a):
    """(N, T, heads, head_dim) <-> (N, heads, T, head_dim)."""
    return jnp.swapaxes(a, 1, 2)


def _forward(qkv):
    """Head-major attention of packed ``qkv``; returns O (N, heads, T, hd) and the backward's
    residuals."""
    h = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # (3, N, heads, T, hd): one copy for q, k and v
    qh = h[0] * jnp.asarray(qkv.shape[-1] ** -0.5, qkv.dtype)
    kh, vh = h[1], h[2]
    logits = jnp.einsum("bnth,bnsh->bnts", qh, kh, preferred_element_type=jnp.float32)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = (e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))).astype(qkv.dtype)
    o = jnp.einsum("bnts,bnsh->bnth", p, vh)
    return o, (qh, kh, vh, p, o)


@jax.custom_vjp
def explicit_attention(qkv):
    """softmax(q k^T / sqrt(head_dim)) v for packed ``qkv`` (N, T, 3, heads, head_dim) (the
    qkv projection's output reshaped, timm's [q; k; v] order) -> (N, T, heads, head_dim).

    Forward: one transpose to head-major for q, k and v together, the scale folded into q (T x hd
    multiplies instead of T x T), the softmax's divide as one reciprocal per row, logits and
    softmax in float32 whatever the input dtype. Backward (the custom VJP): dV = P^T dO,
    dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D), dQ = dS K / sqrt(hd),
    dK = dS^T Q / sqrt(hd), written back to the packed layout in one transpose. Equal to autodiff
    of the forward up to rounding (``tests/test_attention.py``)."""
    return _head_major(_forward(qkv)[0])


def _explicit_fwd(qkv):
    o, residuals = _forward(qkv)
    return _head_major(o), residuals


def _explicit_bwd(residuals, d_out):
    qh, kh, vh, p, o = residuals  # qh already carries the scale
    f32 = jnp.float32
    do = _head_major(d_out)
    dv = jnp.einsum("bnts,bnth->bnsh", p, do)
    dp = jnp.einsum("bnth,bnsh->bnts", do, vh, preferred_element_type=f32)
    d = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)
    ds = (p.astype(f32) * (dp - d)).astype(qh.dtype)
    dq = jnp.einsum("bnts,bnsh->bnth", ds, kh) * jnp.asarray(qh.shape[-1] ** -0.5, qh.dtype)
    dk = jnp.einsum("bnts,bnth->bnsh", ds, qh)
    return (jnp.transpose(jnp.stack([dq, dk, dv]), (1, 3, 0, 2, 4)),)


explicit_attention.defvjp(_explicit_fwd, _explicit_bwd)


def attention(qkv, implementation: str | None = None):
    """Self-attention of packed ``qkv`` (N, T, 3, heads, head_dim) -> (N, T, heads, head_dim)
    with ``implementation`` (see the module docstring; None: the platform's default)."""
    impl = resolve_impl(implementation)
    if impl == "explicit":
        return explicit_attention(qkv)
    q, k, v = (qkv[:, :, i] for i in range(3))
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
