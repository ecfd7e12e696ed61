"""The evaluation sample set of a config: what image i depends on (modes "eval" and "sweep").

Everything image i depends on: model, weights path and a fingerprint of the params, process,
sample settings except batch size and counts, seed, VAE. Image i is image i of config.seed as
nag_jax.sampling.generate defines it, so the set is the same on 1 device or a pod, with any batch
size. Paths may be local or remote (``gs://``; nag_jax.storage.paths).

Time conventions: none of its own (nag_jax.sampling.build).
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

from nag_jax.storage.paths import as_path

# sample.* keys that do not change image i
_NOT_IDENTITY = ("batch_size", "num_images", "return_trajectory", "grid_images", "grid_cols")


def weights_path(config) -> str | None:
    """``config.model.weights`` as an absolute path or a remote URI (None if unset)."""
    return str(as_path(config.model.weights)) if config.model.weights else None


def sampling_identity(config) -> dict:
    """Everything image i depends on (not the batch size, not N, not the device count)."""
    sample = {k: v for k, v in config.sample.to_dict().items() if k not in _NOT_IDENTITY}
    return {
        "model": config.model.to_dict(),
        "process": config.process.to_dict(),
        "sample": sample,
        "seed": int(config.seed),
        "weights": weights_path(config),
        "vae": config.vae.path,
    }


def params_fingerprint(params) -> str:
    """sha256 over every leaf's path and shape and the bytes of the leaves up to 1M numbers
    (biases, embeddings' small parts, final layer...: any training step changes them)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(tuple(np.shape(leaf))).encode())
        fully = getattr(leaf, "is_fully_addressable", True)
        if np.size(leaf) <= 1 << 20 and fully:
            h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]
