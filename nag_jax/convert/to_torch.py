r"""Orbax checkpoint (converted or trained DiT/SiT params) -> PyTorch state dict in the releases'
key layout (pos_embed included), as .pt (``torch.save`` of the state dict) or .safetensors.

    nag-convert to-torch --src ckpt/sit_xl2_256 --dst SiT-XL-2-256.pt
    nag-convert to-torch --src ckpt/sit_xl2_256 --dst sit.safetensors   # needs no torch
    nag-convert to-torch --src runs/sit_xl/checkpoints --dst sit_nag.pt --family SiT \
        --input-size 32                  # a training checkpoint (latest EMA params)
    nag-convert to-torch ckpt/sit_xl2_256 SiT-XL-2-256.pt              # positional: the same

The file loads into the releases' ``models.py`` with ``model.load_state_dict(sd)``; a learned
NAG ``null_noise_token`` (D,) is exported under that key (load it with ``strict=False`` into a
release model, or into a model that defines the parameter). torch -> orbax -> torch is bit-exact
for float32 sources. The writer's package (torch for .pt/.pth, safetensors for .safetensors) is
imported before anything is read, so a missing one is reported at once. Time conventions do not
enter here (weights only).
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import traverse_util

from nag_jax.convert import common
from nag_jax.convert.common import ConversionError
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path

COMMAND = "to-torch"
HELP = "Orbax DiT/SiT checkpoint -> PyTorch .pt / .safetensors (releases' keys)"


def params_to_state_dict(params, metadata, *, consume: bool = False) -> dict[str, np.ndarray]:
    """Flax params + metadata -> {releases' key: float32 numpy array in torch layout}.

    Strict: every parameter must be used and every key filled (errors name them).
    consume: remove each leaf from ``params`` once converted (keeps peak memory at ~1 tree).
    """
    from nag_jax.models.embeddings import get_2d_sincos_pos_embed

    arch = common.Architecture.from_metadata(metadata)
    leaves = traverse_util.flatten_dict(params, sep="/")
    if "null_noise_token" in leaves and not arch.null_noise_token:
        arch = common.Architecture.from_metadata({**metadata, "null_noise": "learned"})
    expected = common.torch_shapes(arch)
    expected.pop("pos_embed")
    by_flax = {"/".join(common.flax_path(k)): k for k in expected}
    want = {
        "/".join(common.flax_path(k)): common.to_flax(k, np.empty(s, np.float32)).shape
        for k, s in expected.items()
    }
    shapes = {k: tuple(np.shape(v)) for k, v in leaves.items()}
    try:
        common.check_keys(shapes, want)
    except ConversionError as e:
        raise ConversionError(f"params tree does not match metadata {arch}: {e}") from None
    sd = {"pos_embed": get_2d_sincos_pos_embed(arch.hidden_size, arch.grid)[None]}
    from nag_jax.utils import progress_bar

    for fk, tk in progress_bar(by_flax.items(), total=len(by_flax), desc="to-torch", unit="tensor"):
        value = common.to_torch_layout(tk, np.asarray(leaves.pop(fk), dtype=np.float32))
        sd[tk] = value if value.flags.writeable else value.copy()  # torch wants writable
        if consume:
            *parents, last = fk.split("/")
            node = params
            for p in parents:
                node = node[p]
            del node[last]
    return sd


SUFFIXES = (".pt", ".pth", ".safetensors")


def writer(dest: str):
    """The function that writes a {key: array} dict to ``dest`` (by its suffix), with its package
    imported now: a bad name or a missing package is reported before any conversion work.

    .pt/.pth: ``torch.save`` of a dict of tensors (needs torch). .safetensors:
    ``safetensors.numpy.save_file`` (the same file ``safetensors.torch`` writes, without torch).
    """
    if not str(dest).endswith(SUFFIXES):
        raise ConversionError(f"destination {dest}: expected a .pt, .pth or .safetensors name.")
    if str(dest).endswith(".safetensors"):
        from safetensors.numpy import save_file

        return lambda sd, path: save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
    import torch

    return lambda sd, path: torch.save(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path
    )


def save_state_dict(sd: dict[str, np.ndarray], dest: str, *, force: bool = False) -> None:
    """Writes .pt (torch.save of a dict of tensors) or .safetensors, atomically."""
    write = writer(dest)
    weights.atomic_publish(lambda tmp: write(sd, tmp), dest, force)


def export(
    src: str,
    dest: str,
    *,
    force: bool = False,
    family: str | None = None,
    input_size: int | None = None,
    num_heads: int | None = None,
) -> dict:
    """Orbax checkpoint at ``src`` -> PyTorch file ``dest``. Returns the metadata.

    ``src``: any layout of ``nag_jax.storage.weights.load_params``: a converted checkpoint (its
    metadata fixes the architecture), or a params tree without metadata such as a training run's
    checkpoints/ directory (latest step's EMA params), for which ``family`` and ``input_size``
    (and ``num_heads`` for custom widths) are needed.
    """
    writer(dest)  # the suffix and the writer's package, before any heavy work
    weights.check_destination(dest, force)
    params, meta = weights.load_params(src)
    if not meta:
        if family is None or input_size is None:
            raise ConversionError(
                f"{src} has no converter metadata (a training checkpoint?); pass --family "
                "(DiT|SiT) and --input-size (e.g. 32 for 256px latents)."
            )
        arch = common.infer_architecture_from_params(
            params, family, input_size=input_size, num_heads=num_heads
        )
        meta = dict(arch.metadata(), source=str(as_path(src)))
    sd = params_to_state_dict(params, meta, consume=True)
    del params
    save_state_dict(sd, dest, force=force)
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--src/--dst (the CLI also takes them as the two positional arguments)."""
    p.add_argument(
        "--src", required=True, help="Orbax checkpoint directory written by to-orbax / save_params"
    )
    p.add_argument("--dst", required=True, help="output .pt/.pth or .safetensors (must not exist)")
    p.add_argument("--force", action="store_true", help="replace dst (after the new is complete)")
    p.add_argument("--family", choices=["DiT", "SiT"], help="only for sources without metadata")
    p.add_argument("--input-size", type=int, help="only for sources without metadata (e.g. 32)")
    p.add_argument("--num-heads", type=int, help="only for custom widths without metadata")


def run(args: argparse.Namespace) -> int:
    meta = export(
        args.src,
        args.dst,
        force=args.force,
        family=args.family,
        input_size=args.input_size,
        num_heads=args.num_heads,
    )
    print(f"wrote {as_path(args.dst)} ({meta.get('model')}, releases' key layout)")
    return 0
