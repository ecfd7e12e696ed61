"""The demo's base model: a small SiT trained on the built-in shapes WITHOUT noise dropout.

Two stages, each on the two host devices of a 2-core CPU (data parallel; the same config runs
unchanged on one device):

    # 1. 12000 steps at a constant lr 1e-3 (50 minutes), then its EMA weights as a base
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m nag_jax.main --config=configs/demo_pretrain.py --workdir=runs/demo_pretrain
    python -m nag_jax.training.export configs/demo_pretrain.py \
        runs/demo_pretrain/checkpoints runs/demo_pretrain/base_12k
    # 2. 8000 more steps from those weights, the lr decayed to 0 on a cosine, then export
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m nag_jax.main \
        --config=configs/demo_pretrain.py:anneal --workdir=runs/demo_pretrain_anneal
    python -m nag_jax.training.export configs/demo_pretrain.py \
        runs/demo_pretrain_anneal/checkpoints nag_jax/assets/demo_base --force

The shipped ``nag_jax/assets/demo_base`` is stage 2's EMA weights (20000 steps in all). Stage 1
alone stopped while its samples were still improving (class accuracy 0.81 at 10000 steps, 0.86
at 12000; benchmarks/results/demo_study/base_curve.json).

This is the situation of the released DiT/SiT checkpoints: class dropout (for CFG) but no
noise-condition dropout, so the model has no noise-unconditional branch and NAG cannot be used
on it as it is. ``configs/demo.py`` starts from this model and runs the paper's short NAG
fine-tune before sampling.

Time convention: SiT, t = 0 noise, t = 1 data.
"""

from nag_jax.config.schema import sibling_config

STAGE_1_BASE = "runs/demo_pretrain/base_12k"  # stage 1's EMA weights (export command above)


def get_config(arg: str = ""):
    """``arg``: "" for stage 1 (from scratch), "anneal" for stage 2 (from ``STAGE_1_BASE``)."""
    if arg not in ("", "anneal"):
        raise ValueError(f"configs/demo_pretrain.py:{arg}: expected no argument or ':anneal'")
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
    if arg == "anneal":
        c.model.weights = STAGE_1_BASE
        c.train.num_steps = 8000
        c.optim.decay_steps = 8000  # cosine from 1e-3 to 0 after the 200-step warmup
    return c
