"""Shared pieces of the DiT/SiT converters: the key table and architecture inference.

The PyTorch <-> Flax key table (the releases' names on the left; Dense kernels are ``weight.T``,
the patch conv goes OIHW -> HWIO):

    x_embedder.proj.weight (D,C,p,p)          x_embedder/proj/kernel (p,p,C,D)
    x_embedder.proj.bias                      x_embedder/proj/bias
    t_embedder.mlp.{0,2}.weight / .bias       t_embedder/mlp_{0,2}/kernel / bias
    y_embedder.embedding_table.weight         y_embedder/embedding_table/embedding
    blocks.{i}.attn.{qkv,proj}.*              blocks_{i}/attn/{qkv,proj}/*
    blocks.{i}.mlp.{fc1,fc2}.*                blocks_{i}/mlp/{fc1,fc2}/*
    blocks.{i}.adaLN_modulation.1.*           blocks_{i}/adaLN_modulation_1/*
    final_layer.linear.*                      final_layer/linear/*
    final_layer.adaLN_modulation.1.*          final_layer/adaLN_modulation_1/*
    null_noise_token (D,)                     null_noise_token (D,)     (NAG; not in the releases)
    pos_embed (1, T, D)                       -- not a parameter: checked on import against
                                                 the sin-cos the JAX model computes; re-created
                                                 on export

Null noise token rule: a checkpoint that has ``null_noise_token`` (shape (D,)) carries it both
ways; a release checkpoint has none, and the converter never invents one (a learned token is
created by fine-tuning; ``null_noise="learned"`` on a source without it is an error that says so).

Converted checkpoint layout (an Orbax composite checkpoint, one directory, written and read by
``nag_jax.storage.weights.save_params`` / ``load_params``):
    DEST/params      the Flax params tree (StandardCheckpointHandler), float32
    DEST/metadata    JSON: family, model, input_size, in_channels, num_classes, learn_sigma,
                     hidden_size, depth, num_heads, patch_size, null_noise, source, sha256, ...
                     (:meth:`Architecture.metadata` plus the source's facts)
Time conventions do not enter here (weights only); see nag_jax.models.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from nag_jax.convert.torch_io import torch_load_error  # noqa: F401 - convert.vae uses it here
from nag_jax.storage.weights import CheckpointError

POS_EMBED_ATOL = 1e-5  # beyond this the checkpoint's pos_embed is not the releases' sin-cos


# Bad input for a conversion: the message names the value, what was expected, and the fix. One
# error type for all weights I/O (the runtime loader raises it too).
ConversionError = CheckpointError


# ----------------------------------------------------------------------------------------------
# Architecture


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything the key table and ``create_model`` need, inferred from shapes."""

    family: str  # "DiT" | "SiT"
    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int
    in_channels: int
    out_channels: int
    num_classes: int
    input_size: int  # latent/pixel side length (H = W)
    mlp_hidden: int
    null_noise_token: bool = False

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def size_name(self) -> str | None:
        from nag_jax.models.registry import MODEL_SIZES

        for name, s in MODEL_SIZES.items():
            if (s["depth"], s["hidden_size"], s["num_heads"]) == (
                self.depth,
                self.hidden_size,
                self.num_heads,
            ):
                return name
        return None

    @property
    def model_name(self) -> str:
        """Registry name, e.g. "SiT-XL/2". Custom widths (tiny test models) get the "S" name of
        their family/patch; their real dims are the overrides of :meth:`create_model_kwargs`."""
        return f"{self.family}-{self.size_name or 'S'}/{self.patch_size}"

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    def create_model_kwargs(self) -> dict:
        """Keyword arguments for ``nag_jax.models.create_model`` (besides the name)."""
        return dict(
            input_size=self.input_size,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            learn_sigma=self.learn_sigma,
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
        )

    def metadata(self) -> dict:
        return dict(
            family=self.family,
            model=self.model_name,
            custom_size=self.size_name is None,
            input_size=self.input_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            num_classes=self.num_classes,
            learn_sigma=self.learn_sigma,
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            mlp_hidden=self.mlp_hidden,
            null_noise="learned" if self.null_noise_token else None,
        )

    @classmethod
    def from_metadata(cls, meta: Mapping) -> Architecture:
        try:
            return cls(
                family=meta["family"],
                hidden_size=int(meta["hidden_size"]),
                depth=int(meta["depth"]),
                num_heads=int(meta["num_heads"]),
                patch_size=int(meta["patch_size"]),
                in_channels=int(meta["in_channels"]),
                out_channels=int(
                    meta.get("out_channels")
                    or meta["in_channels"] * (2 if meta["learn_sigma"] else 1)
                ),
                num_classes=int(meta["num_classes"]),
                input_size=int(meta["input_size"]),
                mlp_hidden=int(meta.get("mlp_hidden") or 4 * meta["hidden_size"]),
                null_noise_token=meta.get("null_noise") == "learned",
            )
        except KeyError as e:
            raise ConversionError(
                f"checkpoint metadata lacks {e}; expected the fields written by "
                "nag_jax.convert (family, hidden_size, depth, ...). Re-convert the checkpoint."
            ) from None


