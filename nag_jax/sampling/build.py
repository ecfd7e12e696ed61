"""Config -> objects: the one place that turns an ml_collections config into a model, a noising
process, a guidance setting and a sampler. Training, sampling, evaluation and the lab all build
through here, so one config means the same thing everywhere.

Time conventions: SiT models get float t in [0, 1] (0 = noise, 1 = data); DiT models get the
original integer step 0..999 (0 = least noise). Guidance intervals are in the paper's noise level
(1 = pure noise); the process supplies the mapping (`Transport.noise_level`,
`GaussianDiffusion.noise_level`).

The family (SiT / DiT: process, time convention, samplers, guided channels) is decided once, in
nag_jax.diffusion.family. The config given here is complete (a job's, or
``nag_jax.config.schema.resolve`` of a hand-built one): each builder reads the section it needs
once and hands plain values on (``Family.build_process``, ``GuidanceConfig``, the samplers'
keyword arguments), as SiT's ``create_transport(path, prediction, ...)``.

Loading for a config lives here too, over the one loaders: the weights of Domain Guidance's
second network (`with_domain_params`, nag_jax.storage.weights.load_params) and the SD-VAE decoder
of latent models (`build_decoder`, nag_jax.models.vae.load_vae).

Randomness for sampling is per image: ``sample_fn(params, keys, y)`` takes ONE key per image
(image i of a seed: nag_jax.sampling.generate.image_keys), and the initial noise and every
step's noise of image i derive from ``keys[i]`` alone (`initial_noise`). Image i is then the
same whatever the batch it is drawn in or the number of devices it is sharded over (up to float
reassociation in the network's matmuls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from nag_jax import sampling
from nag_jax.diffusion import GaussianDiffusion, Transport
from nag_jax.diffusion.family import FAMILIES, Family, family_for
from nag_jax.errors import ConfigError
from nag_jax.guidance import GuidanceConfig, TwoModelNet, guided_prediction
from nag_jax.models import DiT, create_model
from nag_jax.storage.paths import as_path
from nag_jax.utils import moved_names


def family_of(config) -> Family:
    """The family (nag_jax.diffusion.family) of ``config.model.name``."""
    return family_for(config.model.name)


def build_model(model_cfg, *, platform: str | None = None) -> DiT:
    """``config.model`` -> the backbone (see nag_jax.models.create_model for the fields) for
    ``platform`` (default: jax's backend; it picks the attention implementation)."""
    m = model_cfg
    return create_model(
        m.name,
        input_size=m.input_size,
        in_channels=m.in_channels,
        num_classes=m.num_classes,
        learn_sigma=m.learn_sigma,
        null_noise=m.null_noise,
        dtype=m.dtype,
        attention_impl=m.attention_impl,
        dense_impl=m.dense_impl,
        remat=m.remat,
        hidden_size=m.hidden_size,
        depth=m.depth,
        num_heads=m.num_heads,
        patch_size=m.patch_size,
        platform=platform,
    )


def build_process(config, *, for_sampling: bool = False) -> Transport | GaussianDiffusion:
    """The noising process of ``config``'s family (`Family.build_process`): SiT a `Transport`;
    DiT the 1000-step DDPM for training, respaced to ``config.sample.num_steps`` for sampling."""
    return family_of(config).build_process(
        config.process,
        learn_sigma=config.model.learn_sigma,
        sample_cfg=config.sample if for_sampling else None,
    )


def build_guidance(sample_cfg) -> GuidanceConfig:
    """``config.sample`` -> `GuidanceConfig` (cfg_scale, nag_scale, intervals, cfg_channels)."""
    s = sample_cfg
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
            "params={'main': fine-tuned, 'domain': pre-trained} (nag_jax.sampling.build."
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
    """The guided prediction ``pred_fn(x, t, y)`` (scalar t, family convention) of a config:
    ``prediction_builder(model, config, process, estimator)(params, scales, intervals)``.

    ``scales``: optional traced (s_cfg, w_nag) or (s_cfg, w_nag, s_dog) replacing config.sample's
    values; ``intervals``: optional traced (2, 2) [[cfg_lo, cfg_hi], [nag_lo, nag_hi]] replacing
    its intervals (guidance.guided_prediction). With sample.dog_scale != 1, ``params`` is
    ``{"main": ..., "domain": ...}`` (`make_two_model_net`).
    ``estimator``: for ``sample.nag_mode = "classifier"``, the loaded `classifier_estimator`
    (read from ``sample.estimator`` when None; load it outside jit)."""
    return prediction_builder(model, config, process, estimator)(params, scales, intervals)


def prediction_builder(model: DiT, config, process=None, estimator=None) -> Callable:
    """``config`` read once -> ``build(params, scales=None, intervals=None) -> pred_fn(x, t, y)``
    (see `guided_pred_fn`; the sampler calls ``build`` inside its jitted function)."""
    family = family_of(config)
    process = process if process is not None else build_process(config, for_sampling=True)
    sc = config.sample
    classifier = sc.nag_mode == "classifier"
    guidance = build_guidance(sc)
    if classifier:  # no null-token branch: NAG comes from the estimator (`classifier_nag`)
        guidance = dataclasses.replace(guidance, nag_scale=0.0)
    stacked = str(sc.dog_call) == "stacked"
    nag_scale = sc.nag_scale
    nag_interval = tuple(float(v) for v in sc.nag_interval)
    estimator_path = sc.estimator

    def build(params, scales=None, intervals=None) -> Callable:
        if guidance.use_dog:
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
        if classifier and (scales is not None or float(nag_scale) != 0.0):
            scale = nag_scale if scales is None else scales[1]
            pred_fn = classifier_nag(
                pred_fn,
                process,
                scale,
                interval=nag_interval,
                estimator=estimator,
                estimator_path=estimator_path,
            )
        return pred_fn

    return build


_NEEDS_ESTIMATOR = (
    "sample.nag_mode='classifier' needs sample.estimator: the noise-level estimator that "
    "mode=noise_shift writes to <workdir>/estimator (or set sample.nag_mode='token')."
)


def classifier_estimator(sample_cfg):
    """The noise-level estimator of ``sample.nag_mode = "classifier"`` (None in "token" mode),
    read from ``sample.estimator`` (nag_jax.models.noise_estimator.load_estimator; host I/O: call it
    outside jit)."""
    if sample_cfg.nag_mode != "classifier":
        return None
    return _load_estimator(sample_cfg.estimator)


def _load_estimator(path):
    from nag_jax.models import noise_estimator

    if not path:
        raise ValueError(_NEEDS_ESTIMATOR)
    return noise_estimator.load_estimator(as_path(path))


def classifier_nag(
    pred_fn: Callable, process, scale, *, interval, estimator=None, estimator_path=None
) -> Callable:
    """``sample.nag_mode = "classifier"``: wraps ``pred_fn`` in classifier-based NAG with
    ``estimator`` (default: the one saved at ``estimator_path``, ``sample.estimator``), scale
    ``scale`` (may be traced) over ``interval`` (noise levels, ``sample.nag_interval``)."""
    from nag_jax.guidance import classifier

    interval = tuple(float(v) for v in interval)
    if not estimator_path and estimator is None:
        raise ValueError(_NEEDS_ESTIMATOR)
    if isinstance(process, Transport) and interval[1] >= 1.0:
        raise ValueError(
            f"sample.nag_interval={interval} with nag_mode='classifier' on a SiT model: the "
            "score-to-velocity factor is infinite at noise level 1; end the interval below 1, "
            "e.g. --config.sample.nag_interval='(0.0, 0.6)'."
        )
    if estimator is None:
        estimator = _load_estimator(estimator_path)
    return classifier.classifier_nag_prediction(
        pred_fn, estimator, scale, transport=process, interval=interval
    )


def initial_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(N, *shape) float32 starting noise of the samplers from the per-image keys (N,)
    (nag_jax.sampling.generate.image_keys): ``normal(fold_in(keys[i], 0))``; every later step's
    noise of image i derives from ``fold_in(keys[i], 1)``."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)


def warn_nag_without_token(model: DiT, sample_cfg) -> bool:
    """One loud log line when NAG is on and the model has no learned null noise token.

    A release checkpoint has none: its noise-unconditional branch then sees a zero vector the
    network was never trained on (``null_noise="zero"``), and "NAG" is not NAG. Returns True when
    it warned. (Sample mode refuses this case unless null_noise="zero" is asked explicitly:
    `reconcile_model_config`.)"""
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
    family, sc = family_of(config), config.sample
    kind = str(sc.sampler)
    if kind not in family.samplers:
        raise ValueError(
            f"sample.sampler={kind!r} does not apply to {config.model.name}; {family.name} "
            f"models sample with one of {family.samplers}."
        )
    warn_nag_without_token(model, sc)
    process = build_process(config, for_sampling=True)
    estimator = classifier_estimator(sc)  # None unless sample.nag_mode = "classifier"
    predictor = prediction_builder(model, config, process, estimator)
    solve = _solver(kind, sc, process, return_trajectory)
    shape = (model.input_size, model.input_size, model.in_channels)

    def sample_fn(params, keys, y, scales=None, intervals=None):
        pred_fn = predictor(params, scales, intervals)
        x_init = initial_noise(keys, shape)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        return solve(pred_fn, x_init, y, noise_keys)

    return sample_fn


def _solver(kind: str, sc, process, return_trajectory: bool) -> Callable:
    """``config.sample``'s sampler with its options read once: ``solve(pred_fn, x_init, y,
    noise_keys) -> samples`` over nag_jax.sampling's plain-argument samplers."""
    num_steps = int(sc.num_steps)
    common = dict(return_trajectory=return_trajectory)
    if kind == "ode":
        method = sc.method
        return lambda pred_fn, x_init, y, noise_keys: sampling.sample_ode(
            pred_fn, x_init, y, transport=process, num_steps=num_steps, method=method, **common
        )
    if kind == "ode_adaptive":
        opts = dict(
            solver=sc.ode_solver,
            atol=float(sc.atol),
            rtol=float(sc.rtol),
            max_steps=int(sc.max_steps),
            num_steps=num_steps,
            per_image=bool(sc.ode_per_image),
        )
        return lambda pred_fn, x_init, y, noise_keys: sampling.sample_ode_adaptive(
            pred_fn, x_init, y, transport=process, **opts, **common
        )
    if kind == "sde":
        opts = dict(
            num_steps=num_steps,
            method=sc.method,
            diffusion_form=sc.diffusion_form,
            last_step=sc.last_step,
            last_step_size=float(sc.last_step_size),
        )
        return lambda pred_fn, x_init, y, noise_keys: sampling.sample_sde(
            pred_fn, noise_keys, x_init, y, transport=process, **opts, **common
        )
    if kind == "ddpm":
        return lambda pred_fn, x_init, y, noise_keys: sampling.sample_ddpm(
            pred_fn, noise_keys, x_init, y, diffusion=process, **common
        )
    eta = float(sc.eta)
    return lambda pred_fn, x_init, y, noise_keys: sampling.sample_ddim(
        pred_fn, x_init, y, diffusion=process, eta=eta, key=noise_keys, **common
    )


# ----------------------------------------------------------------------------------------------
# Loading for a config: the model and its weights, Domain Guidance's second network, the SD-VAE
# decoder (over the one loaders: nag_jax.storage.weights, nag_jax.models.vae)

ARCH_FIELDS = ("input_size", "in_channels", "num_classes", "learn_sigma")
SIZE_FIELDS = ("hidden_size", "depth", "num_heads")


def reconcile_model_config(config, meta: dict, params: dict) -> list[str]:
    """Makes ``config.model`` describe the checkpoint; returns notes on what changed.

    With converted metadata the checkpoint defines the architecture (name, input size, channels,
    classes, widths); a family mismatch is an error (the sampler depends on it). The null noise
    token: "learned" iff the params have one. NAG (nag_scale != 0) on a checkpoint without a
    token is refused unless config.model.null_noise == "zero" was asked for explicitly.
    """
    from nag_jax.models import parse_model_name

    mc, notes = config.model, []
    has_token = "null_noise_token" in params
    if meta:
        fam_cfg, fam_ckpt = parse_model_name(mc.name)[0], meta["family"]
        if fam_cfg != fam_ckpt:
            raise ConfigError(
                f"config.model.name={mc.name} is a {fam_cfg} model but the checkpoint is "
                f"{meta['model']} ({fam_ckpt}); use configs/sample_{fam_ckpt.lower()}_xl.py or "
                f"--config.model.name={meta['model']}."
            )
        with mc.unlocked():
            for k in ("name",) + ARCH_FIELDS + SIZE_FIELDS:
                new = meta["model"] if k == "name" else meta[k]
                if mc[k] is not None and mc[k] != new:
                    notes.append(f"model.{k}: {mc[k]} -> {new} (from the checkpoint)")
                mc[k] = new
    nag = float(config.sample.nag_scale) != 0.0
    with mc.unlocked():
        if has_token:
            if mc.null_noise != "learned":
                notes.append("model.null_noise -> 'learned' (the checkpoint has a token)")
            mc.null_noise = "learned"
        elif mc.null_noise == "learned":
            if nag:
                raise ConfigError(
                    f"sample.nag_scale={config.sample.nag_scale} needs a learned null noise "
                    "token, and this checkpoint has none (a release checkpoint; NAG fine-tuning "
                    "creates it: configs/sit_xl_nag_finetune.py). Set --config.sample."
                    "nag_scale=0.0, or --config.model.null_noise=zero to use a zero token."
                )
            mc.null_noise = "zero"
    return notes


def load_model(config) -> tuple[DiT, dict, dict, list[str]]:
    """The model of ``config.model.weights`` -> ``(model, params, metadata, notes)``, as DiT's
    ``find_model``: the params (numpy) and metadata read by the one loader
    (nag_jax.storage.weights.load_params: a converted checkpoint, whose metadata then fixes the
    architecture, or a training workdir's checkpoints/, EMA params); ``config.model`` made to
    describe them (`reconcile_model_config`, which returns the ``notes``); the model built from
    it and the params checked against it (a ConfigError names every mismatch)."""
    from nag_jax.storage import weights

    if not config.model.weights:
        raise ConfigError(
            "No weights: set --config.model.weights to a converted checkpoint (python -m "
            "nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ directory."
        )
    params, meta = weights.load_params(config.model.weights)
    notes = reconcile_model_config(config, meta, params)
    model = build_model(config.model)
    s = model.input_size
    x = jnp.zeros((1, s, s, model.in_channels))
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    )
    weights.check_params_match(
        shapes["params"],
        params,
        source=str(as_path(config.model.weights)),
        hint="Fix config.model (input_size, hidden_size, ...) or the checkpoint path.",
        error=ConfigError,
    )
    return model, params, meta, notes


