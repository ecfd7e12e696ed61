"""SD-VAE weights: the diffusers key table and the readers of diffusers and converted folders.

Module and parameter names of `nag_jax.models.vae.layers` mirror the diffusers state-dict keys, so
the weights are read through a table (`torch_key`): ``encoder.down_blocks.0.resnets.1.conv1.weight``
is the Flax path ``encoder/down_blocks_0/resnets_1/conv1/kernel`` (OIHW -> HWIO);
``...attentions.0.to_out.0`` is ``attentions_0/to_out_0`` (Linear weight transposed); GroupNorm
``weight`` is ``scale``. Old checkpoints that name the mid-block attention
``query/key/value/proj_attn`` (diffusers < 0.14, as the original sd-vae-ft-* uploads) are renamed as
diffusers does on load, and 1x1-conv-shaped (C, C, 1, 1) attention weights are accepted as (C, C).
Loading is strict: every weight must be used and every shape must match the config, or
`VAEWeightsError` lists what differs.

Folders: a diffusers folder (config.json + ``WEIGHT_FILES``), a pipeline folder with a ``vae/``
subfolder, or a folder written by ``python -m nag_jax.convert vae`` (config.json + ``params/``,
Orbax); local or remote (nag_jax.storage.paths).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from nag_jax.models.vae.config import VAEConfig, _as_config
from nag_jax.models.vae.layers import param_shapes
from nag_jax.storage import weights as storage_weights
from nag_jax.storage.paths import as_path, is_remote

__all__ = [
    "WEIGHT_FILES",
    "ORBAX_PARAMS_DIR",
    "HUB_HINT",
    "VAEWeightsError",
    "torch_key",
    "normalize_state_dict",
    "infer_config_from_state_dict",
    "params_from_state_dict",
    "state_dict_from_params",
    "find_vae_dir",
    "read_config",
    "is_orbax_vae_dir",
    "read_state_dict",
    "load_diffusers",
    "load_converted",
]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ORBAX_PARAMS_DIR = storage_weights.PARAMS_ITEM
HUB_HINT = (
    "Download a diffusers-format VAE beforehand, e.g. `hf download stabilityai/sd-vae-ft-ema "
    "--local-dir DIR` (`huggingface-cli download ...` with older huggingface_hub; or "
    "stabilityai/sd-vae-ft-mse), then pass DIR or convert it with "
    "`python -m nag_jax.convert vae --src DIR --dst OUT`."
)


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


class VAEWeightsError(storage_weights.CheckpointError):
    """Weights and config disagree (missing / unexpected / mis-shaped keys). A ValueError."""


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


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Renames legacy attention keys (query/key/value/proj_attn) as diffusers does on load."""
    out = {}
    for k, v in state_dict.items():
        m = _LEGACY_RE.match(k)
        if m:
            new = f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}"
            if new in state_dict:
                raise VAEWeightsError(f"state dict has both {k!r} and {new!r}; keep only one")
            k = new
        out[k] = v
    return out


def infer_config_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
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


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor (bf16 has no numpy dtype)
        import torch

        return x.detach().to(torch.float32).cpu().numpy()
    return np.asarray(x)


def params_from_state_dict(state_dict: Mapping[str, Any], config, *, source: str = "state dict"):
    """diffusers ``AutoencoderKL`` state dict -> Flax float32 params for ``config``. Strict.

    Raises ``VAEWeightsError`` naming every missing, unexpected and mis-shaped key.
    """
    cfg = _as_config(config)
    expected = traverse_util.flatten_dict(param_shapes(cfg))
    sd = normalize_state_dict(state_dict)
    missing, mismatched, flat = [], [], {}
    for path, spec in expected.items():
        key = torch_key(path)
        want = _torch_shape(spec.shape)
        if key not in sd:
            missing.append(f"{key} {want}")
            continue
        got = tuple(np.shape(sd[key]))
        if not (got == want or (len(want) == 2 and got == (*want, 1, 1))):
            mismatched.append(f"{key}: weights {got}, config expects {want}")
            continue
        flat[path] = _to_flax(_as_numpy(sd[key]), len(spec.shape))
    unexpected = sorted(set(sd) - {torch_key(path) for path in expected})
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
        raise VAEWeightsError("\n".join(parts))
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params) -> dict[str, np.ndarray]:
    """Flax params -> diffusers state dict (float32 numpy, current diffusers key names)."""
    flat = traverse_util.flatten_dict(dict(params))
    return {torch_key(path): _to_torch(np.asarray(v)) for path, v in flat.items()}


