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
import re
import sys
import warnings

import numpy as np
from flax import traverse_util

from nag_jax.convert import common
from nag_jax.convert.common import ConversionError
from nag_jax.storage import weights
from nag_jax.utils import sha256_file

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


# ----------------------------------------------------------------------------------------------
# Sources on the Hugging Face hub, and the diffusers DiT layout
#
# A source ``hf://ORG/NAME[@REVISION][/PATH]`` (huggingface_hub's own URI syntax, parsed by
# ``huggingface_hub.utils.parse_hf_uri``; a https://huggingface.co/... page URL works too) is
# downloaded with ``hf_hub_download`` into the standard cache (HF_HUB_CACHE / HF_HOME; HF_TOKEN
# for gated repos; HF_HUB_OFFLINE=1 reads the cache only). PATH a file (.pt/.pth/.safetensors/.bin):
# that file. PATH a folder or empty: a diffusers DiTTransformer2DModel folder (``config.json`` +
# ``diffusion_pytorch_model.safetensors``, or ``.bin``), by default ``transformer/`` of a diffusers
# pipeline repo such as facebook/DiT-XL-2-256, else the repo root. Only those files are fetched
# (not the VAE or the scheduler).
#
# The diffusers layout -> the releases' keys (diffusers' own DiT conversion copied the release):
#   pos_embed.proj.*                                   x_embedder.proj.*
#   transformer_blocks.0.norm1.emb.timestep_embedder.linear_{1,2}.*   t_embedder.mlp.{0,2}.*
#   transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight
#                                                      y_embedder.embedding_table.weight
#   transformer_blocks.{i}.norm1.emb.*  (i > 0)        copies of block 0's: checked equal, dropped
#   transformer_blocks.{i}.norm1.linear.*              blocks.{i}.adaLN_modulation.1.*
#   transformer_blocks.{i}.attn1.to_{q,k,v}.*          blocks.{i}.attn.qkv.*  (rows [q; k; v])
#   transformer_blocks.{i}.attn1.to_out.0.*            blocks.{i}.attn.proj.*
#   transformer_blocks.{i}.ff.net.0.proj.* / net.2.*   blocks.{i}.mlp.fc1.* / fc2.*
#   proj_out_1.* / proj_out_2.*                        final_layer.adaLN_modulation.1.* / linear.*
# pos_embed is a non-persistent buffer there (not in the file): the input size is config.json's
# sample_size, the heads its num_attention_heads. The result is the release DiT: its forward
# embeds t with frequencies 10000^(-k/128) and uses LayerNorm eps 1e-6 everywhere, as the weights
# were trained. diffusers' port differs in two places that change its outputs, not the weights:
# Timesteps(downscale_freq_shift=1) divides by 127 instead of 128, and the second LayerNorm of
# each block uses config.json's norm_eps (1e-5 when absent, as in facebook/DiT-XL-2-256).

HUB_EXTRA = "convert"
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
RELEASE_NORM_EPS = 1e-6
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")
_EMB = "norm1.emb."
_EMB_KEYS = {
    "timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
    "timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
    "timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
    "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
    "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
}
_BLOCK_KEYS = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_TOP_KEYS = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}


def is_hub_source(src: str) -> bool:
    """True for ``hf://...`` and ``https://huggingface.co/...`` sources."""
    return str(src).startswith(("hf://", "https://huggingface.co/"))


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConversionError(
            f"hub sources (hf://...) need huggingface_hub: pip install 'nag_jax[{HUB_EXTRA}]' "
            "(or pip install huggingface_hub)."
        ) from None
    return huggingface_hub


