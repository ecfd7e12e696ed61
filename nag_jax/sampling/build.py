"""Config -> objects: the one place that turns an ml_collections config into a model, a noising
process, a guidance setting and a sampler. Training, sampling, evaluation and the lab all build
through here, so one config means the same thing everywhere.

Time conventions: SiT models get float t in [0, 1] (0 = noise, 1 = data); DiT models get the
original integer step 0..999 (0 = least noise). Guidance intervals are in the paper's noise level
(1 = pure noise); the process supplies the mapping (`Transport.noise_level`,
`GaussianDiffusion.noise_level`).

The family (SiT / DiT: process, time convention, samplers, guided channels) is decided once, in
nag_jax.diffusion.family. A hand-built partial config (notebooks, benchmarks) is completed from
the one schema (nag_jax.config.schema.complete); job configs already hold every key.

Randomness for sampling is per image: ``sample_fn(params, keys, y)`` takes ONE key per image
(``per_image_keys(seed_key, indices)``; image i of a seed: nag_jax.sampling.generate), and the
initial
noise and every step's noise of image i derive from ``keys[i]`` alone. Image i is then the same
whatever the batch it is drawn in or the number of devices it is sharded over (up to float
reassociation in the network's matmuls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from nag_jax import sampling
from nag_jax.config import schema
from nag_jax.diffusion import GaussianDiffusion, Transport
from nag_jax.diffusion.family import FAMILIES, Family, family_for
from nag_jax.guidance import GuidanceConfig, TwoModelNet, guided_prediction
from nag_jax.models import DiT, create_model
from nag_jax.storage.paths import as_path


def family_of(config) -> Family:
    """The family (nag_jax.diffusion.family) of ``config.model.name``."""
    return family_for(config.model.name)


def build_model(model_cfg) -> DiT:
    """``config.model`` -> the backbone (see nag_jax.models.create_model for the fields)."""
    m = schema.complete(model_cfg, "model")
    return create_model(
        m.name,
        input_size=m.input_size,
        in_channels=m.in_channels,
        num_classes=m.num_classes,
        learn_sigma=m.learn_sigma,
        null_noise=m.null_noise,
        dtype=m.dtype,
        attention_impl=m.attention_impl,
        remat=m.remat,
        hidden_size=m.hidden_size,
        depth=m.depth,
        num_heads=m.num_heads,
        patch_size=m.patch_size,
    )


def build_process(config, *, for_sampling: bool = False) -> Transport | GaussianDiffusion:
    """The noising process of ``config``'s family (`Family.build_process`): SiT a `Transport`;
    DiT the 1000-step DDPM for training, respaced to ``config.sample.num_steps`` for sampling."""
    c = schema.complete(config)
    return family_of(c).build_process(
        c.process, learn_sigma=c.model.learn_sigma, sample_cfg=c.sample if for_sampling else None
    )


def build_guidance(sample_cfg) -> GuidanceConfig:
    """``config.sample`` -> `GuidanceConfig` (cfg_scale, nag_scale, intervals, cfg_channels)."""
    s = schema.complete(sample_cfg, "sample")
    return GuidanceConfig(
        cfg_scale=float(s.cfg_scale),
        nag_scale=float(s.nag_scale),
        dog_scale=float(s.dog_scale),
        cfg_interval=tuple(s.cfg_interval),
        nag_interval=tuple(s.nag_interval),
        cfg_channels=s.cfg_channels,
    )


def make_net_fn(model: DiT, params, family: str) -> Callable:
    """``net_fn(x, t, y, drop_class, drop_noise)`` for guidance: the part of the output the
    family's process reads (`Family.net_output`: SiT the first C channels, DiT all 2C)."""
    fam = FAMILIES[family]

    def net_fn(x, t, y, drop_class, drop_noise):
        out = model.apply({"params": params}, x, t, y, drop_class=drop_class, drop_noise=drop_noise)
        return fam.net_output(out, model.in_channels)

    return net_fn


