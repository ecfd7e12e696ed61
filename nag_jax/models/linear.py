"""The backbone's dense layers' products, and which implementation a platform gets.

A dense layer maps (..., Din) inputs x with a (Din, Dout) kernel W to (..., Dout). Its forward
product and its input gradient dx = dy W^T are the same in every implementation; they differ in
the kernel gradient dW = x^T dy, a sum over the M = prod(...) rows.

Implementations (``config.model.dense_impl``):
- ``"xla"``: flax's ``lax.dot_general``. Autodiff forms dW as a product contracting the rows of
  both x and dy (dimension 0 of each), which XLA's CPU backend cannot give its YNNPACK GEMMs
  (they take the contracted dimension last in a row-major left operand): it runs the product
  through Eigen and first copies dy transposed, (Dout, M), a 9-12 MB copy per layer for SiT-S/2
  at batch 8.
- ``"transposed_input"``: where the input is narrower than the output (Din < Dout: the blocks'
  qkv, fc1 and adaLN modulation, the final layer's adaLN modulation, and the timestep MLP's first
  layer where D > 256), a hand-written JVP keeps x^T, (Din, M), as a
  materialised row-major array behind an ``optimization_barrier``, so that the kernel gradient
  JAX derives from it is the row-major product x^T dy that YNNPACK takes, and the copy made is of
  the narrower x. Other layers, and products that are not a dense layer's, are "xla"'s. The
  forward pass outside differentiation, and so the sampler, is "xla"'s exactly; the gradients
  equal "xla"'s to float32 rounding (tests/test_linear.py). A JVP rather than a VJP, so forward
  mode (the ODE likelihood's divergence) still works. On one CPU thread the SiT-S/2 train step
  at batch 8 ran 1.05-1.09x faster; for SiT-B/2 and the demo the gain is within the noise
  (docs/benchmarks.md).
- ``None``: the platform's default: CPU "transposed_input"; GPU and TPU "xla" (their compilers
  pick their own layouts, and a barrier would only stop a fusion there).
"""

from __future__ import annotations

import jax
from jax import lax
from jax.custom_derivatives import SymbolicZero

from nag_jax.models import platforms

IMPLEMENTATIONS = (None, "transposed_input", "xla")
_PLATFORM_DEFAULT = {"cpu": "transposed_input"}


def resolve_impl(implementation: str | None, platform: str | None = None) -> str:
    """``implementation`` itself, or for None the default of ``platform`` (default: the backend
    jax runs on; CPU "transposed_input", else "xla"). Unknown names raise a ValueError naming the
    choices."""
    return platforms.resolve(
        "dense_impl", implementation, IMPLEMENTATIONS, _PLATFORM_DEFAULT, "xla", platform
    )


def _dense_dims(ndim: int):
    """A dense layer's dimension numbers: the input's last axis against the kernel's first."""
    return (((ndim - 1,), (0,)), ((), ()))


@jax.custom_jvp
def transposed_input_dense(x, kernel):
    """``x @ kernel`` for x (..., Din) and kernel (Din, Dout) -> (..., Dout); under
    differentiation the kernel's tangent enters through x^T, (Din, M), materialised (see the
    module docstring)."""
    return lax.dot_general(x, kernel, _dense_dims(x.ndim))


def _transposed_input_jvp(primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = transposed_input_dense(x, kernel)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(lax.dot_general(dx, kernel, _dense_dims(x.ndim)))
    if not isinstance(dkernel, SymbolicZero):
        xt = lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # (Din, M), row-major
        # (Din, M) contracted with (Din, Dout) over Din: the transpose of this map in dkernel is
        # xt @ dy, a row-major (Din, M) x (M, Dout) product.
        terms.append(lax.dot_general(xt, dkernel, (((0,), (0,)), ((), ()))).reshape(y.shape))
    dy = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return y, dy


transposed_input_dense.defjvp(_transposed_input_jvp, symbolic_zeros=True)


def _transposed_input_dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None
):
    """``lax.dot_general``'s signature: `transposed_input_dense` for a dense product whose input
    is narrower than its output, ``lax.dot_general`` for anything else."""
    dense = (
        rhs.ndim == 2
        and lhs.ndim >= 2
        and tuple(map(tuple, dimension_numbers[0])) == ((lhs.ndim - 1,), (0,))
        and not any(dimension_numbers[1])
        and rhs.shape[0] < rhs.shape[1]
        and precision is None
        and preferred_element_type is None
    )
    if dense:
        return transposed_input_dense(lhs, rhs)
    return lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def dot_general_for(implementation: str | None):
    """The ``dot_general`` a ``flax.linen.Dense`` gets for ``implementation`` (None: the default
    of jax's backend): None, flax's own ``lax.dot_general``, for "xla"; for "transposed_input"
    `_transposed_input_dot_general`."""
    if resolve_impl(implementation) == "xla":
        return None
    return _transposed_input_dot_general
