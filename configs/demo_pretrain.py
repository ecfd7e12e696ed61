"""The demo's base model: a small SiT trained on the built-in shapes WITHOUT noise dropout.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m nag_jax.main --config=configs/demo_pretrain.py --workdir=runs/demo_pretrain

This is the situation of the released DiT/SiT checkpoints: class dropout (for CFG) but no
noise-condition dropout, so the model has no noise-unconditional branch and NAG cannot be used
on it as it is. ``configs/demo.py`` starts from this model (shipped in the repository as
``nag_jax/assets/demo_base``, exported from this run's EMA weights by
``nag_jax.training.export.export_base``) and runs the paper's short NAG fine-tune before
sampling. Data parallel over the two host devices of a 2-core CPU (the
XLA flag above); the same config runs unchanged on one device.

Time convention: SiT, t = 0 noise, t = 1 data.
"""

from nag_jax.config.schema import sibling_config


def get_config():
    c = sibling_config(__file__, "demo")
    c.mode = "train"
    c.objective.p_class_drop = 0.1
    c.objective.p_noise_drop = 0.0  # the releases' recipe: no noise-condition dropout
    c.optim.lr = 1e-3
    c.optim.ema_decay = 0.999
    c.optim.warmup_steps = 200
    c.train.num_steps = 12000
    c.train.log_every = 250
    c.train.checkpoint_every = 1000
    c.train.keep = 2
    c.train.keep_every = 1000
    c.model.weights = None
    c.train.tensorboard = False
    return c
