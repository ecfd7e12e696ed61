"""Evaluate the pixel-space synthetic-shapes demo model with a proxy feature extractor.

    python -m nag_jax.main --config=configs/eval_demo.py --workdir=runs/demo_eval \
        --config.model.weights=runs/demo/checkpoints \
        --config.eval.proxy_path=runs/demo/proxy_classifier_cnn4-800.npz --config.sample.nag_scale=1.0

The FID Inception weights are not available here, so the features come from the demo's small
shapes classifier (config.eval.extractor="proxy": nag_jax.evaluation.proxy.build_extractor).
The numbers land in the proxy_fd / proxy_score / proxy_precision / proxy_recall columns of the
results row (the fid/IS columns stay empty, is_fid_inception=false): they compare runs of THIS
demo with each other, never a claim about real-image quality. Reference: 5000 images of the same
synthetic_shapes dataset (cached under <workdir>/reference_cache). Runtime not measured at this
size (a 16px, 200-image, 4-step smoke run took ~1.5 min wall on a busy 2-core CPU).
Model, process and data fields are read from configs/demo.py, so they match its checkpoint.

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals in noise level (1 = noise).
"""

from nag_jax.config.schema import base_config, sibling_config


def get_config():
    config = base_config()  # every schema key; the values below are the demo evaluation's
    config.mode = "eval"
    config.seed = 0
    # Model, process, objective and data come from the demo's own config, so they always match
    # the checkpoint the demo trained.
    demo = sibling_config(__file__, "demo")
    config.model = demo.model
    config.process = demo.process
    config.objective = demo.objective
    config.data = demo.data
    config.data.global_batch_size = 256
    config.optim.update(
        lr=1e-4,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        warmup_steps=0,
        ema_decay=0.999,
        trainable="all",
    )
    config.train.update(
        num_steps=0,
        log_every=100,
        checkpoint_every=0,
        keep=1,
        keep_every=0,
        sample_every=0,
        eval_every=0,
    )
    config.sample.update(
        sampler="ode",
        num_steps=16,
        method="heun",
        cfg_scale=1.0,
        nag_scale=0.0,
        cfg_interval=(0.0, 1.0),
        nag_interval=(0.0, 1.0),
        num_images=1000,
        batch_size=200,
        return_trajectory=False,
    )
    config.parallel.update(dict(fsdp=False, mesh=dict(data=-1, fsdp=1, tensor=1)))
    # config.model.weights: the demo's training workdir checkpoints/ (latest EMA params);
    # config.eval.proxy_path: e.g. runs/demo/proxy_classifier_cnn4-800.npz; pixel space: no VAE.
    config.eval.update(
        num_images=1000,
        batch_size=200,
        extractor="proxy",
        proxy_seed=0,  # "random_inception" only to test plumbing (not a quality metric)
        inception_preprocess="pytorch_fid",
        reference_stats="images",
        reference="dataset",
        reference_num_images=5000,
        reference_seed=0,
        feature_batch_size=500,
        pr_k=3,
        pr_block_size=10000,
        is_splits=10,
        train_num_images=500,
    )
    return config
