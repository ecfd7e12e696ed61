"""SD-VAE weights: diffusers ``AutoencoderKL`` format <-> Flax params (``nag_jax.models.vae``) and
Orbax.

CLI (discovered by ``python -m nag_jax.convert`` through ``COMMAND`` / ``HELP`` /
``add_arguments`` / ``run``; ``register(subparsers)`` adds it to any other argparse CLI)::

    python -m nag_jax.convert vae --src /path/to/sd-vae-ft-ema --dst /path/to/sd-vae-ft-ema-flax
    python -m nag_jax.convert.vae --src ... --dst ... [--force]      # same, standalone

``--src`` is a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin, e.g.
``hf download stabilityai/sd-vae-ft-ema --local-dir DIR``), or a pipeline folder with
a ``vae/`` subfolder. ``--dst`` receives ``config.json`` (the diffusers config) and ``params/`` (an
Orbax checkpoint of the float32 Flax param tree); ``nag_jax.models.vae.load_vae(dst)`` reads it
back.

The key table and the reading of diffusers folders are the runtime's (``nag_jax.models.vae``:
sampling
and encoding read a diffusers folder directly); this module writes: the converted folder and,
back to the PyTorch side, a diffusers folder (``save_diffusers``).

Conversion is strict: every weight must be used and every shape must match the config; otherwise
``nag_jax.models.vae.VAEWeightsError`` lists the missing / unexpected / mismatched names (and, when
the
weights describe a different network, the config values they imply) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys

import jax
import numpy as np

from nag_jax.convert import common
from nag_jax.models.vae import (
    ORBAX_PARAMS_DIR,
    WEIGHT_FILES,
    AutoencoderKL,
    find_vae_dir,
    load_diffusers,
    state_dict_from_params,
)
from nag_jax.storage import weights

COMMAND = "vae"
HELP = "SD-VAE: diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-ema) -> Orbax"


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def save_orbax(dst: str, config, params, *, force: bool = False) -> str:
    """Writes ``dst/config.json`` + ``dst/params`` (Orbax) atomically; returns abs ``dst``.

    The folder is assembled under a temporary name next to ``dst`` and renamed into place
    (``nag_jax.storage.weights.atomic_publish``), so a failed run leaves nothing at ``dst``. An
    existing
    ``dst`` is refused unless ``force``.
    """
    config = AutoencoderKL(config).config
    params = jax.tree.map(lambda v: np.asarray(v, np.float32), dict(params))

    def write(tmp):
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        weights.save_tree(os.path.join(tmp, ORBAX_PARAMS_DIR), params)

    return weights.atomic_publish(write, dst, force)


def save_diffusers(dst: str, config, params, *, force: bool = False) -> str:
    """Writes a diffusers folder (config.json + diffusion_pytorch_model.safetensors) atomically."""
    from safetensors.numpy import save_file

    config = AutoencoderKL(config).config

    def write(tmp):
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        save_file(state_dict_from_params(params), os.path.join(tmp, WEIGHT_FILES[0]))

    return weights.atomic_publish(write, dst, force)


def convert(src: str, dst: str, *, force: bool = False) -> str:
    """diffusers folder ``src`` -> Orbax directory ``dst`` (checked before anything is written)."""
    weights.check_destination(dst, force)
    try:
        config, params = load_diffusers(src)
    except pickle.UnpicklingError as e:  # a .bin with pickled code: refused, in one line
        raise common.torch_load_error(os.path.join(find_vae_dir(src), WEIGHT_FILES[1]), e) from None
    return save_orbax(dst, config, params, force=force)


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
