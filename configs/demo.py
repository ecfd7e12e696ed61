"""Built-in demo: NAG on a small pixel-space SiT trained on procedurally generated shapes.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo

No downloads. Trains a small SiT (patch 2, 16x16 RGB) on the built-in coloured-shapes dataset
(16 classes = 4 shapes x 4 colours) with class dropout AND noise-condition dropout, then samples
the same classes and seeds with four guidance settings -- none, CFG, NAG, CFG+NAG -- and writes
one labelled PNG grid per setting, a side-by-side comparison and metrics.json (quality proxy:
accuracy of a small classifier trained on real shapes, Fréchet distance in its feature space,
and sampling images/s). Under 10 minutes on a 2-core CPU; progress (steps/s, ETA) is logged. Overrides, e.g. a quicker run: --config.train.num_steps=300.

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals are noise levels (1 = noise).
"""

from nag_jax.config_schema import base_config


def get_config():
    c = base_config()  # every schema key; the values below are the demo's
    c.mode = "demo"
    c.seed = 0
    c.model.update(
        name="SiT-S/2",
        input_size=16,
        in_channels=3,
        num_classes=16,
        learn_sigma=False,
        null_noise="learned",
        dtype="float32",
        hidden_size=128,
        depth=4,
        num_heads=4,
        remat=False,
    )
    c.process.update(
        path="linear",
        prediction="velocity",
    )
    c.objective.update(p_class_drop=0.1, p_noise_drop=0.1)
    c.data.update(
        name="synthetic_shapes",
        image_size=16,
        num_classes=16,
        global_batch_size=64,
        num_workers=0,
    )
    c.optim.update(
        lr=1e-3,
        weight_decay=0.0,
        b1=0.9,
        b2=0.99,
        eps=1e-8,
        grad_clip=1.0,
        warmup_steps=100,
        ema_decay=0.995,
        trainable="all",
    )
    c.train.update(
        num_steps=1000,
        log_every=100,
        checkpoint_every=500,
        keep=2,
        sample_every=0,
        eval_every=0,
        null_token_init="random",
        tensorboard=False,
    )
    c.sample.update(
        sampler="sde",
        num_steps=40,
        method="euler",
        diffusion_form="sigma",
        last_step="Mean",
        last_step_size=0.04,
        cfg_scale=1.0,
        nag_scale=0.0,
        cfg_interval=(0.0, 1.0),
        nag_interval=(0.0, 1.0),
        num_images=16,
        batch_size=256,
        return_trajectory=False,
    )
    # The four settings the demo compares (the same classes and seeds for each).
    c.demo = dict(
        settings=(
            ("none", 1.0, 0.0),
            ("CFG", 1.5, 0.0),  # the releases' FID setting
            ("NAG", 1.0, 1.0),
            ("CFG+NAG", 1.5, 1.0),
        ),
        seeds_per_class=8,
        eval_images_per_class=16,
        proxy_seed=0,
    )
    c.parallel.update(fsdp=False, mesh=dict(data=-1, fsdp=1, tensor=1), fsdp_min_size=2**16)
    return c
