"""Evaluate the pixel-space synthetic-shapes demo model with a proxy feature extractor.

    python -m nag_jax.main --config=configs/eval_demo.py --workdir=runs/demo_eval \
        --config.eval.checkpoint=runs/demo/checkpoints \
        --config.eval.proxy_path=runs/demo/proxy_classifier.npz --config.sample.nag_scale=1.0

The FID Inception weights are not available here, so the features come from the demo's small
shapes classifier (config.eval.extractor="proxy": nag_jax.evaluation.proxy.build_extractor).
The numbers land in the proxy_fd / proxy_score / proxy_precision / proxy_recall columns of the
results row (the fid/IS columns stay empty, is_fid_inception=false): they compare runs of THIS
demo with each other, never a claim about real-image quality. Reference: 5000 images of the same
synthetic_shapes dataset (cached under <workdir>/reference_cache). Runtime not measured at this
size (a 16px, 200-image, 4-step smoke run took ~1.5 min wall on a busy 2-core CPU).
The model fields match configs/demo.py (SiT-S/4, hidden 128, depth 4, 4 heads, 32x32 RGB).

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals in noise level (1 = noise).
"""

import ml_collections
from ml_collections.config_dict import placeholder

# Optional fields are typed placeholders (value None) so that --config.x.y=... can set them.


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        dict(
            name="SiT-S/4",
            input_size=32,
            in_channels=3,
            num_classes=16,
            learn_sigma=False,
            null_noise="learned",
            dtype="float32",
            hidden_size=128,
            depth=4,
            num_heads=4,
        )
    )
    config.process = ml_collections.ConfigDict(
        dict(
            path="linear",
            prediction="velocity",
            train_eps=placeholder(float),
            sample_eps=placeholder(float),
        )
    )
    config.objective = ml_collections.ConfigDict(dict(p_class_drop=0.1, p_noise_drop=0.1))
    config.data = ml_collections.ConfigDict(
        dict(
            name="synthetic_shapes",
            data_dir=placeholder(str),
            image_size=32,
            num_classes=16,
            global_batch_size=256,
            num_workers=0,
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=placeholder(float),
            warmup_steps=0,
            ema_decay=0.999,
            trainable="all",
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            num_steps=0,
            log_every=100,
            checkpoint_every=0,
            keep=1,
            keep_every=0,
            sample_every=0,
            eval_every=0,
            init_from=placeholder(str),
        )
    )
    config.sample = ml_collections.ConfigDict(
        dict(
            sampler="ode",
            num_steps=16,
            method="heun",
            cfg_scale=1.0,
            nag_scale=0.0,
            cfg_interval=(0.0, 1.0),
            nag_interval=(0.0, 1.0),
            cfg_channels=placeholder(int),
            num_images=1000,
            batch_size=200,
            labels=placeholder(tuple),
            return_trajectory=False,
        )
    )
    config.parallel = ml_collections.ConfigDict(
        dict(fsdp=False, mesh=dict(data=-1, fsdp=1, tensor=1))
    )
    config.eval = ml_collections.ConfigDict(
        dict(
            checkpoint=placeholder(
                str
            ),  # the demo's training workdir checkpoints/ (latest EMA params)
            vae=placeholder(str),  # pixel space: no VAE
            num_images=1000,
            batch_size=200,
            extractor="proxy",
            proxy_path=placeholder(str),  # classifier cache .npz (nag_jax.evaluation.proxy)
            proxy_seed=0,  # "random_inception" only to test plumbing (not a quality metric)
            inception_path=placeholder(str),
            inception_preprocess="pytorch_fid",
            reference_stats="images",
            reference="dataset",
            reference_num_images=5000,
            reference_seed=0,
            cache_dir=placeholder(str),
            feature_batch_size=500,
            pr_k=3,
            pr_block_size=10000,
            is_splits=10,
            samples=placeholder(str),  # an existing ADM .npz to score instead of sampling
            results_file=placeholder(str),
            train_num_images=500,
        )
    )
    return config
