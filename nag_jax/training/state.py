"""Train state, optimizer (AdamW + warmup + clipping) and the `trainable` parameter selection.

``TrainState`` is a pytree (flax struct dataclass) of
  step:       int32 scalar, number of optimizer updates applied so far;
  params:     float32 param tree (the spec's names: ``blocks_0/attn/qkv/kernel`` ...);
  ema_params: float32 exponential moving average of params (decay 0.9999 per step by default);
  opt_state:  optax state (only the trainable params carry Adam moments);
  rng:        uint32[2] raw PRNG key; the step's key is ``fold_in(rng, step)`` so a resumed run
              draws exactly the keys an uninterrupted one would.
"""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import optax

from nag_jax.parallel import path_str

TRAINABLE_NULL_TOKEN = r"(^|/)null_noise_token$"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    rng: jax.Array


def trainable_labels(params, trainable: str = "all"):
    """Labels each param 'train' or 'freeze'.

    ``trainable``: "all"; "null_token" (only ``null_noise_token``: NAG fine-tuning of a release's
    unconditional branch); or a regex searched in the '/'-joined param path (e.g.
    ``"null_noise_token|t_embedder"``). A regex that selects nothing raises a ValueError.
    """
    if trainable in (None, "", "all"):
        return jax.tree.map(lambda _: "train", params)
    pattern = TRAINABLE_NULL_TOKEN if trainable == "null_token" else trainable
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"config.optim.trainable={trainable!r} is neither 'all', 'null_token' nor a valid "
            f"regex ({e})."
        ) from e
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "train" if regex.search(path_str(p)) else "freeze", params
    )
    if "train" not in jax.tree.leaves(labels):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        raise ValueError(
            f"config.optim.trainable={trainable!r} selects no parameter. Param paths look like "
            f"{paths[:6]}; for 'null_token' the model needs model.null_noise='learned'."
        )
    return labels


def learning_rate_schedule(optim_cfg) -> optax.Schedule:
    """The lr of the update that makes step ``s + 1``, as a function of ``s`` (optax's count).

    A linear warmup from 0 to ``lr`` over ``warmup_steps``; then constant ``lr`` when
    ``decay_steps`` is 0, or a cosine decay from ``lr`` to 0 that ends at step ``decay_steps``
    (counted from the start, warmup included; 0 after it: set ``train.num_steps`` to it).
    """
    lr = float(optim_cfg.lr)
    warmup = int(optim_cfg.warmup_steps)
    decay = int(optim_cfg.get("decay_steps", 0) or 0)
    if decay > 0:
        if decay <= warmup:
            raise ValueError(
                f"config.optim.decay_steps={decay} must exceed optim.warmup_steps={warmup}: the "
                "cosine decay starts where the warmup ends. Raise decay_steps or set it to 0."
            )
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay, end_value=0.0)
    if warmup <= 0:
        return optax.constant_schedule(lr)
    return optax.linear_schedule(0.0, lr, warmup)


def create_optimizer(optim_cfg, params) -> optax.GradientTransformation:
    """AdamW (release: lr 1e-4, wd 0) with optional global-norm clipping, on the trainable params.

    Frozen params get ``set_to_zero`` and no Adam moments (fine-tuning the null token of an XL
    model keeps only its own moments).
    """
    chain = []
    if optim_cfg.grad_clip:
        chain.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    chain.append(
        optax.adamw(
            learning_rate_schedule(optim_cfg),
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
        )
    )
    tx = optax.chain(*chain)
    labels = trainable_labels(params, optim_cfg.trainable)
    if "freeze" not in jax.tree.leaves(labels):
        return tx
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def ema_update(ema, params, decay):
    """ema <- decay * ema + (1 - decay) * params (float32)."""
    return jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p.astype(e.dtype), ema, params)


def init_state(params, tx: optax.GradientTransformation, rng) -> TrainState:
    """A fresh state around ``params`` (EMA starts equal to params). Pure: jit it with shardings."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(lambda x: jnp.array(x, copy=True), params),
        opt_state=tx.init(params),
        rng=rng,
    )
