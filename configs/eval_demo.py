"""Evaluate the pixel-space synthetic-shapes demo model with a proxy feature extractor.

    python -m nag_jax.main --config=configs/eval_demo.py --workdir=runs/demo_eval \
        --config.eval.checkpoint=runs/demo/checkpoints \
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

import importlib.util
import os

import ml_collections
from ml_collections.config_dict import placeholder

# Optional fields are typed placeholders (value None) so that --config.x.y=... can set them.


def _demo_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
    spec = importlib.util.spec_from_file_location("nag_jax_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.seed = 0
    # Model, process, objective and data come from the demo's own config, so they always match
    # the checkpoint the demo trained.
    demo = _demo_config()
    config.model = demo.model
    config.process = demo.process
    config.objective = demo.objective
    config.data = demo.data
    config.data.global_batch_size = 256
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
            proxy_path=placeholder(str),  # e.g. runs/demo/proxy_classifier_cnn4-800.npz
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
