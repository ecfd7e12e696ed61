"""Checkpoint conversion, the PyTorch side: DiT/SiT releases <-> Orbax, SD-VAE, FID Inception.

This package holds only what touches PyTorch files: the DiT/SiT key table (``common``), reading
and writing .pt/.safetensors, and the CLI. The on-disk layout, the one loader and the atomic
publish are the runtime's (``nag_jax.storage.weights``); the VAE and Inception key tables sit
beside their
models (``nag_jax.models.vae``, ``nag_jax.evaluation.inception``), which read the releases' files
directly. The runtime never imports this package.

Python API (torch is imported only by the functions that read or write PyTorch files):

    from nag_jax.convert import load_torch_checkpoint, create_model_from_metadata
    from nag_jax.storage.weights import load_params, save_params
    params, meta = load_torch_checkpoint("SiT-XL-2-256.pt", "SiT")   # no file written
    params, meta = load_torch_checkpoint("hf://facebook/DiT-XL-2-256")  # hub, diffusers layout
    save_params("ckpt/sit", params, meta)                            # Orbax, atomic
    params, meta = load_params("ckpt/sit")                           # numpy leaves
    model = create_model_from_metadata(meta, dtype="bfloat16")       # the matching flax module

CLI: ``nag-convert {to-orbax,to-torch,inspect,vae,inception} --src ... [--dst ...]`` (``cli``;
``python -m nag_jax.convert`` is the same). Modules: ``torch_io`` (reading .pt / .safetensors
safely), ``hub`` (hf:// sources, diffusers DiT folders), ``to_orbax`` (PyTorch -> Orbax),
``to_torch`` (Orbax -> PyTorch), ``vae``, ``inception``, ``inspect``, ``common`` (the key table).
"""

from nag_jax.convert.common import Architecture, ConversionError, create_model_from_metadata


def load_torch_checkpoint(path, family=None, **kwargs):
    """See :func:`nag_jax.convert.to_orbax.load_torch_checkpoint`."""
    from nag_jax.convert.to_orbax import load_torch_checkpoint as _load

    return _load(path, family, **kwargs)


def export_torch(src, dest, *, force=False):
    """See :func:`nag_jax.convert.to_torch.export`."""
    from nag_jax.convert.to_torch import export

    return export(src, dest, force=force)


__all__ = [
    "Architecture",
    "ConversionError",
    "create_model_from_metadata",
    "export_torch",
    "load_torch_checkpoint",
]
