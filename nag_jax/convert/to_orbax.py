r"""PyTorch DiT/SiT checkpoint (.pt/.pth/.safetensors, diffusers, hub) -> Flax params / Orbax.

    nag-convert to-orbax --src SiT-XL-2-256.pt --dst ckpt/sit_xl2_256 --family SiT
    nag-convert to-orbax --src results/000-DiT-XL-2/checkpoints/0400000.pt --dst out \
        --family DiT --model DiT-XL/2 --weights ema
    nag-convert to-orbax --src hf://facebook/DiT-XL-2-256 --dst ckpt/dit_xl2_256
    nag-convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT   # positional: the same

This module maps the releases' keys to the Flax tree (the table is ``common``'s) and writes the
result through ``nag_jax.storage.weights``; reading the files is ``torch_io``'s (.pt, safetensors)
and ``hub``'s (hf:// sources, diffusers folders, whose keys it renames to the releases').

Sources: a raw state dict (the released files) or a train.py dict {"model", "ema", "opt",
"args"} (``--weights ema`` by default: the EMA weights are the ones to sample with). ``.pt`` files
are read with ``torch.load(weights_only=True, mmap=True)`` (no code is ever unpickled; the only
non-tensor class allowed is argparse.Namespace for train.py's "args"); safetensors with
``safe_open``. DiT and SiT files have the same keys, so ``--family`` is required. Size, patch,
input size (from pos_embed), channels, learn_sigma and the class count are inferred from shapes;
an explicit ``--model`` is checked against them. Conversion goes tensor by tensor and drops each
source tensor once converted, so peak memory stays near (source mapped + converted copy).

Strict: every source key is used, every target parameter is filled, shapes are checked; errors
list missing / unexpected / mis-shaped keys by name. Nothing is written on error.
Time conventions do not enter here (weights only).
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
from flax import traverse_util

from nag_jax.convert import common
from nag_jax.convert.common import ConversionError
from nag_jax.convert.hub import (
    diffusers_folder,
    fetch_from_hub,
    is_hub_source,
    read_diffusers_state_dict,
)
from nag_jax.convert.torch_io import (
    TorchDict,
    check_source_file,
    read_torch_state_dict,
    to_numpy,
)
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.utils import progress_bar, sha256_file

COMMAND = "to-orbax"
HELP = "PyTorch DiT/SiT .pt/.safetensors -> Orbax checkpoint"

__all__ = [
    "check_pos_embed",
    "convert",
    "diffusers_folder",
    "is_hub_source",
    "load_torch_checkpoint",
    "state_dict_to_params",
]


def check_pos_embed(pos_embed: np.ndarray, arch: common.Architecture, allow: bool) -> float:
    """Compares the checkpoint's pos_embed with the sin-cos the JAX model computes."""
    from nag_jax.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(arch.hidden_size, arch.grid)
    diff = float(np.max(np.abs(pos_embed.reshape(ref.shape).astype(np.float64) - ref)))
    if diff > common.POS_EMBED_ATOL:
        msg = (
            f"pos_embed differs from the releases' 2-D sin-cos for hidden {arch.hidden_size}, "
            f"grid {arch.grid} by max |diff| = {diff:.3g} (> {common.POS_EMBED_ATOL}); the JAX "
            "model recomputes pos_embed, so outputs would differ from the PyTorch model."
        )
        if not allow:
            raise ConversionError(msg + " Pass --allow-pos-embed-mismatch to convert anyway.")
        warnings.warn(msg, stacklevel=2)
    elif diff > 0:
        warnings.warn(f"pos_embed differs from the computed sin-cos by {diff:.3g}", stacklevel=2)
    return diff


