"""pytorch-fid Inception weights (.pth) -> Flax params (.npz or Orbax directory).

    python -m nag_jax.convert inception --src pt_inception-2015-12-05-6726825d.pth --dst fid.npz

Source file: `pt_inception-2015-12-05-6726825d.pth` from the pytorch-fid GitHub release
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/...), a raw state dict of
torchvision's Inception3 with the FID patches, 1008 classes, no AuxLogits.

Key mapping (Flax names mirror the PyTorch keys, '.' -> '/'):
  {m}.conv.weight (O, I, kh, kw)    -> {m}/conv/kernel (kh, kw, I, O)
  {m}.bn.weight / .bias             -> {m}/bn/scale / bias
  {m}.bn.running_mean / running_var -> {m}/bn/mean / var      ({m}.bn.num_batches_tracked dropped)
  fc.weight (1008, 2048) / fc.bias  -> fc/kernel (2048, 1008) / fc/bias
Every expected key must be present with the expected shape and nothing else may be there
(torchvision's ImageNet Inception, a DiT checkpoint, ... are rejected with the reason).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    return tree


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a raw PyTorch state dict (weights only) as numpy arrays."""
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path!r} is not a readable PyTorch state dict ({type(e).__name__}: {e}). Expected "
            "pytorch-fid's pt_inception-2015-12-05-6726825d.pth."
        ) from e
    if not isinstance(sd, dict) or not all(hasattr(v, "numpy") for v in sd.values()):
        raise ValueError(
            f"{path!r} does not hold a flat state dict of tensors (got {type(sd).__name__} with "
            f"keys {list(sd)[:5] if isinstance(sd, dict) else '-'}). Expected pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth."
        )
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def convert_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Torch state dict -> flat Flax params (mapping only; check_flat_params checks)."""
    flat = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if key == "fc.weight":
            flat["fc/kernel"] = np.ascontiguousarray(value.T)
        elif key == "fc.bias":
            flat["fc/bias"] = value
        elif len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight" and value.ndim == 4:
            flat["/".join(parts[:-1]) + "/kernel"] = np.ascontiguousarray(
                value.transpose(2, 3, 1, 0)
            )
        elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_NAMES:
            flat["/".join(parts[:-1]) + "/" + _BN_NAMES[parts[-1]]] = value
        else:
            flat["!unmapped:" + key] = value
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    import jax

    from nag_jax.evaluation.inception import param_shapes

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes())[0]:
        out["/".join(str(p.key) for p in path)] = tuple(leaf.shape)
    return out


def check_flat_params(flat: dict[str, np.ndarray], source: str = "<params>") -> None:
    """Raises ValueError unless `flat` has exactly the FID Inception keys and shapes."""
    expected = expected_shapes()
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(k.replace("!unmapped:", "torch key ") for k in set(flat) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(flat[k].shape)} (expected {expected[k]})"
        for k in set(expected) & set(flat)
        if tuple(flat[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source!r} is not the pytorch-fid FID Inception (pt_inception-2015-12-05-6726825d.pth"
            f"): {len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:4]}, {len(wrong)} wrong shapes {wrong[:4]}. torchvision's ImageNet "
            "Inception (1000 classes, AuxLogits) is a different network; get the FID weights from "
            "https://github.com/mseitzer/pytorch-fid/releases (fid_weights)."
        )
    bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"{source!r} has non-finite values in {bad[:4]}")


def save_params(flat: dict[str, np.ndarray], dst: str) -> None:
    """.npz (flat '/' keys, written atomically) or, for any other path, an Orbax directory."""
    if dst.endswith(".npz"):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        tmp = f"{dst[:-4]}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **flat)
        os.replace(tmp, dst)
    else:
        import orbax.checkpoint as ocp

        ocp.PyTreeCheckpointer().save(os.path.abspath(dst), {"params": unflatten(flat)})


def convert(src: str, dst: str) -> dict[str, np.ndarray]:
    """Converts and checks; returns the flat params written to dst."""
    if not os.path.exists(src):
        raise FileNotFoundError(
            f"--src {src!r} does not exist. Download pt_inception-2015-12-05-6726825d.pth from "
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth"
        )
    flat = convert_state_dict(load_torch_state_dict(src))
    check_flat_params(flat, source=src)
    save_params(flat, dst)
    return flat


COMMAND = "inception"
HELP = "pytorch-fid FID Inception .pth -> Flax params (.npz or Orbax dir)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--dst", required=True, help="output .npz file or Orbax directory")


def run(args: argparse.Namespace) -> int:
    flat = convert(args.src, args.dst)
    n = sum(int(v.size) for v in flat.values())
    print(f"wrote {len(flat)} arrays ({n:,} numbers) to {args.dst}")
    return 0


def register(subparsers) -> None:
    """Adds the subcommand to an argparse subparsers object (nag_jax.convert.__main__ discovers
    COMMAND / HELP / add_arguments / run instead; this is for other CLIs)."""
    p = subparsers.add_parser(COMMAND, help=HELP)
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    a = parser.parse_args()
    a.func(a)
