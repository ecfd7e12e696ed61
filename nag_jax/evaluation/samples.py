"""The evaluation sample set of a config: what image i depends on, and the resumable sampling of
images 0..N-1 into ``<workdir>/eval/<digest>`` (modes "eval" and "sweep", the sample/eval
agreement test).

Layout: run_dir = <workdir>/eval/<digest of the sampling identity>: everything image i depends on
(model, weights path and a fingerprint of the params, process, sample settings except batch size
and counts, seed, VAE). run_dir/sampling.json holds that identity; the chunks and the
samples_<N>.npz of nag_jax.evaluation.store sit beside it. Image i is image i of config.seed as
nag_jax.sampling.generate defines it, so the set is the same on 1 device or a pod, with any batch
size, and resuming is trivial. Paths may be local or remote (``gs://``; nag_jax.storage.paths).

Time conventions: none of its own (nag_jax.sampling.build).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import jax
import numpy as np

from nag_jax import parallel
from nag_jax.errors import ConfigError
from nag_jax.evaluation import results, store
from nag_jax.sampling import build, generate
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


def load_sampling_params(config):
    """The params at ``config.model.weights`` (converted release or training checkpoints/; the
    one loader, nag_jax.storage.weights.load_params); with Domain Guidance (sample.dog_scale !=
    1) paired with config.model.domain_weights (``build.with_domain_params``)."""
    from nag_jax.storage.weights import load_params

    path = weights_path(config)
    if not path:
        raise ConfigError(
            "No weights to evaluate: set config.model.weights to a converted release "
            "(python -m nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ "
            "directory (its latest EMA params are used)."
        )
    return build.with_domain_params(config, load_params(path)[0])


def sample_images(
    config,
    workdir: str,
    *,
    model=None,
    params=None,
    mesh=None,
    sample_fn: Callable | None = None,
    decode: tuple[Callable, object] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[str, str, dict]:
    """Samples ``config.eval.num_images`` images (resumable) -> (ADM .npz path, run_dir,
    identity). ``identity`` (run_dir/sampling.json) is `sampling_identity` plus a fingerprint of
    the params, so a checkpoint directory whose latest step changed never reuses stale samples.
    ``model`` / ``params`` / ``mesh`` / ``sample_fn`` / ``decode`` default to the config's
    (``build.build_model``, `load_sampling_params`, ``parallel.create_mesh``,
    ``build.build_sampler``, ``build.build_decoder``).
    """
    num_images = int(config.eval.num_images)
    if params is None:
        params = load_sampling_params(config)
    identity = {**sampling_identity(config), "params": params_fingerprint(params)}
    run = as_path(workdir) / "eval" / results.digest(identity)
    run_dir, out_path = str(run), str(run / f"samples_{num_images}.npz")
    if as_path(out_path).exists():
        return out_path, run_dir, identity
    mesh = mesh if mesh is not None else parallel.create_mesh(config.parallel)
    if jax.process_index() == 0:
        run.mkdir(parents=True, exist_ok=True)
        text = json.dumps(identity, indent=2, sort_keys=True, default=str)
        (run / "sampling.json").write_text(text)
    model = model if model is not None else build.build_model(config.model)
    decode = decode if decode is not None else build.build_decoder(config)
    bs = generate.padded_batch_size(int(config.eval.batch_size), mesh)
    run_batch = generate.make_batch_sampler(
        config, model, params, mesh, sample_fn=sample_fn, decode=decode
    )
    params = run_batch.place(params)
    sample = lambda idx: run_batch(params, idx)
    store.sample_to_chunks(sample, run_dir, num_images, bs, on_chunk=on_chunk)
    if jax.process_index() == 0:
        store.chunks_to_adm_npz(run_dir, num_images, out_path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("nag_jax.eval_job.samples_written")
    return out_path, run_dir, identity