def state_dict_to_params(
    sd,
    family: str,
    *,
    model: str | None = None,
    num_heads: int | None = None,
    input_size: int | None = None,
    null_noise: str | None = None,
    allow_pos_embed_mismatch: bool = False,
) -> tuple[dict, common.Architecture, dict]:
    """Lazy/real state dict (releases' keys) -> (Flax params, Architecture, extra metadata).

    ``sd`` is consumed: each tensor is popped, converted (float32, Flax layout) and dropped.
    null_noise: None (take the token if the source has one), "learned" (require one: a release
    checkpoint has none and we do not invent it), "zero"/"none" (the source must not have one).
    """
    if isinstance(sd, dict):
        sd = TorchDict(sd)
    shapes = {k: sd.shape(k) for k in sd.keys()}  # noqa: SIM118
    arch = common.infer_architecture(shapes, family, num_heads=num_heads, input_size=input_size)
    if model is not None:
        common.check_model_name(arch, model)
    if null_noise == "learned" and not arch.null_noise_token:
        raise ConversionError(
            "null_noise='learned' was requested but the source has no 'null_noise_token' (the "
            "releases have none). The converter does not invent one: convert without "
            "--null-noise learned and let NAG fine-tuning create the token "
            "(config.model.null_noise='learned', config.optim.trainable='null_token')."
        )
    if null_noise in ("zero", "none") and arch.null_noise_token:
        raise ConversionError(
            f"null_noise={null_noise!r} but the source has a learned 'null_noise_token'; drop "
            "--null-noise or use 'learned'."
        )
    expected = common.torch_shapes(arch)
    if "pos_embed" not in shapes:
        expected.pop("pos_embed")
    common.check_keys(shapes, expected)
    extra = {"source_dtypes": {}}
    flat: dict = {}
    for key in progress_bar(list(expected), desc="to-orbax: tensors", unit="tensor"):
        t = sd.pop(key)
        dtype = str(getattr(t, "dtype", "")).replace("torch.", "")
        extra["source_dtypes"][dtype] = extra["source_dtypes"].get(dtype, 0) + 1
        value = to_numpy(t)
        if key == "pos_embed":
            diff = check_pos_embed(value, arch, allow_pos_embed_mismatch)
            extra["pos_embed_max_abs_diff"] = diff
        else:
            value = common.to_flax(key, value).astype(np.float32, copy=False)
            if not value.flags.owndata:  # never keep a view into the (mmapped) source
                value = value.copy()
            flat[common.flax_path(key)] = value
        del value
        sd.release(t)  # converted: give the source pages back (mmap) before the next tensor
        del t
    return traverse_util.unflatten_dict(flat), arch, extra


def load_torch_checkpoint(
    path: str,
    family: str | None = None,
    *,
    model: str | None = None,
    weights: str | None = None,
    num_heads: int | None = None,
    input_size: int | None = None,
    null_noise: str | None = None,
    allow_pos_embed_mismatch: bool = False,
    compute_sha256: bool = True,
) -> tuple[dict, dict]:
    """Reads a PyTorch DiT/SiT checkpoint -> ``(params, metadata)`` (no file written).

    path: a .pt/.pth/.safetensors file, a diffusers DiTTransformer2DModel folder (or a pipeline
      folder with transformer/), or a hub source ``hf://ORG/NAME[@REVISION][/PATH]`` (downloaded
      into the standard Hugging Face cache; see :func:`fetch_from_hub`).
    family: "DiT" | "SiT"; required for release files (they share keys); a diffusers folder is
      a DiT unless told otherwise.
    params: the Flax tree of nag_jax.models (numpy float32 leaves).
    metadata: family, model, input_size, in_channels, num_classes, learn_sigma, hidden_size,
    depth, num_heads, patch_size, null_noise, source, sha256, weights, ... (JSON-serialisable).
    """
    hub_info, local = {}, path
    if is_hub_source(path):
        local, hub_info = fetch_from_hub(path)
    folder = diffusers_folder(local) if os.path.isdir(local) else None
    cfg = None
    if folder is not None:
        sd, info, cfg = read_diffusers_state_dict(folder)
        family = family or "DiT"
        heads = cfg["num_attention_heads"]
        if num_heads is not None and num_heads != heads:
            raise ConversionError(f"--num-heads {num_heads} but {folder}/config.json says {heads}.")
        if input_size is not None and input_size != cfg["sample_size"]:
            raise ConversionError(
                f"--input-size {input_size} but {folder}/config.json has sample_size "
                f"{cfg['sample_size']}; drop --input-size."
            )
        num_heads, input_size = heads, cfg["sample_size"]
        weights_file = info.pop("weights_file")
    else:
        if not os.path.isdir(local):
            check_source_file(local)  # a missing file says so before anything else
        if os.path.isdir(local):
            raise ConversionError(
                f"source {local} is a folder without config.json (nor transformer/config.json); "
                "expected a .pt/.safetensors file or a diffusers DiTTransformer2DModel folder."
            )
        if family is None:
            raise ConversionError(
                f"{path}: pass --family DiT or --family SiT (the releases share keys; the family "
                "decides the time convention and the sampler)."
            )
        sd, info = read_torch_state_dict(local, weights)
        weights_file = local
    params, arch, extra = state_dict_to_params(
        sd,
        family,
        model=model,
        num_heads=num_heads,
        input_size=input_size,
        null_noise=null_noise,
        allow_pos_embed_mismatch=allow_pos_embed_mismatch,
    )
    del sd
    if cfg is not None:
        dims = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        if (arch.hidden_size, arch.num_classes) != (dims, cfg["num_embeds_ada_norm"]):
            raise ConversionError(
                f"{folder}/config.json (heads x head_dim = {dims}, num_embeds_ada_norm = "
                f"{cfg['num_embeds_ada_norm']}) does not match the weights (hidden "
                f"{arch.hidden_size}, {arch.num_classes} classes)."
            )
    meta = arch.metadata()
    meta.update(info)
    meta.update(extra)
    meta.update(hub_info)
    meta["source"] = path if hub_info else str(as_path(path))
    meta["sha256"] = sha256_file(weights_file, progress=True) if compute_sha256 else None
    meta["converter"] = "nag_jax.convert.to_orbax"
    return params, meta


