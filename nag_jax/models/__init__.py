"""DiT/SiT backbone, embeddings and the size registry."""

from __future__ import annotations

import jax.numpy as jnp

from nag_jax.models.attention import resolve_impl
from nag_jax.models.dit import DiT, unpatchify
from nag_jax.models.embeddings import get_2d_sincos_pos_embed, timestep_embedding
from nag_jax.models.linear import resolve_impl as resolve_dense_impl
from nag_jax.models.registry import MODEL_SIZES, PATCH_SIZES, model_names, parse_model_name

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype):
    """'bfloat16' / jnp.bfloat16 -> jnp dtype; raises naming the valid choices."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; choose one of {tuple(_DTYPES)}")
        return _DTYPES[dtype]
    return dtype


def create_model(
    name: str,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    null_noise: str = "learned",
    dtype="float32",
    attention_impl: str | None = None,
    dense_impl: str | None = None,
    remat: bool = False,
    hidden_size: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    patch_size: int | None = None,
    mlp_ratio: float = 4.0,
    platform: str | None = None,
) -> DiT:
    """Builds the backbone for a registered name such as ``"SiT-XL/2"``.

    ``hidden_size``, ``depth``, ``num_heads`` and ``patch_size`` override the registry (tiny
    models for tests and the built-in demo). Impossible combinations raise a ValueError that names
    the values. ``attention_impl=None`` is resolved here to the default of ``platform`` (the
    platform the model will run on; default: jax's backend), see
    `nag_jax.models.attention.default_impl` (CPU "explicit", GPU/TPU "xla"), and so is
    ``dense_impl=None`` (`nag_jax.models.linear`: CPU "transposed_input", GPU/TPU "xla"): an
    ahead-of-time compile for a TPU from a CPU machine passes ``platform="tpu"``.
    """
    _, size, patch = parse_model_name(name)
    dims = dict(MODEL_SIZES[size])
    for key, value in (("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)):
        if value is not None:
            dims[key] = int(value)
    patch = int(patch_size) if patch_size is not None else patch
    if input_size % patch:
        raise ValueError(
            f"input_size {input_size} is not divisible by patch size {patch} ({name}); "
            "pick a patch size that divides the input."
        )
    if dims["hidden_size"] % dims["num_heads"]:
        raise ValueError(
            f"hidden_size {dims['hidden_size']} is not divisible by num_heads {dims['num_heads']}."
        )
    if dims["hidden_size"] % 4:
        raise ValueError(f"hidden_size {dims['hidden_size']} must be divisible by 4 (2-D sin-cos).")
    if null_noise not in ("learned", "zero"):
        raise ValueError(f"null_noise must be 'learned' or 'zero', got {null_noise!r}")
    return DiT(
        input_size=input_size,
        patch_size=patch,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        null_noise=null_noise,
        dtype=resolve_dtype(dtype),
        attention_impl=resolve_impl(attention_impl, platform),
        dense_impl=resolve_dense_impl(dense_impl, platform),
        remat=remat,
        mlp_ratio=mlp_ratio,
        **dims,
    )


__all__ = [
    "DiT",
    "MODEL_SIZES",
    "PATCH_SIZES",
    "create_model",
    "get_2d_sincos_pos_embed",
    "model_names",
    "parse_model_name",
    "resolve_dtype",
    "timestep_embedding",
    "unpatchify",
]