def with_domain_params(config, params):
    """The params a sampler of ``config`` takes: ``params`` itself, or with Domain Guidance
    (``config.sample.dog_scale != 1``) ``{"main": params, "domain": pre-trained}``, the
    pre-trained weights read from ``config.model.domain_weights`` (the one loader,
    nag_jax.storage.weights.load_params) and fitted to ``params``'s tree (`domain_params_like`:
    only their null label row is read)."""
    if float(config.sample.dog_scale) == 1.0:
        return params
    if not config.model.domain_weights:
        raise ValueError(
            f"config.sample.dog_scale={config.sample.dog_scale} (Domain Guidance) needs the "
            "pre-trained weights: set config.model.domain_weights to the model the fine-tune "
            "started from (a converted release or a training checkpoints/ directory)."
        )
    from nag_jax.storage.weights import load_params

    domain = load_params(config.model.domain_weights)[0]
    return {MAIN: params, DOMAIN: domain_params_like(params, domain)}


def build_decoder(config) -> tuple[Callable, object] | None:
    """``(fn(vae_params, latents) -> images in [-1, 1], vae_params)`` for latent models
    (``config.model.in_channels != 3``: the SD-VAE at ``config.vae.path``, read by
    nag_jax.models.vae.load_vae); None for pixel models."""
    if int(config.model.in_channels) == 3:
        return None
    if not config.vae.path:
        raise ConfigError(
            f"{config.model.name} samples {config.model.in_channels}-channel latents: set "
            "--config.vae.path to the SD-VAE (a local stabilityai/sd-vae-ft-ema folder or "
            "`python -m nag_jax.convert vae` output)."
        )
    from nag_jax.models import vae as vae_lib

    vae, vae_params = vae_lib.load_vae(config.vae.path, chunk_size=int(config.vae.chunk_size))
    return vae.decode, vae_params


# Names that moved (issue 21): a one-line error naming the new home.
__getattr__ = moved_names(
    __name__,
    {
        "per_image_keys": "nag_jax.sampling.generate.per_image_keys",
    },
)
