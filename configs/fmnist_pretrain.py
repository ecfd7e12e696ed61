"""The Fashion-MNIST base model: a class-conditional SiT trained WITHOUT noise-condition dropout.

    python -m nag_jax.data.fetch fashion_mnist data/fashion_mnist
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m nag_jax.main --config=configs/fmnist_pretrain.py --workdir=runs/fmnist_pretrain

The releases' recipe (class dropout for CFG, no noise-condition dropout), so NAG needs the
fine-tune of configs/fmnist_study.py. Shipped as nag_jax/assets/fmnist_base: the raw params of
step 3000 (at EMA decay 0.999 the EMA still holds 0.999**3000 = 5% of the random init, which
showed as noisy samples at step 2000), exported by

    python -m nag_jax.training.export configs/fmnist_pretrain.py \
        runs/fmnist_pretrain/checkpoints nag_jax/assets/fmnist_base --step=3000 --which=params

Time convention: SiT, t = 0 noise, t = 1 data.
"""

from nag_jax.config.schema import sibling_config


def get_config():
    c = sibling_config(__file__, "fmnist_study")
    c.mode = "train"
    c.objective.p_class_drop = 0.1
    c.objective.p_noise_drop = 0.0  # the releases' recipe
    c.optim.lr = 1e-3
    c.optim.ema_decay = 0.999
    c.optim.warmup_steps = 200
    c.train.num_steps = 3000  # ~55 min on the 2-core CPU (about 1 step/s at batch 128)
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep = 2
    c.train.keep_every = 1000
    c.model.weights = None
    return c
