"""Evaluate the pixel-space synthetic-shapes demo model with a proxy feature extractor.

    python -m nag_jax.main --config=configs/eval_demo.py --workdir=runs/demo \
        --config.eval.checkpoint=runs/demo/checkpoints --config.sample.nag_scale=1.0

The FID Inception weights are not available here, so the features come from the demo's small
shapes classifier (config.eval.extractor="proxy": nag_jax.evaluation.proxy.build_extractor).
The numbers (written "fid" etc. with is_fid_inception=false in the results row) compare runs of
THIS demo with each other; they are not FID and never a claim about real-image quality.
Reference: 5000 images of the same synthetic_shapes dataset (cached under
<workdir>/reference_cache). About a minute for 1000 samples x 16 ODE steps on a 2-core CPU.
The model fields must match the demo's training config.

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
            name="SiT-S/2",
            input_size=32,
            in_channels=3,
            num_classes=16,
            learn_sigma=False,
            null_noise="learned",
            dtype="float32",
            hidden_size=placeholder(int),
            depth=placeholder(int),
            num_heads=placeholder(int),
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
