"""Reading PyTorch files safely: ``.pt``/``.pth`` (``torch.load(weights_only=True, mmap=True)``)
and ``.safetensors`` (``safe_open``), as lazy state dicts that give their tensors one at a time.

No code is ever unpickled: the only non-tensor class ``torch.load`` may build is
``argparse.Namespace`` (the "args" entry of DiT/SiT train.py checkpoints); any other pickled
object is refused in one line (:func:`torch_load_error`). A lazy state dict
has ``keys()``, ``shape(key)``, ``pop(key)`` (the tensor, dropped by the dict) and ``release(t)``
(the caller is done with ``t``: its file pages may go back to the kernel), so a converter keeps
at most one converted tensor beside the mapped file.

torch is imported only by the functions that need it. Time conventions do not enter here.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

import numpy as np

from nag_jax.storage.paths import is_remote
from nag_jax.storage.weights import CheckpointError as ConversionError

TRAIN_DICT_KEYS = ("model", "ema")  # the weights entries of a DiT/SiT train.py checkpoint


def check_source_file(path: str) -> None:
    """Raises a one-line ConversionError unless ``path`` is an existing local file.

    Checked before torch is imported, so a typo is reported as a missing file (not as a missing
    dependency). Remote URIs other than the hub's are not read (torch.load maps a local file)."""
    if is_remote(path):
        raise ConversionError(
            f"source {path}: PyTorch files are read from local disk; copy it first (e.g. "
            "gcloud storage cp URI .), or give a hub source hf://ORG/NAME[/PATH]."
        )
    if not os.path.exists(path):
        raise ConversionError(f"source {path} does not exist; check the path.")
    if not os.path.isfile(path):
        raise ConversionError(f"source {path} is not a file; expected a .pt/.pth/.safetensors.")


def torch_load_error(path, e: BaseException) -> ConversionError:
    """The one-line ConversionError for a ``torch.load(weights_only=True)`` failure of ``path``.

    A refused pickle (code or classes other than tensors) says so and names what torch refused;
    torch's own advice to retry with ``weights_only=False`` (which would run that code) is never
    repeated."""
    text = str(e)
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        refused = next(
            (ln.strip() for ln in text.splitlines() if "unsupported" in ln or "GLOBAL" in ln),
            type(e).__name__,
        )
        return ConversionError(
            f"refused to read {path}: it holds pickled objects other than tensors "
            f"(weights_only=True refuses to run code; {refused.rstrip('.')}). Re-save it as a "
            "plain state dict of tensors or as safetensors."
        )
    msg = text.splitlines()[0][:300] if text.strip() else type(e).__name__
    return ConversionError(
        f"could not read {path} as a PyTorch checkpoint: {type(e).__name__}: {msg}. Is the file "
        "complete (not truncated) and a torch.save() checkpoint?"
    )


def torch_load(path: str, return_mmapped: bool = False):
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
        raise torch_load_error(path, e) from None


def to_numpy(t) -> np.ndarray:
    """A tensor (or array) as numpy; float32 unless it is float64 (bf16/fp16 are widened)."""
    if isinstance(t, np.ndarray):
        return t
    import torch

    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy()


class SafetensorsDict:
    """Lazy state dict over a safetensors file (tensors read one at a time, numpy)."""

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


def drop_pages(t) -> None:
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


class TorchDict:
    """Lazy state dict over a loaded (possibly mmapped) dict of tensors."""

    def __init__(self, sd, mmapped: bool = False):
        self._sd = dict(sd)
        self._mmapped = mmapped

    def release(self, t) -> None:
        if self._mmapped:
            drop_pages(t)

    def keys(self):
        return list(self._sd)

    def shape(self, key):
        return tuple(self._sd[key].shape)

    def pop(self, key):
        return self._sd.pop(key)  # caller holds the only reference: dropped after conversion


def read_torch_state_dict(path: str, weights: str | None = None):
    """Opens a checkpoint -> (lazy state dict with ``keys/shape/pop``, info dict).

    weights: "ema" | "model" for train.py dicts (None = "ema"); ignored (recorded as "raw") for a
    raw state dict.
    """
    check_source_file(path)
    if path.endswith(".safetensors"):
        sd = SafetensorsDict(path)
        return sd, dict(source_format="safetensors", weights="raw")
    obj, mmapped = torch_load(path, return_mmapped=True)
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
    return TorchDict(sd, mmapped=mmapped), info