# Two-model guidance (Domain Guidance): the params given to a sampler are then this pair.
MAIN, DOMAIN = "main", "domain"


def domain_params_like(main_params, domain_params) -> dict:
    """A pre-trained tree made to fit the fine-tuned model's tree, for the DoG branch.

    The DoG branch runs the pre-trained weights at the NULL label only, so its label table
    (``y_embedder/embedding_table/embedding``, num_classes + 1 rows, null = last) is rebuilt
    with the fine-tuned table's shape: zeros, and the pre-trained null row as the last row. A
    null noise token the pre-trained tree lacks is added as zeros (the DoG branch never drops
    the noise level). Every other leaf must have the same path and shape (one architecture);
    otherwise a ValueError names the leaves.
    """
    from flax import traverse_util

    main = traverse_util.flatten_dict(dict(main_params), sep="/")
    dom = dict(traverse_util.flatten_dict(dict(domain_params), sep="/"))
    table = "y_embedder/embedding_table/embedding"
    if table in main and table in dom and jnp.shape(main[table])[1:] == jnp.shape(dom[table])[1:]:
        t = jnp.zeros(jnp.shape(main[table]), jnp.result_type(main[table]))
        dom[table] = t.at[-1].set(jnp.asarray(dom[table])[-1])
    if "null_noise_token" in main and "null_noise_token" not in dom:
        dom["null_noise_token"] = jnp.zeros_like(main["null_noise_token"])
    if "null_noise_token" not in main:
        dom.pop("null_noise_token", None)
    bad = sorted(
        k
        for k in set(main) | set(dom)
        if k not in main or k not in dom or tuple(jnp.shape(main[k])) != tuple(jnp.shape(dom[k]))
    )
    if bad:
        raise ValueError(
            f"the pre-trained weights (config.model.domain_weights) do not share the fine-tuned "
            f"model's architecture: leaves {bad[:6]} differ in path or shape. Domain Guidance "
            "here runs both with config.model's network; use a pre-trained model of that size."
        )
    return traverse_util.unflatten_dict(dom, sep="/")


def make_two_model_net(model: DiT, params, family: str, stacked: bool) -> TwoModelNet:
    """`TwoModelNet` of ``params = {"main": fine-tuned, "domain": pre-trained (fitted by
    `domain_params_like`)}``; ``stacked``: one vmapped call per step instead of two."""
    if not (isinstance(params, dict) and set(params) == {MAIN, DOMAIN}):
        raise ValueError(
            "sample.dog_scale != 1 (Domain Guidance) samples with two sets of weights: pass "
            "params={'main': fine-tuned, 'domain': pre-trained} (nag_jax.sampling.generate."
            "with_domain_params reads config.model.domain_weights)."
        )
    fam = FAMILIES[family]

    def apply_fn(p, x, t, y, drop_class, drop_noise):
        out = model.apply({"params": p}, x, t, y, drop_class=drop_class, drop_noise=drop_noise)
        return fam.net_output(out, model.in_channels)

    return TwoModelNet(apply_fn, params[MAIN], params[DOMAIN], stacked=stacked)


