"""Shows the tree, shapes, dtypes and parameter count of a checkpoint.

    nag-convert inspect --src SiT-XL-2-256.pt            # raw or train.py dict
    nag-convert inspect --src model.safetensors
    nag-convert inspect --src ckpt/sit_xl2_256 [--json]  # Orbax (converted or trained)
    nag-convert inspect SiT-XL-2-256.pt                  # positional: the same

PyTorch files are opened with ``weights_only=True, mmap=True`` (nothing is unpickled, nothing
loaded); Orbax checkpoints are read from their metadata only (no arrays restored).
"""

from __future__ import annotations

import argparse
import json
import math
import os

COMMAND = "inspect"
HELP = "tree, shapes, dtypes, parameter count of a .pt/.safetensors/Orbax checkpoint"


def _flatten_torch(obj, prefix=""):
    import torch

    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = (tuple(obj.shape), str(obj.dtype).replace("torch.", ""))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten_torch(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten_torch(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def _flatten_metadata(tree) -> dict:
    """{"a/b/0/c": leaf} of a metadata tree of dicts, lists and tuples (an optimizer state is
    lists of dicts, not only dicts); leaves are what has a shape and a dtype."""
    import jax

    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    flat = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
    name = lambda k: str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
    return {"/".join(name(k) for k in path): v for path, v in flat if is_leaf(v)}


def describe(path: str) -> dict:
    """-> {"format", "entries": {name: (shape, dtype)}, "num_params", "metadata"}."""
    from nag_jax.convert.torch_io import check_source_file
    from nag_jax.storage import weights
    from nag_jax.storage.paths import is_remote

    remote_dir = is_remote(path) and not path.endswith((".pt", ".pth", ".safetensors", ".bin"))
    if not (remote_dir or os.path.isdir(path)):
        check_source_file(path)  # missing: said before torch is imported
    if os.path.isdir(path):
        weights.verify(path)  # a file that fails the sha256 manifest: one line naming it
    if remote_dir or os.path.isdir(path):
        try:  # metadata is {} for a params tree without converter metadata
            meta = weights.read_metadata(path)
            tree = weights.params_tree_metadata(path)
        except Exception as e:  # noqa: BLE001
            raise weights.CheckpointError(
                f"{path} is not a readable Orbax checkpoint ({type(e).__name__}: {e})."
            ) from None
        entries = {k: (tuple(v.shape), str(v.dtype)) for k, v in _flatten_metadata(tree).items()}
        fmt = "orbax"
    elif path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            entries = {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                sl = f.get_slice(k)
                entries[k] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            meta = f.metadata() or {}
        fmt = "safetensors"
    else:
        from nag_jax.convert.torch_io import torch_load

        obj = torch_load(path)
        entries = _flatten_torch(obj)
        meta = {}
        if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
            meta = {"train_args": {k: repr(v) for k, v in vars(obj["args"]).items()}}
        fmt = "torch"
    n = sum(math.prod(s) for s, _ in entries.values())
    return {"format": fmt, "entries": entries, "num_params": n, "metadata": meta}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--src (the CLI also takes it as the positional argument)."""
    p.add_argument(
        "--src", required=True, help=".pt/.pth, .safetensors or an Orbax checkpoint directory"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    info = describe(args.src)
    if args.json:
        info = dict(info, entries={k: [list(s), d] for k, (s, d) in info["entries"].items()})
        print(json.dumps(info, indent=1, default=str))
        return 0
    width = max((len(k) for k in info["entries"]), default=10)
    for k, (shape, dtype) in info["entries"].items():
        print(f"{k:<{width}}  {dtype:<9} {shape}")
    if info["metadata"]:
        print("metadata:", json.dumps(info["metadata"], default=str))
    print(
        f"{info['format']}: {len(info['entries'])} arrays, {info['num_params']:,} numbers "
        f"({info['num_params'] * 4 / 2**20:.1f} MiB as float32)"
    )
    return 0