def to_host_jax_inplace(tree: dict) -> dict:
    """Replaces numpy leaves of a nested dict by jax arrays on the CPU device, one at a time.

    Orbax serialises jax arrays without an extra host copy (numpy leaves cost a second copy of
    the whole tree while saving); swapping leaf by leaf keeps the peak at one tree + one leaf.
    """
    import jax

    cpu = jax.devices("cpu")[0]
    for k, v in tree.items():
        if isinstance(v, dict):
            to_host_jax_inplace(v)
        elif isinstance(v, np.ndarray):
            tree[k] = jax.device_put(v, cpu)
            del v
    return tree


def convert(
    src: str, dest: str, family: str | None = None, *, force: bool = False, **kwargs
) -> dict:
    """File -> Orbax checkpoint at ``dest`` (atomic; refuses existing unless force). -> metadata"""
    weights.check_destination(dest, force)  # fail before any heavy work
    params, meta = load_torch_checkpoint(src, family, **kwargs)
    to_host_jax_inplace(params)
    weights.save_params(dest, params, meta, force=force)
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--src/--dst (the CLI also takes them as the two positional arguments)."""
    p.add_argument(
        "--src",
        required=True,
        help=".pt/.pth (state dict or train.py dict), .safetensors, a diffusers DiT folder, or "
        "hf://ORG/NAME[@REV][/PATH] (e.g. hf://facebook/DiT-XL-2-256)",
    )
    p.add_argument("--dst", required=True, help="output Orbax checkpoint dir (must not exist)")
    p.add_argument(
        "--family",
        default=None,
        choices=["DiT", "SiT"],
        help="required for .pt/.safetensors (same keys); diffusers folders are DiT",
    )
    p.add_argument("--model", default=None, help="e.g. SiT-XL/2; checked against the shapes")
    p.add_argument("--weights", default=None, choices=["ema", "model"], help="train.py dicts")
    p.add_argument("--num-heads", type=int, default=None, help="custom widths only")
    p.add_argument("--input-size", type=int, default=None, help="only if there is no pos_embed")
    p.add_argument("--null-noise", default=None, choices=["learned", "zero"])
    p.add_argument("--allow-pos-embed-mismatch", action="store_true")
    p.add_argument("--force", action="store_true", help="replace dst (after the new is complete)")


def run(args: argparse.Namespace) -> int:
    meta = convert(
        args.src,
        args.dst,
        args.family,
        force=args.force,
        model=args.model,
        weights=args.weights,
        num_heads=args.num_heads,
        input_size=args.input_size,
        null_noise=args.null_noise,
        allow_pos_embed_mismatch=args.allow_pos_embed_mismatch,
    )
    keys = ("model", "input_size", "in_channels", "num_classes", "learn_sigma", "weights")
    print(f"wrote {as_path(args.dst)}: " + ", ".join(f"{k}={meta[k]}" for k in keys))
    if meta.get("hub"):
        print(f"source: {meta['hub']}@{meta['hub_revision']} (Hugging Face cache)")
    if meta.get("source_format") == "diffusers":
        print(
            "note: this is the release DiT forward the weights were trained with (timestep "
            "frequencies 10000^(-k/128), LayerNorm eps 1e-6); diffusers' DiTTransformer2DModel "
            f"uses 10000^(-k/127) and eps {meta['diffusers_norm_eps']:g} in its second norm, so "
            "its outputs differ from these."
        )
    if meta.get("null_noise") != "learned":
        print("note: no null_noise_token in the source; NAG fine-tuning creates it.")
    return 0
