"""The ADM evaluation protocol as a config block, shared by configs/eval_sit_xl.py and
configs/eval_dit_xl.py (ml_collections only, so config files stay cheap to load).

50k samples scored like openai/guided-diffusion's evaluator: FID Inception with TF-graph
preprocessing, FID/sFID against the reference batch's stored full-train-set statistics,
precision/recall (k = 3) from its 10k images, IS over 10 splits.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def adm_eval_config() -> ml_collections.ConfigDict:
    """``config.eval`` for 50k-sample ImageNet evaluation (see nag_jax.evaluation.eval_job)."""
    return ml_collections.ConfigDict(
        dict(
            checkpoint=placeholder(str),  # converted release / training workdir checkpoints/ (EMA)
            vae=placeholder(str),  # SD-VAE folder (sd-vae-ft-ema) or converted Orbax dir
            vae_chunk_size=8,
            num_images=50_000,
            batch_size=256,  # global; padded to a multiple of the devices
            extractor="inception",
            inception_path=placeholder(str),
            # ADM protocol: TF-graph preprocessing + the reference batch's stored full-train-set
            # mu/sigma for FID/sFID; precision/recall from its 10k arr_0 images.
            inception_preprocess="adm_tf",  # or "pytorch_fid"
            reference_stats="precomputed",  # or "images" (all statistics from arr_0)
            reference=placeholder(str),  # ADM reference batch .npz or "dataset"
            reference_num_images=placeholder(int),
            reference_seed=0,
            cache_dir=placeholder(str),  # default <workdir>/reference_cache
            feature_batch_size=200,
            pr_k=3,
            pr_block_size=10000,
            is_splits=10,
            samples=placeholder(str),  # an existing ADM .npz to score instead of sampling
            results_file=placeholder(str),  # default <workdir>/eval_results.jsonl (+ .csv)
            train_num_images=1000,  # make_fid_evaluator during training
        )
    )
