"""The ADM evaluation protocol as ``config.eval`` values, shared by configs/eval_sit_xl.py and
configs/eval_dit_xl.py (the keys and their meaning: nag_jax.config.schema).

50k samples scored like openai/guided-diffusion's evaluator: FID Inception with TF-graph
preprocessing, FID/sFID against the reference batch's stored full-train-set statistics,
precision/recall (k = 3) from its 10k images, IS over 10 splits.
"""

from __future__ import annotations

ADM_EVAL = dict(
    num_images=50_000,
    batch_size=256,  # global; padded to a multiple of the devices
    extractor="inception",
    # ADM protocol: TF-graph preprocessing + the reference batch's stored full-train-set
    # mu/sigma for FID/sFID; precision/recall from its 10k arr_0 images.
    inception_preprocess="adm_tf",
    reference_stats="precomputed",
    feature_batch_size=200,
    pr_k=3,
    pr_block_size=10_000,
    is_splits=10,
    train_num_images=1000,  # the trainer's evaluator
)
