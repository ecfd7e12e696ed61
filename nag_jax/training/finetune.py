"""NAG fine-tuning of a release: start from converted params and create the null noise token.

A converted DiT/SiT release (``nag_jax.convert``, params-only Orbax tree with the spec's names)
has no ``null_noise_token``. It is created here, by default as the mean timestep embedding over
the training time distribution (the t_embedder MLP applied to many t's and averaged), so the
noise-unconditional branch starts as "the average noise level" rather than at random:

  SiT (float t in [0, 1], t = 1 is data): t on an even grid over the transport's train interval
      (midpoints of ``num_times`` equal cells; t ~ U[train_eps, 1 - train_eps] in training).
  DiT (integer step 0..999, 0 = least noise): every step 0..num_timesteps-1 (uniform in training).

Other choices: "zeros" and "random" (N(0, 0.02), the backbone's init).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.storage.weights import check_params_match, load_params

NULL_TOKEN = "null_noise_token"


def training_times(config, process=None, num_times: int = 1000) -> np.ndarray:
    """(T,) float32 times spread like the training time distribution of the config's family
    (`Family.training_times`; ``process`` defaults to ``build.build_process(config)``)."""
    from nag_jax.sampling import build

    process = process if process is not None else build.build_process(config)
    return build.family_of(config).training_times(process, num_times)


def mean_time_embedding(model, params, times) -> jax.Array:
    """Mean over ``times`` of the model's timestep embedding (t_embedder output), (D,) float32."""
    t = jnp.asarray(times, jnp.float32)
    f32 = model.clone(dtype=jnp.float32)  # the token is float32 whatever the compute dtype
    emb = f32.apply({"params": params}, t, method=type(model).embed_time)
    return jnp.mean(emb.astype(jnp.float32), axis=0)


def null_token_init(kind: str, model, params, key, *, config, process=None) -> jax.Array:
    """The initial null noise token (D,): "mean_t_embedding" (default), "zeros" or "random"."""
    d = model.hidden_size
    if kind == "mean_t_embedding":
        return mean_time_embedding(model, params, training_times(config, process))
    if kind == "zeros":
        return jnp.zeros((d,), jnp.float32)
    if kind == "random":
        return 0.02 * jax.random.normal(key, (d,), jnp.float32)
    raise ValueError(
        f"config.train.null_token_init={kind!r}; expected 'mean_t_embedding', 'zeros' or 'random'."
    )


def params_from_checkpoint(path: str, model, template, key, *, config, process=None, reinit=None):
    """Loads converted params from ``path`` and fits them to the model's param ``template``.

    ``template``: the model's params (abstract, or real fresh-init arrays when ``reinit`` is set).
    Every template param except the null token and those matching the regex ``reinit`` (e.g.
    ``"^y_embedder/"`` for transfer to another label set) must be in the checkpoint with the same
    shape (else ValueError naming them); ``reinit`` params keep the template's fresh values; a
    missing null token is created with ``config.train.null_token_init``.
    Returns a float32 param tree.
    """
    import re

    from flax import traverse_util

    loaded = traverse_util.flatten_dict(load_params(path)[0], sep="/")
    fresh = traverse_util.flatten_dict(dict(template), sep="/")
    redo = {k for k in fresh if reinit and re.search(reinit, k)}
    needs_token = NULL_TOKEN in fresh and NULL_TOKEN not in loaded
    if needs_token:
        redo.discard(NULL_TOKEN)
    expected = {k: v for k, v in fresh.items() if k not in redo and k != NULL_TOKEN}
    if not needs_token and NULL_TOKEN in fresh:
        expected[NULL_TOKEN] = fresh[NULL_TOKEN]
    check_params_match(
        expected,
        {k: v for k, v in loaded.items() if not (reinit and re.search(reinit, k))},
        source=path,
        hint="Set config.model (name, input_size, in_channels, num_classes, learn_sigma) to the "
        "converted model's architecture, re-initialise the differing params with "
        "config.train.reinit (a regex), or point config.model.weights elsewhere.",
    )
    flat = {k: jnp.asarray(loaded[k], jnp.float32) for k in expected}
    flat.update({k: jnp.asarray(fresh[k], jnp.float32) for k in redo})
    if redo:
        logging.info("Re-initialised (not loaded from %s): %s", path, sorted(redo))
    params = traverse_util.unflatten_dict(flat, sep="/")
    if needs_token:
        kind = config.train.null_token_init
        params[NULL_TOKEN] = null_token_init(
            kind, model, params, key, config=config, process=process
        )
        logging.info("Created %s (%s) for NAG fine-tuning of %s", NULL_TOKEN, kind, path)
    return params
