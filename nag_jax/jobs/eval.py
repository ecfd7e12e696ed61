"""mode "eval": sample N images (resumable) -> ADM-format .npz -> FID / sFID / IS / P / R.

    python -m nag_jax.main --config=configs/eval_sit_xl.py --workdir=runs/eval \
        --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.eval.inception_path=fid.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz --config.sample.nag_scale=1.5

Image i is image i of config.seed as nag_jax.sampling.generate defines it (the same image as mode
"sample"
draws), so the set is the same on 1 device or a pod, with any batch size, and resuming is
trivial. The pieces: nag_jax.sampling.generate (keys, labels, the sharded batch sampler, the VAE
decoder),
nag_jax.evaluation.store (chunks -> ADM .npz), nag_jax.evaluation.evaluators (extractor,
reference, scoring) and nag_jax.evaluation.results (rows and files).

Layout: run_dir = <workdir>/eval/<digest of the sampling identity>: everything image i depends on
(model, weights path and a fingerprint of the params, process, sample settings except batch size
and counts, seed, VAE). run_dir/sampling.json holds that identity; the chunks and the
samples_<N>.npz of nag_jax.evaluation.store sit beside it. The workdir, the weights, the samples
and the results file may be local or remote (``gs://``; nag_jax.storage.paths).

Time conventions: none of its own (nag_jax.sampling.build: SiT float t, 0 = noise; DiT integer step,
0 = least noise; guidance intervals in noise level, 1 = pure noise).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.config import schema
from nag_jax.evaluation import evaluators, reference_stats, results, store
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
    """The params at ``config.model.weights`` (converted release or training checkpoints/); with
    Domain Guidance (sample.dog_scale != 1) paired with config.model.domain_weights
    (`generate.with_domain_params`)."""
    path = weights_path(config)
    if not path:
        raise schema.ConfigError(
            "No weights to evaluate: set config.model.weights to a converted release "
            "(python -m nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ "
            "directory (its latest EMA params are used)."
        )
    return generate.with_domain_params(config, generate.load_weights(path)[0])


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
    decode = decode if decode is not None else generate.load_decoder(config)
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


def run(config, workdir: str, **overrides) -> dict:
    """mode "eval": :func:`_run` with the workdir locked (nag_jax.storage.workdir: a second job on
    the
    same workdir fails at once, naming the holder)."""
    from nag_jax.storage import workdir as workdir_lib

    schema.validate(config)
    parallel.maybe_initialize_distributed()
    with workdir_lib.locked(workdir, job="eval") as locked_workdir:
        return _run(config, locked_workdir, **overrides)


def _run(config, workdir: str, **overrides) -> dict:
    """mode "eval": sample (resumable) -> ADM .npz -> metrics -> one results row (returned).

    With ``config.eval.samples`` set to an existing ADM .npz, sampling is skipped and that file
    is scored (the row's key then hashes the file's path, size and mtime).

    ``overrides`` (tests / notebooks): model, params, mesh, sample_fn, decode, on_chunk,
    extractor.
    """
    schema.validate(config)
    parallel.maybe_initialize_distributed()
    ec = config.eval
    extractor = overrides.pop("extractor", None) or evaluators.build_extractor(config)
    if ec.samples:  # score an existing ADM-format .npz (e.g. from the releases' sample_ddp)
        if not as_path(ec.samples).exists():
            raise FileNotFoundError(f"config.eval.samples={ec.samples!r} does not exist")
        file_id = reference_stats.file_identity(ec.samples)
        samples_path = file_id.pop("source")
        identity = {"samples_file": samples_path, **file_id}
    else:
        samples_path, _, identity = sample_images(config, workdir, **overrides)
    values = evaluators.score_npz(config, workdir, samples_path, extractor)
    n = int(reference_stats.npz_array_shape(samples_path)[0][0])
    row = results.result_row(config, extractor, values, samples_path, identity, n)
    results.append_result(ec.results_file or str(as_path(workdir) / "eval_results.jsonl"), row)
    tag = "" if extractor.is_fid_inception else " [NOT FID-Inception: relative numbers only]"
    shown = results.metric_names(values, extractor.is_fid_inception)
    logging.info("eval %s: %s%s", row["key"], shown, tag)
    return row
