"""Training: train state, sharded train step, loop, EMA, checkpoints, NAG fine-tuning.

from nag_jax.training.loop import run            # run(config, workdir) -> TrainState
from nag_jax.training.state import TrainState, create_optimizer
from nag_jax.training.step import jit_train_step
from nag_jax.training import checkpoint, finetune
"""
