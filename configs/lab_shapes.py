"""Noise-shift lab on the built-in shapes images (learned noise-level estimator, quality proxy).

    python -m nag_jax.main --config=configs/lab_shapes.py --workdir=/tmp/lab_shapes

Trains a small pixel SiT on 32 px coloured shapes with nag_loss (class + noise-condition dropout),
a conv noise-level estimator g(lambda | x), then samples rows none / CFG / NAG / CFG+NAG /
classifier-NAG at a few step counts and writes report.md (shift late / over the trajectory,
demo quality proxy: class accuracy and proxy FD -- not FID) and delta_shapes.png. 7 min 3 s measured
on an idle 2-core CPU; quicker: --config.train.num_steps=300 --config.lab.num_seeds=1.

Time convention: SiT, t = 0 noise, t = 1 data; reported levels are lambda = 1 - t (1 = noise).
"""

import ml_collections

from nag_jax.config.schema import base_config


def _row(name, cfg=1.0, nag=0.0, cls_nag=0.0):
    return ml_collections.ConfigDict(
        dict(name=name, cfg=cfg, nag=nag, cls_nag=cls_nag, cls_interval=(0.0, 0.95))
    )


def get_config():
    c = base_config()  # every schema key; the values below are the lab's
    c.mode = "lab"
    c.seed = 0
    c.model.update(
        dict(
            name="SiT-S/4",
            input_size=32,
            in_channels=3,
            num_classes=16,
            learn_sigma=False,
            null_noise="learned",
            dtype="float32",
            hidden_size=96,
            depth=3,
            num_heads=4,
            patch_size=None,
        )
    )
    c.process.update(dict(path="linear", prediction="velocity", train_eps=None, sample_eps=None))
    c.objective.update(dict(p_class_drop=0.1, p_noise_drop=0.1))
    c.data.update(
        dict(
            name="synthetic_shapes",
            data_dir=None,
            image_size=32,
            global_batch_size=64,
            num_workers=0,
        )
    )
    c.optim.update(
        dict(
            lr=1e-3,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=None,
            warmup_steps=50,
            ema_decay=None,
            trainable="all",
        )
    )
    c.train.update(
        dict(
            num_steps=1000,
            log_every=100,
            checkpoint_every=0,
            keep=0,
            keep_every=0,
            sample_every=0,
            eval_every=0,
        )
    )
    c.sample.update(
        dict(
            sampler="sde",
            num_steps=25,
            method="euler",
            cfg_scale=1.0,
            nag_scale=0.0,
            cfg_interval=(0.0, 1.0),
            nag_interval=(0.0, 1.0),
            cfg_channels=None,
            num_images=128,
            batch_size=128,
            labels=None,
            return_trajectory=True,
        )
    )
    c.parallel.update(
        dict(fsdp=False, mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    )
    lab = ml_collections.ConfigDict()
    lab.kind = "shapes"
    lab.pool_size = 4096  # real images rendered once (training data for SiT and estimator)
    lab.num_samples = 128
    lab.num_seeds = 2
    lab.sampler = "sde"
    lab.method = "euler"
    lab.step_counts = (10, 25)
    lab.max_states = 11
    lab.late = 0.25
    lab.proxy_seed = 0
    lab.rows = [
        _row("none"),
        _row("CFG", cfg=2.0),
        _row("NAG", nag=2.0),
        _row("CFG+NAG", cfg=2.0, nag=2.0),
        _row("cls-NAG", cls_nag=1.0),
    ]
    lab.estimator = ml_collections.ConfigDict(
        dict(num_bins=50, hidden=128, depth=2, num_steps=600, batch_size=64, lr=1e-3)
    )
    c.lab = lab
    return c