def find_vae_dir(path: str) -> str:
    """Resolves ``path`` (local or remote, nag_jax.storage.paths) to the folder holding the VAE's
    config.json.

    Accepts the VAE folder itself or a full diffusers pipeline folder with a ``vae/`` subfolder.
    """
    folder = as_path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"VAE path {str(folder)!r} does not exist or is not a directory. Expected a "
            f"diffusers folder with config.json and one of {list(WEIGHT_FILES)}, or an Orbax "
            f"directory written by `python -m nag_jax.convert vae` (config.json + "
            f"{ORBAX_PARAMS_DIR}/). " + HUB_HINT
        )
    if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
        folder = folder / "vae"
    return str(folder)


def _folder_names(folder) -> list[str]:
    return sorted(p.name for p in as_path(folder).iterdir())


def read_config(path: str) -> dict:
    """The config.json dict of a VAE folder (diffusers or converted), with a clear error."""
    cfg_path = as_path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"No config.json in VAE folder {path!r} (found: {_folder_names(path)}). "
            f"Expected the diffusers files config.json + one of {list(WEIGHT_FILES)}. " + HUB_HINT
        )
    return json.loads(cfg_path.read_text())


def is_orbax_vae_dir(path: str) -> bool:
    """True when ``path`` looks like the output of ``python -m nag_jax.convert vae``."""
    return (as_path(path) / ORBAX_PARAMS_DIR).is_dir()


def read_state_dict(path: str) -> tuple[dict[str, Any], str]:
    """Reads the diffusers weight file of a VAE folder -> (state dict, file path).

    safetensors are read as numpy (through torch only for dtypes numpy lacks, e.g. bfloat16);
    a .bin needs torch (``weights_only=True``: no code is unpickled). A remote folder's file is
    read through epath (safetensors from bytes, torch from the open file).
    """
    for name in WEIGHT_FILES:
        fp = as_path(path) / name
        f = str(fp)
        if not fp.exists():
            continue
        remote = is_remote(fp)
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                if remote:
                    from safetensors.numpy import load

                    return dict(load(fp.read_bytes())), f
                with safe_open(f, framework="np") as sf:
                    return {k: sf.get_tensor(k) for k in sf.keys()}, f  # noqa: SIM118
            except (TypeError, ValueError):  # e.g. bfloat16: go through torch
                from safetensors.torch import load, load_file

                return (dict(load(fp.read_bytes())) if remote else dict(load_file(f))), f
        import torch

        with fp.open("rb") as fh:
            sd = torch.load(fh, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and len(sd) <= 3:
            sd = sd["state_dict"]
        return dict(sd), f
    raise FileNotFoundError(
        f"No VAE weights in {path!r} (found: {_folder_names(path)}); expected one of "
        f"{list(WEIGHT_FILES)} next to config.json. " + HUB_HINT
    )


def load_diffusers(path: str) -> tuple[VAEConfig, dict]:
    """A diffusers VAE folder -> (VAEConfig, float32 Flax params), strictly checked."""
    path = find_vae_dir(path)
    config = VAEConfig.from_dict(read_config(path))
    state_dict, f = read_state_dict(path)
    return config, params_from_state_dict(state_dict, config, source=f)


def load_converted(path: str) -> tuple[VAEConfig, dict]:
    """A folder written by ``python -m nag_jax.convert vae`` (config.json + params/, read by
    ``nag_jax.storage.weights.load_params``) -> (VAEConfig, float32 params), checked against the
    config."""
    path = find_vae_dir(path)
    config = VAEConfig.from_dict(read_config(path))
    params, _ = storage_weights.load_params(path)
    storage_weights.check_params_match(
        param_shapes(config),
        params,
        source=f"{path}/{ORBAX_PARAMS_DIR}",
        hint=f"Its params do not match its config.json (block_out_channels="
        f"{config.block_out_channels}, layers_per_block={config.layers_per_block}, "
        f"latent_channels={config.latent_channels}): convert the VAE again with "
        "`python -m nag_jax.convert vae --src DIR --dst OUT --force`.",
        error=VAEWeightsError,
    )
    return config, params
