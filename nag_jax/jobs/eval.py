"""mode "eval": sample N images (resumable) -> ADM-format .npz -> FID / sFID / IS / P / R.

    python -m nag_jax.main --config=configs/eval_sit_xl.py --workdir=runs/eval \
        --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.eval.inception_path=fid.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz --config.sample.nag_scale=1.5

Image i is image i of config.seed as nag_jax.sampling.generate defines it (the same image as mode
"sample" draws), so the set is the same on 1 device or a pod, with any batch size, and resuming
is trivial. The pieces: nag_jax.evaluation.samples (the sample set's identity and directory,
resumable sampling), nag_jax.evaluation.store (chunks -> ADM .npz), nag_jax.evaluation.evaluators
(extractor, reference, scoring) and nag_jax.evaluation.results (rows and files). The workdir, the
weights, the samples and the results file may be local or remote (``gs://``;
nag_jax.storage.paths).

Time conventions: none of its own (nag_jax.sampling.build).
"""

from __future__ import annotations

from absl import logging

from nag_jax import parallel
from nag_jax.config import schema
from nag_jax.evaluation import evaluators, reference_stats, results, samples
from nag_jax.storage import workdir as workdir_lib
from nag_jax.storage.paths import as_path
from nag_jax.utils import moved_names


def run(config, workdir: str, **overrides) -> dict:
    """mode "eval": sample (resumable) -> ADM .npz -> metrics -> one results row (returned),
    with the workdir locked (a second job on the same workdir fails at once, naming the holder).

    With ``config.eval.samples`` set to an existing ADM .npz, sampling is skipped and that file
    is scored (the row's key then hashes the file's path, size and mtime).

    ``overrides`` (tests / notebooks): model, params, mesh, sample_fn, decode, on_chunk,
    extractor.
    """
    schema.validate(config)
    parallel.maybe_initialize_distributed()
    with workdir_lib.locked(workdir, job="eval") as locked_workdir:
        return _run(config, locked_workdir, **overrides)


def _run(config, workdir: str, **overrides) -> dict:
    ec = config.eval
    extractor = overrides.pop("extractor", None) or evaluators.build_extractor(config)
    if ec.samples:  # score an existing ADM-format .npz (e.g. from the releases' sample_ddp)
        if not as_path(ec.samples).exists():
            raise FileNotFoundError(f"config.eval.samples={ec.samples!r} does not exist")
        file_id = reference_stats.file_identity(ec.samples)
        samples_path = file_id.pop("source")
        identity = {"samples_file": samples_path, **file_id}
    else:
        samples_path, _, identity = samples.sample_images(config, workdir, **overrides)
    values = evaluators.score_npz(config, workdir, samples_path, extractor)
    n = int(reference_stats.npz_array_shape(samples_path)[0][0])
    row = results.result_row(config, extractor, values, samples_path, identity, n)
    results.append_result(ec.results_file or str(as_path(workdir) / "eval_results.jsonl"), row)
    tag = "" if extractor.is_fid_inception else " [NOT FID-Inception: relative numbers only]"
    shown = results.metric_names(values, extractor.is_fid_inception)
    logging.info("eval %s: %s%s", row["key"], shown, tag)
    return row


# Names that moved (issue 21): a one-line error naming the new home.
__getattr__ = moved_names(
    __name__,
    {
        "weights_path": "nag_jax.evaluation.samples.weights_path",
        "sampling_identity": "nag_jax.evaluation.samples.sampling_identity",
        "params_fingerprint": "nag_jax.evaluation.samples.params_fingerprint",
        "load_sampling_params": "nag_jax.evaluation.samples.load_sampling_params",
        "sample_images": "nag_jax.evaluation.samples.sample_images",
    },
)