def create_model_from_metadata(meta: Mapping, **kwargs):
    """``nag_jax.models.create_model`` for a converted checkpoint's metadata.

    kwargs override (dtype, attention_impl, dense_impl, remat, null_noise, ...). null_noise
    defaults to "learned" when the checkpoint has the token and "zero" otherwise (a release
    checkpoint has none; fine-tuning with null_noise="learned" adds it).
    """
    from nag_jax.models import create_model

    arch = Architecture.from_metadata(meta)
    kw = arch.create_model_kwargs()
    kw["mlp_ratio"] = arch.mlp_hidden / arch.hidden_size
    kw["null_noise"] = "learned" if arch.null_noise_token else "zero"
    kw.update(kwargs)
    return create_model(meta["model"], **kw)


def torch_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The releases' state-dict keys -> shapes for ``arch`` (pos_embed and the optional
    null_noise_token included)."""
    d, c, p = arch.hidden_size, arch.in_channels, arch.patch_size
    s = {
        "pos_embed": (1, arch.grid * arch.grid, d),
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (arch.num_classes + 1, d),
    }
    for i in range(arch.depth):
        b = f"blocks.{i}."
        s[b + "attn.qkv.weight"] = (3 * d, d)
        s[b + "attn.qkv.bias"] = (3 * d,)
        s[b + "attn.proj.weight"] = (d, d)
        s[b + "attn.proj.bias"] = (d,)
        s[b + "mlp.fc1.weight"] = (arch.mlp_hidden, d)
        s[b + "mlp.fc1.bias"] = (arch.mlp_hidden,)
        s[b + "mlp.fc2.weight"] = (d, arch.mlp_hidden)
        s[b + "mlp.fc2.bias"] = (d,)
        s[b + "adaLN_modulation.1.weight"] = (6 * d, d)
        s[b + "adaLN_modulation.1.bias"] = (6 * d,)
    s["final_layer.linear.weight"] = (p * p * arch.out_channels, d)
    s["final_layer.linear.bias"] = (p * p * arch.out_channels,)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * d, d)
    s["final_layer.adaLN_modulation.1.bias"] = (2 * d,)
    if arch.null_noise_token:
        s["null_noise_token"] = (d,)
    return s


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def flax_path(torch_key: str) -> tuple[str, ...]:
    """``"blocks.3.adaLN_modulation.1.weight" -> ("blocks_3", "adaLN_modulation_1", "kernel")``."""
    k = _BLOCK_RE.sub(lambda m: f"blocks_{m[1]}.", torch_key)
    k = k.replace("mlp.0.", "mlp_0.").replace("mlp.2.", "mlp_2.")
    k = k.replace("adaLN_modulation.1.", "adaLN_modulation_1.")
    parts = k.split(".")
    if parts[-1] == "weight":
        parts[-1] = "embedding" if parts[-2] == "embedding_table" else "kernel"
    return tuple(parts)


def torch_key(path: tuple[str, ...]) -> str:
    """Inverse of :func:`flax_path`, e.g. ``("blocks_3", "mlp", "fc1", "kernel")`` ->
    ``"blocks.3.mlp.fc1.weight"``."""
    parts = list(path)
    if parts[-1] in ("kernel", "embedding"):
        parts[-1] = "weight"
    out = []
    for p in parts:
        m = re.fullmatch(r"(blocks|mlp|adaLN_modulation)_(\d+)", p)
        out.extend([m[1], m[2]] if m else [p])
    return ".".join(out)


def torch_shape(torch_key: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor for a Flax leaf (inverse of the :func:`to_flax` layouts)."""
    if torch_key == "x_embedder.proj.weight":
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if torch_key.endswith(".weight") and "embedding_table" not in torch_key:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def infer_architecture_from_params(
    params: Mapping, family: str, *, input_size: int, num_heads: int | None = None
) -> Architecture:
    """Architecture of a params tree without converter metadata (e.g. a training checkpoint).

    pos_embed is not a parameter, so ``input_size`` must be given; ``num_heads`` only for
    custom widths (registry sizes know their heads).
    """
    shapes = {
        torch_key(k): torch_shape(torch_key(k), tuple(np.shape(v)))
        for k, v in traverse_util.flatten_dict(params).items()
    }
    return infer_architecture(shapes, family, num_heads=num_heads, input_size=input_size)