def guided_pred_fn(
    model: DiT, params, config, process=None, scales=None, intervals=None, estimator=None
) -> Callable:
    """The guided prediction ``pred_fn(x, t, y)`` (scalar t, family convention) of a config.

    ``scales``: optional traced (s_cfg, w_nag) or (s_cfg, w_nag, s_dog) replacing config.sample's
    values; ``intervals``: optional traced (2, 2) [[cfg_lo, cfg_hi], [nag_lo, nag_hi]] replacing
    its intervals (guidance.guided_prediction). With sample.dog_scale != 1, ``params`` is
    ``{"main": ..., "domain": ...}`` (`make_two_model_net`).
    ``estimator``: for ``sample.nag_mode = "classifier"``, the loaded `classifier_estimator`
    (read from ``sample.estimator`` when None; load it outside jit)."""
    family = family_of(config)
    process = process if process is not None else build_process(config, for_sampling=True)
    sc = schema.complete(config.sample, "sample")
    classifier = sc.nag_mode == "classifier"
    guidance = build_guidance(sc)
    if classifier:  # no null-token branch: NAG comes from the estimator below
        guidance = dataclasses.replace(guidance, nag_scale=0.0)
    if guidance.use_dog:
        stacked = str(sc.dog_call) == "stacked"
        net = make_two_model_net(model, params, family.name, stacked)
    else:
        net = make_net_fn(model, params, family.name)
    pred_fn = guided_prediction(
        net,
        guidance,
        noise_level_fn=process.noise_level,
        guided_channels=family.guided_channels(model.in_channels),
        scales=scales,
        intervals=intervals,
    )
    if classifier and (scales is not None or float(sc.nag_scale) != 0.0):
        scale = sc.nag_scale if scales is None else scales[1]
        pred_fn = classifier_nag(pred_fn, sc, process, scale, estimator=estimator)
    return pred_fn


_NEEDS_ESTIMATOR = (
    "sample.nag_mode='classifier' needs sample.estimator: the noise-level estimator that "
    "mode=noise_shift writes to <workdir>/estimator (or set sample.nag_mode='token')."
)


def classifier_estimator(sample_cfg):
    """The noise-level estimator of ``sample.nag_mode = "classifier"`` (None in "token" mode),
    read from ``sample.estimator`` (nag_jax.models.noise_estimator.load_estimator; host I/O: call it
    outside jit)."""
    from nag_jax.models import noise_estimator

    sc = schema.complete(sample_cfg, "sample")
    if sc.nag_mode != "classifier":
        return None
    if not sc.estimator:
        raise ValueError(_NEEDS_ESTIMATOR)
    return noise_estimator.load_estimator(as_path(sc.estimator))


def classifier_nag(pred_fn: Callable, sample_cfg, process, scale, estimator=None) -> Callable:
    """``sample.nag_mode = "classifier"``: wraps ``pred_fn`` in classifier-based NAG with
    ``estimator`` (default: `classifier_estimator` of ``sample_cfg``), scale ``scale`` (may be
    traced) over ``sample.nag_interval`` (noise levels)."""
    from nag_jax.guidance import classifier

    interval = tuple(float(v) for v in sample_cfg.nag_interval)
    if not sample_cfg.estimator and estimator is None:
        raise ValueError(_NEEDS_ESTIMATOR)
    if isinstance(process, Transport) and interval[1] >= 1.0:
        raise ValueError(
            f"sample.nag_interval={interval} with nag_mode='classifier' on a SiT model: the "
            "score-to-velocity factor is infinite at noise level 1; end the interval below 1, "
            "e.g. --config.sample.nag_interval='(0.0, 0.6)'."
        )
    if estimator is None:
        estimator = classifier_estimator(sample_cfg)
    return classifier.classifier_nag_prediction(
        pred_fn, estimator, scale, transport=process, interval=interval
    )


