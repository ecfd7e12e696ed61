"""PyTorch DiT/SiT checkpoint (.pt/.pth/.safetensors) -> Flax params / Orbax checkpoint.

    python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
    python -m nag_jax.convert to-orbax results/000-DiT-XL-2/checkpoints/0400000.pt out \
        --family DiT --model DiT-XL/2 --weights ema

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
import sys
import warnings

import numpy as np
from flax import traverse_util

from nag_jax import weights
from nag_jax.convert import common
from nag_jax.convert.common import ConversionError

COMMAND = "to-orbax"
HELP = "PyTorch DiT/SiT .pt/.safetensors -> Orbax checkpoint"
TRAIN_DICT_KEYS = ("model", "ema")


def _torch_load(path: str, return_mmapped: bool = False):
    """torch.load(weights_only=True, mmap=True); -> obj (or (obj, mmapped) with return_mmapped)."""
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                mmapped = True
            except RuntimeError as e:
                if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
                mmapped = False
            return (obj, mmapped) if return_mmapped else obj
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        raise common.torch_load_error(path, e) from None


class _SafetensorsDict:
    """Lazy mapping over a safetensors file (tensors read one at a time, numpy)."""

    def __init__(self, path: str):
        try:
            from safetensors import safe_open
        except ImportError as e:
            raise ConversionError(
                "reading .safetensors needs the safetensors package: pip install safetensors"
            ) from e
        try:
            self._f = safe_open(path, framework="numpy")
            self._keys = list(self._f.keys())
        except Exception as e:  # noqa: BLE001
            raise ConversionError(
                f"could not read {path} as safetensors: {type(e).__name__}: {e}. Is the file "
                "complete and a safetensors file?"
            ) from None

    def keys(self):
        return list(self._keys)

    def shape(self, key):
        return tuple(self._f.get_slice(key).get_shape())

    def pop(self, key):
        self._keys.remove(key)
        return self._f.get_tensor(key)

    def release(self, t) -> None:
        pass  # get_tensor returned a private copy


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    import torch

    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy()


def read_torch_state_dict(path: str, weights: str | None = None):
    """Opens a checkpoint -> (lazy state dict with ``keys/shape/pop``, info dict).

    weights: "ema" | "model" for train.py dicts (None = "ema"); ignored (recorded as "raw") for a
    raw state dict.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"source {path} does not exist or is not a file.")
    if path.endswith(".safetensors"):
        sd = _SafetensorsDict(path)
        return sd, dict(source_format="safetensors", weights="raw")
    obj, mmapped = _torch_load(path, return_mmapped=True)
    if not isinstance(obj, dict):
        raise ConversionError(
            f"{path} holds a {type(obj).__name__}, expected a state dict or a train.py dict "
            "{'model', 'ema', 'opt', 'args'}."
        )
    info = dict(source_format="torch")
    nested = [k for k in TRAIN_DICT_KEYS if isinstance(obj.get(k), dict)]
    if nested:
        choice = weights or "ema"
        if choice not in nested:
            raise ConversionError(
                f"--weights {choice}: {path} has no {choice!r} entry (it has {sorted(obj)}); "
                f"pass --weights {nested[0]}."
            )
        if "args" in obj:
            info["train_args"] = (
                {
                    k: v
                    for k, v in vars(obj["args"]).items()
                    if isinstance(v, (int, float, str, bool, type(None)))
                }
                if isinstance(obj["args"], argparse.Namespace)
                else None
            )
        sd = obj[choice]
        info["weights"] = choice
    else:
        sd = obj
        info["weights"] = "raw"
    import torch

    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"{path}: entries {bad[:5]} are not tensors; expected a flat state dict of tensors."
        )
    return _TorchDict(sd, mmapped=mmapped), info


def _drop_pages(t) -> None:
    """Tells the kernel we are done with the file pages behind an mmap-loaded tensor.

    Pages of a read-only private file mapping that were touched count in the RSS until unmapped;
    torch keeps the whole file mapped while any tensor lives. MADV_DONTNEED on fully covered pages
    frees them (a later read would fault them in from the file again, so this is always safe for
    data we never wrote). Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        addr, nbytes = t.data_ptr(), t.numel() * t.element_size()
        page = mmap.PAGESIZE
        start = -(-addr // page) * page
        end = (addr + nbytes) // page * page
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # DONTNEED
    except Exception:  # noqa: BLE001 - a memory hint; never fail the conversion over it
        pass


class _TorchDict:
    def __init__(self, sd, mmapped: bool = False):
        self._sd = dict(sd)
        self._mmapped = mmapped

    def release(self, t) -> None:
        if self._mmapped:
            _drop_pages(t)

    def keys(self):
        return list(self._sd)

    def shape(self, key):
        return tuple(self._sd[key].shape)

    def pop(self, key):
        return self._sd.pop(key)  # caller holds the only reference: dropped after conversion


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
        sd = _TorchDict(sd)
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
    for key in list(expected):
        t = sd.pop(key)
        dtype = str(getattr(t, "dtype", "")).replace("torch.", "")
        extra["source_dtypes"][dtype] = extra["source_dtypes"].get(dtype, 0) + 1
        value = _to_numpy(t)
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
    family: str,
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

    params: the Flax tree of nag_jax.models (numpy float32 leaves).
    metadata: family, model, input_size, in_channels, num_classes, learn_sigma, hidden_size,
    depth, num_heads, patch_size, null_noise, source, sha256, weights, ... (JSON-serialisable).
    """
    sd, info = read_torch_state_dict(path, weights)
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
    meta = arch.metadata()
    meta.update(info)
    meta.update(extra)
    meta["source"] = os.path.abspath(path)
    meta["sha256"] = common.sha256_file(path) if compute_sha256 else None
    meta["converter"] = "nag_jax.convert.torch_to_orbax"
    return params, meta


def convert(src: str, dest: str, family: str, *, force: bool = False, **kwargs) -> dict:
    """File -> Orbax checkpoint at ``dest`` (atomic; refuses existing unless force). -> metadata"""
    weights.check_destination(os.path.abspath(dest), force)  # fail before any heavy work
    params, meta = load_torch_checkpoint(src, family, **kwargs)
    common.to_host_jax_inplace(params)
    weights.save_params(dest, params, meta, force=force)
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help=".pt/.pth (state dict or train.py dict) or .safetensors")
    p.add_argument("dest", help="output Orbax checkpoint directory (must not exist)")
    p.add_argument("--family", required=True, choices=["DiT", "SiT"], help="same keys: required")
    p.add_argument("--model", default=None, help="e.g. SiT-XL/2; checked against the shapes")
    p.add_argument("--weights", default=None, choices=["ema", "model"], help="train.py dicts")
    p.add_argument("--num-heads", type=int, default=None, help="custom widths only")
    p.add_argument("--input-size", type=int, default=None, help="only if there is no pos_embed")
    p.add_argument("--null-noise", default=None, choices=["learned", "zero"])
    p.add_argument("--allow-pos-embed-mismatch", action="store_true")
    p.add_argument("--force", action="store_true", help="replace dest (after the new is complete)")


def run(args: argparse.Namespace) -> int:
    meta = convert(
        args.src,
        args.dest,
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
    print(f"wrote {os.path.abspath(args.dest)}: " + ", ".join(f"{k}={meta[k]}" for k in keys))
    if meta.get("null_noise") != "learned":
        print("note: no null_noise_token in the source; NAG fine-tuning creates it.")
    return 0
