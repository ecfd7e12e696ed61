"""Sources on the Hugging Face hub, and the diffusers DiT layout.

A source ``hf://ORG/NAME[@REVISION][/PATH]`` (huggingface_hub's own URI syntax, parsed by
``huggingface_hub.utils.parse_hf_uri``; a https://huggingface.co/... page URL works too) is
downloaded with ``hf_hub_download`` into the standard cache (HF_HUB_CACHE / HF_HOME; HF_TOKEN
for gated repos; HF_HUB_OFFLINE=1 reads the cache only, and so does a hub that one TCP
connection cannot reach, instead of huggingface_hub's ~25 s of retries). PATH a file
(.pt/.pth/.safetensors/.bin): that file. PATH a folder or empty: a diffusers
DiTTransformer2DModel folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or
``.bin``), by default ``transformer/`` of a diffusers
pipeline repo such as facebook/DiT-XL-2-256, else the repo root. Only those files are fetched
(not the VAE or the scheduler).

The diffusers layout -> the releases' keys (diffusers' own DiT conversion copied the release):
  pos_embed.proj.*                                   x_embedder.proj.*
  transformer_blocks.0.norm1.emb.timestep_embedder.linear_{1,2}.*   t_embedder.mlp.{0,2}.*
  transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight
                                                     y_embedder.embedding_table.weight
  transformer_blocks.{i}.norm1.emb.*  (i > 0)        copies of block 0's: checked equal, dropped
  transformer_blocks.{i}.norm1.linear.*              blocks.{i}.adaLN_modulation.1.*
  transformer_blocks.{i}.attn1.to_{q,k,v}.*          blocks.{i}.attn.qkv.*  (rows [q; k; v])
  transformer_blocks.{i}.attn1.to_out.0.*            blocks.{i}.attn.proj.*
  transformer_blocks.{i}.ff.net.0.proj.* / net.2.*   blocks.{i}.mlp.fc1.* / fc2.*
  proj_out_1.* / proj_out_2.*                        final_layer.adaLN_modulation.1.* / linear.*
pos_embed is a non-persistent buffer there (not in the file): the input size is config.json's
sample_size, the heads its num_attention_heads. The result is the release DiT: its forward
embeds t with frequencies 10000^(-k/128) and uses LayerNorm eps 1e-6 everywhere, as the weights
were trained. diffusers' port differs in two places that change its outputs, not the weights:
Timesteps(downscale_freq_shift=1) divides by 127 instead of 128, and the second LayerNorm of
each block uses config.json's norm_eps (1e-5 when absent, as in facebook/DiT-XL-2-256).

Time conventions do not enter here (weights only).
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse

import numpy as np

from nag_jax.convert.common import ConversionError
from nag_jax.convert.torch_io import SafetensorsDict, TorchDict, to_numpy, torch_load

HUB_EXTRA = "convert"
HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connection to HF_ENDPOINT before any download
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
    from huggingface_hub import constants, errors

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
    endpoint = constants.ENDPOINT
    unreachable = None if _hub_offline() else hub_unreachable(endpoint)
    local_only = _hub_offline() or unreachable is not None  # read the cache, no retries

    def download(filename: str) -> str | None:
        try:
            return hub.hf_hub_download(
                u.id, filename, revision=u.revision, local_files_only=local_only
            )
        except errors.LocalEntryNotFoundError as e:
            if local_only:
                return None  # not in the cache: the caller tries the next candidate
            raise ConversionError(  # the probe connected, the request failed: no cached copy
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

    def not_found(what: str, files: str, hint: str = "") -> ConversionError:
        """``what`` (the error when the hub answered or HF_HUB_OFFLINE is set); ``files``: what
        is missing from the cache, for the hub-unreachable line."""
        if unreachable:
            return ConversionError(
                f"{uri}: {files} not in the local hub cache, and could not reach the Hugging "
                f"Face hub at {endpoint} ({unreachable}). Connect to the network (or set "
                f"HF_ENDPOINT / HTTPS_PROXY), or fill the cache where the hub is reachable "
                f"(hf download {u.id}) and set HF_HUB_OFFLINE=1."
            )
        missing = "; it is not in the local hub cache" if local_only else ""
        return ConversionError(f"{uri}: {what}{missing}.{hint}")

    if path.endswith(_FILE_SUFFIXES):
        local = download(path)
        if local is None:
            raise not_found(f"{u.id} has no file {path}", f"{path} is")
        return local, _hub_info(u, local, path)
    folders = [path] if path else ["transformer", ""]
    for folder in folders:
        cfg = download(f"{folder}/{DIFFUSERS_CONFIG}" if folder else DIFFUSERS_CONFIG)
        if cfg is None:
            continue
        names = [f"{folder}/{n}" if folder else n for n in DIFFUSERS_WEIGHTS]
        for name in names:
            if download(name):
                return os.path.dirname(cfg), _hub_info(u, cfg, folder)
        raise not_found(
            f"{folder or 'the repo root'} has a config.json but none of {list(DIFFUSERS_WEIGHTS)}",
            f"{' and '.join(names)} are",
        )
    where = " or ".join(f"{f}/{DIFFUSERS_CONFIG}" if f else DIFFUSERS_CONFIG for f in folders)
    raise not_found(
        f"no diffusers model ({where})",
        f"{where} is",
        " For a .pt file in the repo give its path: hf://ORG/NAME/FILE.pt.",
    )


def hub_unreachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the hub ``endpoint`` opens within ``timeout`` seconds, else
    the reason (e.g. ``"gaierror: [Errno -2] Name or service not known"``).

    Without a network huggingface_hub retries each request with backoff (about 25 s) before it
    gives up; this one attempt tells at once, and the download then reads only the cache. Behind
    a proxy (HTTPS_PROXY / ALL_PROXY) a direct connection proves nothing: no probe."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


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
        value = np.array(to_numpy(t), dtype=np.float32)  # private copy: the source can go
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
        src = SafetensorsDict(path)
    else:
        obj, mmapped = torch_load(path, return_mmapped=True)
        src = TorchDict(obj, mmapped=mmapped)
    norm_eps = float(cfg.get("norm_eps", 1e-5))
    info = dict(
        source_format="diffusers",
        weights="raw",
        weights_file=path,
        diffusers_class=cfg["_class_name"],
        diffusers_norm_eps=norm_eps,
    )
    return _DiffusersDict(src), info, cfg