def per_image_keys(key: jax.Array, indices) -> jax.Array:
    """One key per global image index: ``keys[j] = fold_in(key, indices[j])`` (shape (N,)).

    The key of ``seed`` is nag_jax.sampling.generate's (`generate.image_keys`)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


def initial_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(N, *shape) float32 starting noise of the samplers: ``normal(fold_in(keys[i], 0))``;
    every later step's noise of image i derives from ``fold_in(keys[i], 1)``."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)


def warn_nag_without_token(model: DiT, sample_cfg) -> bool:
    """One loud log line when NAG is on and the model has no learned null noise token.

    A release checkpoint has none: its noise-unconditional branch then sees a zero vector the
    network was never trained on (``null_noise="zero"``), and "NAG" is not NAG. Returns True when
    it warned. (Sample mode refuses this case unless null_noise="zero" is asked explicitly:
    nag_jax.jobs.sample.reconcile_model_config.)"""
    if float(sample_cfg.nag_scale) == 0.0 or model.null_noise == "learned":
        return False
    from absl import logging

    logging.warning(
        "NAG is on (sample.nag_scale=%s) but the model has no learned null noise token: the "
        "noise-unconditional branch uses an untrained zero token; NAG-fine-tune the checkpoint "
        "first (configs/*_nag_finetune.py) or set nag_scale=0.",
        sample_cfg.nag_scale,
    )
    return True


def build_sampler(config, model: DiT, *, return_trajectory: bool = False) -> Callable:
    """``sample_fn(params, keys, y, scales=None) -> images`` for ``config.sample``; pure, jit it.

    Args of sample_fn:
      params: the model's params.
      keys: (N,) PRNG keys, one per image (`generate.image_keys`).
      y: (N,) int32 labels.
      scales: optional (s_cfg, w_nag) or (s_cfg, w_nag, s_dog) arrays overriding config.sample's
        scales at run time (one compilation for a whole sweep); the branches that exist are
        those config.sample turns on.
      intervals: optional (2, 2) array [[cfg_lo, cfg_hi], [nag_lo, nag_hi]] (noise levels)
        overriding config.sample's intervals at run time; each existing branch is then switched
        per step by interval and scale (guidance.guided_prediction).
      With sample.dog_scale != 1, params is {"main": fine-tuned, "domain": pre-trained}.

    Returns:
      (N, H, W, C) float32 samples in the model's space (pixels in [-1, 1] or latents), or
      ``(samples, trajectory)`` when ``return_trajectory`` (see nag_jax.sampling).
    """
    c = schema.complete(config)
    family, sc = family_of(c), c.sample
    kind = str(sc.sampler)
    if kind not in family.samplers:
        raise ValueError(
            f"sample.sampler={kind!r} does not apply to {c.model.name}; {family.name} models "
            f"sample with one of {family.samplers}."
        )
    warn_nag_without_token(model, sc)
    process = build_process(c, for_sampling=True)
    shape = (model.input_size, model.input_size, model.in_channels)
    num_steps = int(sc.num_steps)
    estimator = classifier_estimator(sc)  # None unless sample.nag_mode = "classifier"

    def sample_fn(params, keys, y, scales=None, intervals=None):
        pred_fn = guided_pred_fn(
            model, params, c, process, scales, intervals=intervals, estimator=estimator
        )
        x_init = initial_noise(keys, shape)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        common = dict(return_trajectory=return_trajectory)
        if kind == "ode":
            return sampling.sample_ode(
                pred_fn,
                x_init,
                y,
                transport=process,
                num_steps=num_steps,
                method=sc.method,
                **common,
            )
        if kind == "ode_adaptive":
            return sampling.sample_ode_adaptive(
                pred_fn,
                x_init,
                y,
                transport=process,
                solver=sc.ode_solver,
                atol=float(sc.atol),
                rtol=float(sc.rtol),
                max_steps=int(sc.max_steps),
                num_steps=num_steps,
                per_image=bool(sc.ode_per_image),
                **common,
            )
        if kind == "sde":
            return sampling.sample_sde(
                pred_fn,
                noise_keys,
                x_init,
                y,
                transport=process,
                num_steps=num_steps,
                method=sc.method,
                diffusion_form=sc.diffusion_form,
                last_step=sc.last_step,
                last_step_size=float(sc.last_step_size),
                **common,
            )
        if kind == "ddpm":
            return sampling.sample_ddpm(pred_fn, noise_keys, x_init, y, diffusion=process, **common)
        return sampling.sample_ddim(
            pred_fn, x_init, y, diffusion=process, eta=float(sc.eta), key=noise_keys, **common
        )

    return sample_fn
