"""SD-VAE weights: diffusers ``AutoencoderKL`` format <-> Flax params (``nag_jax.vae``) and Orbax.

CLI (discovered by ``python -m nag_jax.convert`` through ``COMMAND`` / ``HELP`` /
``add_arguments`` / ``run``; ``register(subparsers)`` adds it to any other argparse CLI)::

    python -m nag_jax.convert vae --src /path/to/sd-vae-ft-ema --dst /path/to/sd-vae-ft-ema-flax
    python -m nag_jax.convert.vae --src ... --dst ... [--force]      # same, standalone

``--src`` is a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin, e.g.
``hf download stabilityai/sd-vae-ft-ema --local-dir DIR``), or a pipeline folder with
a ``vae/`` subfolder. ``--dst`` receives ``config.json`` (the diffusers config) and ``params/`` (an
Orbax checkpoint of the float32 Flax param tree); ``nag_jax.vae.load_vae(dst)`` reads it back.

Key mapping (a table, see ``torch_key``): the Flax path ``encoder/down_blocks_0/resnets_1/conv1/
kernel`` is ``encoder.down_blocks.0.resnets.1.conv1.weight``; conv kernels OIHW -> HWIO, Linear
weights (out, in) -> (in, out), GroupNorm ``weight`` -> ``scale``. Old checkpoints that name the
mid-block attention ``query/key/value/proj_attn`` (diffusers < 0.14, as in the original
sd-vae-ft-* uploads) are renamed to ``to_q/to_k/to_v/to_out.0`` exactly as diffusers does on
load, and 1x1-conv-shaped (C, C, 1, 1) attention weights are accepted as (C, C).

Conversion is strict: every weight must be used and every shape must match the config; otherwise
``VAEConversionError`` lists the missing / unexpected / mismatched names (and, when the weights
describe a different network, the config values they imply) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from nag_jax.convert.common import ConversionError

if TYPE_CHECKING:
    from nag_jax.vae import VAEConfig

# jax / flax / nag_jax.vae / torch / orbax are imported inside the functions that need them, so
# that `python -m nag_jax.convert` can discover this subcommand cheaply.

COMMAND = "vae"
HELP = "SD-VAE: diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-ema) -> Orbax"

_INDEXED = {
    "down_blocks",
    "up_blocks",
    "resnets",
    "attentions",
    "downsamplers",
    "upsamplers",
    "to_out",
}
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_MAX_LISTED = 25


class VAEConversionError(ConversionError):
    """Weights and config disagree (missing / unexpected / mis-shaped keys). A ValueError."""


# ----------------------------------------------------------------------------------------------
# Key and array mapping
# ----------------------------------------------------------------------------------------------


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path -> diffusers state-dict key.

    ('decoder', 'up_blocks_1', 'upsamplers_0', 'conv', 'kernel')
    -> 'decoder.up_blocks.1.upsamplers.0.conv.weight'.
    """
    parts = []
    for name in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", name)
        if m and m.group(1) in _INDEXED:
            parts += [m.group(1), m.group(2)]
        else:
            parts.append(name)
    leaf = path[-1]
    parts.append({"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf])
    return ".".join(parts)


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:  # HWIO -> OIHW
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if len(flax_shape) == 2:  # (in, out) -> (out, in)
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def _to_flax(arr: np.ndarray, flax_ndim: int) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if flax_ndim == 4:
        return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
    if flax_ndim == 2:
        if arr.ndim == 4:  # legacy 1x1-conv attention projection
            arr = arr[:, :, 0, 0]
        return np.ascontiguousarray(arr.T)
    return arr


def _to_torch(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        return np.ascontiguousarray(arr.transpose(3, 2, 0, 1))
    if arr.ndim == 2:
        return np.ascontiguousarray(arr.T)
    return arr


def _flatten(tree, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Nested dict of params -> {path tuple: leaf} (sorted keys, as jax flattens dicts)."""
    flat = {}
    for k in sorted(tree):
        v = tree[k]
        if isinstance(v, Mapping):
            flat.update(_flatten(v, (*prefix, str(k))))
        else:
            flat[(*prefix, str(k))] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return tree


def normalize_state_dict(state_dict: Mapping[str, object]) -> dict[str, object]:
    """Renames legacy attention keys (query/key/value/proj_attn) as diffusers does on load."""
    out = {}
    for k, v in state_dict.items():
        m = _LEGACY_RE.match(k)
        if m:
            new = f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}"
            if new in state_dict:
                raise VAEConversionError(f"state dict has both {k!r} and {new!r}; keep only one")
            k = new
        out[k] = v
    return out


def infer_config_from_state_dict(state_dict: Mapping[str, object]) -> dict:
    """The config values the weights imply (block_out_channels, layers_per_block, channels).

    Best effort, used in error messages; norm_num_groups cannot be read from the weights.
    """
    sd = normalize_state_dict(state_dict)
    shapes = {k: tuple(np.shape(v)) for k, v in sd.items()}
    out: dict = {}
    chans, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.weight" in shapes:
        chans.append(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0])
        i += 1
    if chans:
        out["block_out_channels"] = tuple(chans)
    n = 0
    while f"encoder.down_blocks.0.resnets.{n}.conv1.weight" in shapes:
        n += 1
    if n:
        out["layers_per_block"] = n
    if "encoder.conv_in.weight" in shapes:
        out["in_channels"] = shapes["encoder.conv_in.weight"][1]
    if "decoder.conv_in.weight" in shapes:
        out["latent_channels"] = shapes["decoder.conv_in.weight"][1]
    if "decoder.conv_out.weight" in shapes:
        out["out_channels"] = shapes["decoder.conv_out.weight"][0]
    out["use_quant_conv"] = "quant_conv.weight" in shapes
    out["use_post_quant_conv"] = "post_quant_conv.weight" in shapes
    out["mid_block_add_attention"] = any(".mid_block.attentions." in k for k in shapes)
    return out


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def convert_state_dict(state_dict: Mapping[str, object], config, *, source: str = "state dict"):
    """diffusers ``AutoencoderKL`` state dict -> Flax float32 params for ``config``. Strict.

    Raises ``VAEConversionError`` naming every missing, unexpected and mis-shaped key.
    """
    from nag_jax.vae import AutoencoderKL

    vae = AutoencoderKL(config)
    cfg = vae.config
    expected = _flatten(vae.param_shapes())
    sd = normalize_state_dict(state_dict)
    missing, mismatched, flat = [], [], {}
    used = set()
    for path, spec in expected.items():
        key = torch_key(path)
        if key not in sd:
            missing.append(f"{key} {_torch_shape(spec.shape)}")
            continue
        used.add(key)
        got = tuple(np.shape(sd[key]))
        want = _torch_shape(spec.shape)
        ok = got == want or (len(want) == 2 and got == (*want, 1, 1))
        if not ok:
            mismatched.append(f"{key}: weights {got}, config expects {want}")
            continue
        flat[path] = _to_flax(_as_numpy(sd[key]), len(spec.shape))
    unexpected = sorted(set(sd) - used)
    if missing or unexpected or mismatched:
        parts = [
            f"VAE weights in {source} do not match the config "
            f"(block_out_channels={cfg.block_out_channels}, layers_per_block="
            f"{cfg.layers_per_block}, latent_channels={cfg.latent_channels}, in/out_channels="
            f"{cfg.in_channels}/{cfg.out_channels}):"
        ]
        if missing:
            parts.append(_listing("missing from the weights", missing))
        if unexpected:
            parts.append(_listing("unexpected (not used by the config)", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        implied = infer_config_from_state_dict(state_dict)
        differs = {k: v for k, v in implied.items() if getattr(cfg, k) != v}
        if differs:
            parts.append(
                f"  the weights look like a VAE with {differs}: check that config.json belongs "
                "to these weights (or fix the config passed in)."
            )
        raise VAEConversionError("\n".join(parts))
    return _unflatten(flat)


def state_dict_from_params(params) -> dict[str, np.ndarray]:
    """Flax params -> diffusers state dict (float32 numpy, current diffusers key names)."""
    return {torch_key(path): _to_torch(np.asarray(v)) for path, v in _flatten(params).items()}


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor (bf16 has no numpy dtype)
        import torch

        return x.detach().to(torch.float32).cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: str) -> tuple[dict[str, object], str]:
    """Reads the diffusers weight file of a VAE folder -> (state dict, file path)."""
    from nag_jax.vae import HUB_HINT, WEIGHT_FILES

    for name in WEIGHT_FILES:
        f = os.path.join(path, name)
        if not os.path.exists(f):
            continue
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(f, framework="np") as sf:
                    return {k: sf.get_tensor(k) for k in sf.keys()}, f  # noqa: SIM118
            except (TypeError, ValueError):  # e.g. bfloat16: go through torch
                from safetensors.torch import load_file

                return dict(load_file(f)), f
        import torch

        sd = torch.load(f, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and len(sd) <= 3:
            sd = sd["state_dict"]
        return dict(sd), f
    raise FileNotFoundError(
        f"No VAE weights in {path!r} (found: {sorted(os.listdir(path))}); expected one of "
        f"{list(WEIGHT_FILES)} next to config.json. " + HUB_HINT
    )


def load_diffusers(path: str) -> tuple[VAEConfig, dict]:
    """A diffusers VAE folder -> (VAEConfig, float32 Flax params), strictly checked."""
    from nag_jax.vae import VAEConfig, find_vae_dir, read_config

    path = find_vae_dir(path)
    config = VAEConfig.from_dict(read_config(path))
    state_dict, f = read_state_dict(path)
    return config, convert_state_dict(state_dict, config, source=f)


def _abstract_target(config):
    import jax

    from nag_jax.vae import AutoencoderKL

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        AutoencoderKL(config).param_shapes(),
    )


def load_orbax(path: str) -> tuple[VAEConfig, dict]:
    """A directory written by ``convert`` / ``save_orbax`` -> (VAEConfig, float32 params)."""
    import orbax.checkpoint as ocp

    from nag_jax.vae import ORBAX_PARAMS_DIR, VAEConfig, find_vae_dir, read_config

    path = os.path.abspath(find_vae_dir(path))
    config = VAEConfig.from_dict(read_config(path))
    target = _abstract_target(config)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(path, ORBAX_PARAMS_DIR), target)
    except Exception as e:  # orbax raises several types for a tree/shape mismatch
        raise VAEConversionError(
            f"Orbax VAE params in {path}/{ORBAX_PARAMS_DIR} do not match its config.json "
            f"(block_out_channels={config.block_out_channels}, layers_per_block="
            f"{config.layers_per_block}, latent_channels={config.latent_channels}): {e}"
        ) from e
    return config, params


def save_orbax(dst: str, config, params, *, force: bool = False) -> str:
    """Writes ``dst/config.json`` + ``dst/params`` (Orbax) atomically; returns abs ``dst``.

    The directory is assembled under a temporary name next to ``dst`` and renamed into place,
    so a failed run leaves nothing at ``dst``. An existing ``dst`` is refused unless ``force``.
    """
    import orbax.checkpoint as ocp

    from nag_jax.vae import ORBAX_PARAMS_DIR, AutoencoderKL

    config = AutoencoderKL(config).config
    dst = os.path.abspath(os.path.expanduser(dst))
    if os.path.lexists(dst) and not force:
        raise FileExistsError(
            f"Destination {dst} already exists; pass --force (force=True) to replace it"
        )
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{tag}")
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        params = _unflatten({k: np.asarray(v, np.float32) for k, v in _flatten(params).items()})
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, ORBAX_PARAMS_DIR), params)
            ckptr.wait_until_finished()
        if os.path.lexists(dst):
            old = os.path.join(parent, f".{os.path.basename(dst)}.old-{tag}")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def save_diffusers(dst: str, config, params, *, force: bool = False) -> str:
    """Writes a diffusers folder (config.json + diffusion_pytorch_model.safetensors) atomically."""
    from safetensors.numpy import save_file

    from nag_jax.vae import WEIGHT_FILES, AutoencoderKL

    config = AutoencoderKL(config).config
    dst = os.path.abspath(os.path.expanduser(dst))
    if os.path.lexists(dst) and not force:
        raise FileExistsError(f"Destination {dst} already exists; pass force=True to replace it")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        save_file(state_dict_from_params(params), os.path.join(tmp, WEIGHT_FILES[0]))
        if os.path.lexists(dst):
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def convert(src: str, dst: str, *, force: bool = False) -> str:
    """diffusers folder ``src`` -> Orbax directory ``dst`` (checked before anything is written)."""
    dst_abs = os.path.abspath(os.path.expanduser(dst))
    if os.path.lexists(dst_abs) and not force:
        raise FileExistsError(f"Destination {dst_abs} already exists; pass --force to replace it")
    config, params = load_diffusers(src)
    return save_orbax(dst_abs, config, params, force=force)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``vae`` subcommand (discovered by ``python -m nag_jax.convert``)."""
    p.add_argument("--src", required=True, help="diffusers VAE folder (config.json + weights)")
    p.add_argument("--dst", required=True, help="output directory (config.json + params/ Orbax)")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=run)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``vae`` subcommand to argparse subparsers (``args.func(args)`` runs it)."""
    p = subparsers.add_parser(COMMAND, help=HELP, description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)
    return p


add_subparser = register


def run(args: argparse.Namespace) -> int:
    """Runs a parsed ``vae`` command; prints the written path. Errors propagate (ValueError /
    FileNotFoundError / FileExistsError; the CLI prints them as one ``error:`` line)."""
    out = convert(args.src, args.dst, force=args.force)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    """Standalone ``python -m nag_jax.convert.vae``; exit status 2 with an ``error:`` line on
    bad input, as ``python -m nag_jax.convert`` does."""
    parser = argparse.ArgumentParser(
        prog="python -m nag_jax.convert.vae",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