def to_flax(torch_key: str, value: np.ndarray) -> np.ndarray:
    """Layout change torch -> Flax: conv OIHW -> HWIO, Linear (out, in) -> kernel (in, out)."""
    if torch_key == "x_embedder.proj.weight":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if torch_key.endswith(".weight") and "embedding_table" not in torch_key:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def to_torch_layout(torch_key: str, value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_flax`."""
    if torch_key == "x_embedder.proj.weight":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if torch_key.endswith(".weight") and "embedding_table" not in torch_key:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def infer_architecture(
    shapes: Mapping[str, tuple[int, ...]],
    family: str,
    *,
    num_heads: int | None = None,
    input_size: int | None = None,
) -> Architecture:
    """Reads the architecture from state-dict shapes (the releases' keys).

    Heads are not visible in shapes: they come from the size registry (hidden, depth) or from
    ``num_heads`` for custom widths. The input size comes from pos_embed (or ``input_size`` when a
    file has no pos_embed).
    """
    if family not in ("DiT", "SiT"):
        raise ConversionError(f"family {family!r} is not one of ('DiT', 'SiT'); pass --family.")
    need = ["x_embedder.proj.weight", "y_embedder.embedding_table.weight"]
    need += ["final_layer.linear.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"]
    missing = [k for k in need if k not in shapes]
    if missing:
        sample = ", ".join(sorted(shapes)[:8]) or "(no tensors)"
        raise ConversionError(
            f"not a DiT/SiT state dict: missing {missing}. First keys found: {sample}. "
            "Expected the releases' keys (x_embedder.proj.weight, blocks.0.attn.qkv.weight, ...)."
        )
    xw = tuple(shapes["x_embedder.proj.weight"])
    if len(xw) != 4 or xw[2] != xw[3]:
        raise ConversionError(f"x_embedder.proj.weight has shape {xw}; expected (D, C, p, p).")
    d, c, p = xw[0], xw[1], xw[2]
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in shapes:
        depth += 1
    final = tuple(shapes["final_layer.linear.weight"])
    out_c, rem = divmod(final[0], p * p)
    if rem or out_c not in (c, 2 * c):
        raise ConversionError(
            f"final_layer.linear.weight has shape {final}; expected (p*p*C or p*p*2C, D) = "
            f"({p * p * c} or {p * p * 2 * c}, {d}) for patch {p}, {c} input channels."
        )
    num_classes = tuple(shapes["y_embedder.embedding_table.weight"])[0] - 1
    if "pos_embed" in shapes:
        pe = tuple(shapes["pos_embed"])
        grid = int(round(pe[-2] ** 0.5)) if len(pe) == 3 else -1
        if len(pe) != 3 or grid * grid != pe[-2]:
            raise ConversionError(f"pos_embed has shape {pe}; expected (1, grid*grid, D).")
        inferred = grid * p
        if input_size is not None and input_size != inferred:
            raise ConversionError(
                f"input_size={input_size} but pos_embed {pe} implies {inferred} (grid {grid} x "
                f"patch {p}); drop --input-size or pick the right checkpoint."
            )
        input_size = inferred
    elif input_size is None:
        raise ConversionError("the state dict has no pos_embed; pass --input-size (e.g. 32).")
    if num_heads is None:
        from nag_jax.models.registry import MODEL_SIZES

        sizes = [
            s["num_heads"]
            for s in MODEL_SIZES.values()
            if (s["hidden_size"], s["depth"]) == (d, depth)
        ]
        if not sizes:
            raise ConversionError(
                f"hidden size {d} and depth {depth} match no registered size "
                f"{ {k: (v['depth'], v['hidden_size']) for k, v in MODEL_SIZES.items()} }; "
                "pass --num-heads for a custom width."
            )
        num_heads = sizes[0]
    if d % num_heads:
        raise ConversionError(f"hidden size {d} is not divisible by num_heads={num_heads}.")
    return Architecture(
        family=family,
        hidden_size=d,
        depth=depth,
        num_heads=num_heads,
        patch_size=p,
        in_channels=c,
        out_channels=out_c,
        num_classes=num_classes,
        input_size=input_size,
        mlp_hidden=tuple(shapes["blocks.0.mlp.fc1.weight"])[0],
        null_noise_token="null_noise_token" in shapes,
    )


def check_model_name(arch: Architecture, model: str) -> None:
    """Raises when an explicit ``--model`` disagrees with what the shapes say."""
    from nag_jax.models.registry import MODEL_SIZES, parse_model_name

    try:
        family, size, patch = parse_model_name(model)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    want = MODEL_SIZES[size]
    problems = []
    if family != arch.family:
        problems.append(f"family {family} vs --family {arch.family}")
    if patch != arch.patch_size:
        problems.append(f"patch {patch} vs {arch.patch_size} in x_embedder.proj.weight")
    if want["hidden_size"] != arch.hidden_size:
        problems.append(f"hidden size {want['hidden_size']} vs {arch.hidden_size}")
    if want["depth"] != arch.depth:
        problems.append(f"depth {want['depth']} vs {arch.depth} blocks")
    if problems:
        raise ConversionError(
            f"--model {model} does not match the checkpoint ({'; '.join(problems)}). The "
            f"checkpoint looks like {arch.model_name} (hidden {arch.hidden_size}, depth "
            f"{arch.depth}, patch {arch.patch_size}, input {arch.input_size}); pass that "
            "--model or omit it to infer."
        )


def check_keys(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]):
    """Strict key/shape check: raises listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    bad = sorted(
        f"{k}: got {tuple(shapes[k])}, expected {expected[k]}"
        for k in set(shapes) & set(expected)
        if tuple(shapes[k]) != tuple(expected[k])
    )
    if missing or unexpected or bad:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if bad:
            lines.append(f"mismatched shapes ({len(bad)}): {bad}")
        raise ConversionError(
            "state dict does not match the DiT/SiT layout inferred from its shapes:\n  "
            + "\n  ".join(lines)
            + "\nIs this a checkpoint of another architecture (or a different --weights entry)?"
        )
