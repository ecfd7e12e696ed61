"""Which implementation of a layer a platform gets: one rule for ``model.attention_impl``
(nag_jax.models.attention) and ``model.dense_impl`` (nag_jax.models.linear).

A layer's option takes a name from its ``implementations`` (None among them) and None resolves
to the platform's default: the layer's ``by_platform`` entry, else its ``fallback``. The CPU
defaults were measured on this project's CPU (docs/benchmarks.md); GPU and TPU keep XLA's own
lowering until the accelerator check has timed the alternatives there.
"""

from __future__ import annotations

import jax


def resolve(
    option: str,
    implementation: str | None,
    implementations: tuple,
    by_platform: dict[str, str],
    fallback: str,
    platform: str | None = None,
) -> str:
    """``implementation`` itself, or for None the default of ``platform`` (default: the backend
    jax runs on). A name not in ``implementations`` raises a ValueError naming ``option``, the
    value and the choices."""
    if implementation not in implementations:
        raise ValueError(
            f"{option}={implementation!r} is not one of {implementations}; "
            "None picks the platform's default."
        )
    if implementation is None:
        return by_platform.get(platform or jax.default_backend(), fallback)
    return implementation
