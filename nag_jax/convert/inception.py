"""pytorch-fid Inception weights (.pth) -> Flax params (.npz or a params directory).

    python -m nag_jax.convert inception --src pt_inception-2015-12-05-6726825d.pth --dst fid.npz

Source file: `pt_inception-2015-12-05-6726825d.pth` from the pytorch-fid GitHub release
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/...), a raw state dict of
torchvision's Inception3 with the FID patches, 1008 classes, no AuxLogits.

The key table, the .pth reader and the strict check sit beside the model
(`nag_jax.evaluation.inception.params_from_state_dict` / `read_flat_params`; evaluation also reads
the .pth directly); this module writes the result: a .npz of flat '/'-joined keys, or for any
other path a params directory in the one layout of `nag_jax.storage.weights.save_params`. Every
expected
key must be present with the expected shape and nothing else may be there (torchvision's ImageNet
Inception, a DiT checkpoint, ... are rejected with the reason). Nothing is written on error.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from flax import traverse_util

from nag_jax.evaluation.inception import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    read_flat_params,
)
from nag_jax.storage import weights

COMMAND = "inception"
HELP = "pytorch-fid FID Inception .pth -> Flax params (.npz or Orbax dir)"


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
            f"{INCEPTION_WEIGHTS_URL}"
        )
    flat = read_flat_params(src)
    save_flat_params(flat, dst, source=src)
    return flat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, help=INCEPTION_WEIGHTS_FILE)
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