def fetch_from_hub(uri: str) -> tuple[str, dict]:
    """Downloads a hub source into the standard cache -> (local path, info).

    The local path is a file (PATH names one) or a diffusers model folder; info holds ``hub``
    (``ORG/NAME``), ``hub_revision`` (the commit) and ``hub_path``.
    """
    hub = _huggingface_hub()
    from huggingface_hub import errors

    try:
        u = hub.parse_hf_uri(uri)
    except errors.HfUriError as e:
        raise ConversionError(
            f"{uri} is not a hub model URI ({e}); expected hf://ORG/NAME[@REVISION][/PATH], e.g. "
            "hf://facebook/DiT-XL-2-256."
        ) from None
    if u.type != "model":
        raise ConversionError(f"{uri} names a {u.type}; expected a model repo (hf://ORG/NAME).")
    path = u.path_in_repo.strip("/")

    def download(filename: str) -> str | None:
        try:
            return hub.hf_hub_download(u.id, filename, revision=u.revision)
        except errors.LocalEntryNotFoundError as e:
            if _hub_offline():
                return None  # not in the cache: the caller tries the next candidate
            raise ConversionError(  # online, hub unreachable, and no cached copy
                f"could not reach the Hugging Face hub for {u.id}/{filename} and it is not in the "
                f"local cache ({type(e).__name__}). Check the network (or HF_ENDPOINT); offline, "
                "fill the cache first and set HF_HUB_OFFLINE=1."
            ) from None
        except errors.EntryNotFoundError:
            return None  # not in the repo
        except errors.GatedRepoError:
            raise ConversionError(
                f"{u.id} is gated: accept its terms on huggingface.co and log in "
                "(hf auth login, or set HF_TOKEN)."
            ) from None
        except errors.RepositoryNotFoundError:
            raise ConversionError(
                f"hub repo {u.id} not found (or private: log in with hf auth login / HF_TOKEN)."
            ) from None
        except errors.RevisionNotFoundError:
            raise ConversionError(f"{u.id} has no revision {u.revision!r}.") from None
        except (OSError, ValueError) as e:  # network down, offline without a cached copy, ...
            raise ConversionError(
                f"could not fetch {filename} of {u.id}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}. Offline? HF_HUB_OFFLINE=1 reads "
                "only the local cache (HF_HUB_CACHE)."
            ) from None

    missing = "; it is not in the local hub cache" if _hub_offline() else ""
    if path.endswith(_FILE_SUFFIXES):
        local = download(path)
        if local is None:
            raise ConversionError(f"{uri}: {u.id} has no file {path}{missing}.")
        return local, _hub_info(u, local, path)
    folders = [path] if path else ["transformer", ""]
    for folder in folders:
        cfg = download(f"{folder}/{DIFFUSERS_CONFIG}" if folder else DIFFUSERS_CONFIG)
        if cfg is None:
            continue
        for name in DIFFUSERS_WEIGHTS:
            if download(f"{folder}/{name}" if folder else name):
                return os.path.dirname(cfg), _hub_info(u, cfg, folder)
        raise ConversionError(
            f"{uri}: {folder or 'the repo root'} has a config.json but none of "
            f"{list(DIFFUSERS_WEIGHTS)}{missing}."
        )
    where = " or ".join(f"{f}/{DIFFUSERS_CONFIG}" if f else DIFFUSERS_CONFIG for f in folders)
    raise ConversionError(
        f"{uri}: no diffusers model ({where}){missing}. For a .pt file in the repo give its "
        "path: hf://ORG/NAME/FILE.pt."
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_info(u, local: str, path: str) -> dict:
    parts = os.path.normpath(local).split(os.sep)
    rev = parts[parts.index("snapshots") + 1] if "snapshots" in parts else u.revision
    return dict(hub=u.id, hub_revision=rev, hub_path=path)


def diffusers_folder(path: str) -> str | None:
    """The DiTTransformer2DModel folder at ``path`` (itself or its ``transformer/``), or None."""
    for folder in (path, os.path.join(path, "transformer")):
        if os.path.isfile(os.path.join(folder, DIFFUSERS_CONFIG)):
            return folder
    return None


def read_diffusers_config(folder: str) -> dict:
    """config.json of a diffusers DiT folder, checked to be the DiT architecture the key table
    maps (adaLN-Zero, tanh GELU, attention biases, no norm affine). -> the config dict."""
    import json

    with open(os.path.join(folder, DIFFUSERS_CONFIG)) as f:
        cfg = json.load(f)
    cls = cfg.get("_class_name")
    if cls not in DIFFUSERS_CLASSES:
        raise ConversionError(
            f"{folder}/config.json is a {cls}, expected one of {DIFFUSERS_CLASSES} (the diffusers "
            "DiT). For a pipeline repo, point at its transformer/ folder."
        )
    want = dict(
        norm_type="ada_norm_zero",
        activation_fn="gelu-approximate",
        attention_bias=True,
        norm_elementwise_affine=False,
    )
    bad = {k: cfg.get(k, v) for k, v in want.items() if cfg.get(k, v) != v}
    if bad:
        raise ConversionError(
            f"{folder}/config.json has {bad}; the DiT/SiT architecture needs {want}."
        )
    for k in ("num_attention_heads", "attention_head_dim", "sample_size", "num_embeds_ada_norm"):
        if not isinstance(cfg.get(k), int):
            raise ConversionError(
                f"{folder}/config.json lacks an integer {k!r} (got {cfg.get(k)!r})."
            )
    return cfg


def _diffusers_key_map(keys) -> tuple[dict, dict]:
    """diffusers keys -> ({release key: [source keys]}, {release key: copies to check}).

    qkv gathers to_q / to_k / to_v; unknown keys map to themselves (the strict check lists them).
    """
    table: dict[str, list[str]] = {}
    copies: dict[str, list[str]] = {}
    block_re = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
    for key in keys:
        m = block_re.match(key)
        stem, _, leaf = key.rpartition(".")
        if m is None:
            new = _TOP_KEYS.get(stem)
            table.setdefault(f"{new}.{leaf}" if new else key, []).append(key)
            continue
        i, rest = int(m[1]), m[2]
        rstem, _, leaf = rest.rpartition(".")
        if rest.startswith(_EMB) and rest[len(_EMB) :] in _EMB_KEYS:
            target = _EMB_KEYS[rest[len(_EMB) :]]
            (table.setdefault(target, []) if i == 0 else copies.setdefault(target, [])).append(key)
        elif rstem in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            table.setdefault(f"blocks.{i}.attn.qkv.{leaf}", []).append(key)
        elif rstem in _BLOCK_KEYS:
            table.setdefault(f"blocks.{i}.{_BLOCK_KEYS[rstem]}.{leaf}", []).append(key)
        else:
            table.setdefault(key, []).append(key)
    for k, srcs in table.items():  # q, k, v in that order
        if k.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            order = {"to_q": 0, "to_k": 1, "to_v": 2}
            srcs.sort(key=lambda s: order[s.split(".")[-2]])
            if len(srcs) != 3:
                raise ConversionError(f"{k}: expected to_q, to_k and to_v, found {srcs}.")
    return table, copies


class _DiffusersDict:
    """Lazy view of a diffusers DiT state dict under the releases' keys (numpy on ``pop``)."""

    def __init__(self, src):
        self._src = src
        self._table, self._copies = _diffusers_key_map(src.keys())

    def keys(self):
        return list(self._table)

    def shape(self, key):
        shapes = [tuple(self._src.shape(s)) for s in self._table[key]]
        if len(shapes) == 1:
            return shapes[0]
        return (sum(s[0] for s in shapes),) + shapes[0][1:]

    def _take(self, key) -> np.ndarray:
        t = self._src.pop(key)
        value = np.array(_to_numpy(t), dtype=np.float32)  # private copy: the source can go
        self._src.release(t)
        return value

    def pop(self, key):
        parts = [self._take(s) for s in self._table.pop(key)]
        value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        for copy in self._copies.pop(key, []):  # per-block copies of the shared embedders
            other = self._take(copy)
            if other.shape != value.shape or not np.array_equal(other, value):
                raise ConversionError(
                    f"{copy} differs from block 0's copy: diffusers stores the shared timestep "
                    "and label embedders once per block, and the DiT architecture has one. This "
                    "checkpoint's copies diverged (fine-tuned in diffusers?); it cannot be "
                    "converted exactly."
                )
        return value

    def release(self, t) -> None:
        pass  # pop returned a private copy


def read_diffusers_state_dict(folder: str):
    """A diffusers DiT folder -> (lazy state dict under the releases' keys, info, config)."""
    cfg = read_diffusers_config(folder)
    for name in DIFFUSERS_WEIGHTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            break
    else:
        raise ConversionError(f"{folder} has a config.json but none of {list(DIFFUSERS_WEIGHTS)}.")
    if name.endswith(".safetensors"):
        src = _SafetensorsDict(path)
    else:
        obj, mmapped = _torch_load(path, return_mmapped=True)
        src = _TorchDict(obj, mmapped=mmapped)
    norm_eps = float(cfg.get("norm_eps", 1e-5))
    info = dict(
        source_format="diffusers",
        weights="raw",
        weights_file=path,
        diffusers_class=cfg["_class_name"],
        diffusers_norm_eps=norm_eps,
    )
    return _DiffusersDict(src), info, cfg


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
    from nag_jax.utils import progress_bar

    for key in progress_bar(list(expected), desc="to-orbax: tensors", unit="tensor"):
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
    meta["source"] = path if hub_info else os.path.abspath(path)
    meta["sha256"] = sha256_file(weights_file, progress=True) if compute_sha256 else None
    meta["converter"] = "nag_jax.convert.torch_to_orbax"
    return params, meta


def convert(
    src: str, dest: str, family: str | None = None, *, force: bool = False, **kwargs
) -> dict:
    """File -> Orbax checkpoint at ``dest`` (atomic; refuses existing unless force). -> metadata"""
    weights.check_destination(os.path.abspath(dest), force)  # fail before any heavy work
    params, meta = load_torch_checkpoint(src, family, **kwargs)
    common.to_host_jax_inplace(params)
    weights.save_params(dest, params, meta, force=force)
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        help=".pt/.pth (state dict or train.py dict), .safetensors, a diffusers DiT folder, or "
        "hf://ORG/NAME[@REV][/PATH] (e.g. hf://facebook/DiT-XL-2-256)",
    )
    p.add_argument("dest", help="output Orbax checkpoint directory (must not exist)")
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
