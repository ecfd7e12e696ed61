"""Config -> objects: the one place that turns an ml_collections config into a model, a noising
process, a guidance setting and a sampler. Training, sampling, evaluation and the lab all build
through here, so one config means the same thing everywhere.

Time conventions: SiT models get float t in [0, 1] (0 = noise, 1 = data); DiT models get the
original integer step 0..999 (0 = least noise). Guidance intervals are in the paper's noise level
(1 = pure noise); the process supplies the mapping (`Transport.noise_level`,
`GaussianDiffusion.noise_level`).

Randomness for sampling is per image: ``sample_fn(params, keys, y)`` takes ONE key per image
(``per_image_keys(seed_key, indices)``), and the initial noise and every step's noise of image i
derive from ``keys[i]`` alone. Image i is then the same whatever the batch it is drawn in or the
number of devices it is sharded over (up to float reassociation in the network's matmuls).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nag_jax import sampling
from nag_jax.diffusion import GaussianDiffusion, Transport, create_diffusion
from nag_jax.guidance import GuidanceConfig, guided_prediction
from nag_jax.models import DiT, create_model, parse_model_name

SAMPLERS = {"SiT": ("ode", "sde"), "DiT": ("ddpm", "ddim")}


def family_of(config) -> str:
    """'SiT' or 'DiT' from ``config.model.name``."""
    return parse_model_name(config.model.name)[0]


def build_model(model_cfg) -> DiT:
    """``config.model`` -> the backbone (see nag_jax.models.create_model for the fields)."""
    get = lambda k, d=None: model_cfg.get(k, d) if hasattr(model_cfg, "get") else d
    return create_model(
        model_cfg.name,
        input_size=model_cfg.input_size,
        in_channels=model_cfg.in_channels,
        num_classes=model_cfg.num_classes,
        learn_sigma=get("learn_sigma", True),
        null_noise=get("null_noise", "learned"),
        dtype=get("dtype", "float32"),
        attention_impl=get("attention_impl", None),
        remat=get("remat", False),
        hidden_size=get("hidden_size"),
        depth=get("depth"),
        num_heads=get("num_heads"),
        patch_size=get("patch_size"),
    )


def build_process(config, *, for_sampling: bool = False) -> Transport | GaussianDiffusion:
    """The noising process of ``config``'s family.

    SiT: a `Transport` from ``config.process`` (path, prediction, train_eps, sample_eps).
    DiT: the 1000-step DDPM for training; for sampling it is respaced to ``config.sample.num_steps``
    (``"ddimN"`` spacing for the DDIM sampler), as the release's ``create_diffusion(str(N))``.
    """
    family = family_of(config)
    proc = config.get("process", {}) or {}
    if family == "SiT":
        return Transport(
            path=proc.get("path", "linear"),
            prediction=proc.get("prediction", "velocity"),
            train_eps=proc.get("train_eps"),
            sample_eps=proc.get("sample_eps"),
        )
    num_timesteps = int(proc.get("num_timesteps", 1000))
    learn_sigma = bool(config.model.get("learn_sigma", True))
    respacing = ""
    if for_sampling:
        steps = int(config.sample.num_steps)
        respacing = f"ddim{steps}" if config.sample.sampler == "ddim" else str(steps)
    return create_diffusion(
        respacing,
        num_timesteps,
        learn_sigma,
        beta_schedule=proc.get("beta_schedule", "linear"),
    )


def build_guidance(sample_cfg) -> GuidanceConfig:
    """``config.sample`` -> `GuidanceConfig` (cfg_scale, nag_scale, intervals, cfg_channels)."""
    get = lambda k, d: sample_cfg.get(k, d) if sample_cfg.get(k, d) is not None else d
    return GuidanceConfig(
        cfg_scale=float(get("cfg_scale", 1.0)),
        nag_scale=float(get("nag_scale", 0.0)),
        cfg_interval=tuple(get("cfg_interval", (0.0, 1.0))),
        nag_interval=tuple(get("nag_interval", (0.0, 1.0))),
        cfg_channels=sample_cfg.get("cfg_channels", None),
    )


def make_net_fn(model: DiT, params, family: str) -> Callable:
    """``net_fn(x, t, y, drop_class, drop_noise)`` for guidance: SiT keeps the first C channels
    (the learned-sigma half is discarded as in the release), DiT returns all 2C."""

    def net_fn(x, t, y, drop_class, drop_noise):
        out = model.apply({"params": params}, x, t, y, drop_class=drop_class, drop_noise=drop_noise)
        return out[..., : model.in_channels] if family == "SiT" else out

    return net_fn


def guided_pred_fn(model: DiT, params, config, process=None, scales=None) -> Callable:
    """The guided prediction ``pred_fn(x, t, y)`` (scalar t, family convention) of a config.

    ``scales``: optional traced (s_cfg, w_nag) replacing config.sample's values."""
    family = family_of(config)
    process = process if process is not None else build_process(config, for_sampling=True)
    return guided_prediction(
        make_net_fn(model, params, family),
        build_guidance(config.sample),
        noise_level_fn=process.noise_level,
        guided_channels=model.in_channels if family == "DiT" else None,
        scales=scales,
    )


def per_image_keys(key: jax.Array, indices) -> jax.Array:
    """One key per global image index: ``keys[j] = fold_in(key, indices[j])`` (shape (N,))."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


def build_sampler(config, model: DiT, *, return_trajectory: bool = False) -> Callable:
    """``sample_fn(params, keys, y, scales=None) -> images`` for ``config.sample``; pure, jit it.

    Args of sample_fn:
      params: the model's params.
      keys: (N,) PRNG keys, one per image (see `per_image_keys`).
      y: (N,) int32 labels.
      scales: optional (s_cfg, w_nag) arrays overriding config.sample's scales at run time (one
        compilation for a whole sweep); the branches computed are those config.sample turns on.

    Returns:
      (N, H, W, C) float32 samples in the model's space (pixels in [-1, 1] or latents), or
      ``(samples, trajectory)`` when ``return_trajectory`` (see nag_jax.sampling).
    """
    family = family_of(config)
    sc = config.sample
    kind = str(sc.sampler)
    if kind not in SAMPLERS[family]:
        raise ValueError(
            f"sample.sampler={kind!r} does not apply to {config.model.name}; {family} models "
            f"sample with one of {SAMPLERS[family]}."
        )
    process = build_process(config, for_sampling=True)
    shape = (model.input_size, model.input_size, model.in_channels)
    num_steps = int(sc.num_steps)
    method = sc.get("method", "euler") or "euler"

    def sample_fn(params, keys, y, scales=None):
        pred_fn = guided_pred_fn(model, params, config, process, scales)
        x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        common = dict(return_trajectory=return_trajectory)
        if kind == "ode":
            return sampling.sample_ode(
                pred_fn, x_init, y, transport=process, num_steps=num_steps, method=method, **common
            )
        if kind == "sde":
            return sampling.sample_sde(
                pred_fn,
                noise_keys,
                x_init,
                y,
                transport=process,
                num_steps=num_steps,
                method=method,
                diffusion_form=sc.get("diffusion_form", "sigma") or "sigma",
                last_step=sc.get("last_step", "Mean"),
                last_step_size=float(sc.get("last_step_size", 0.04)),
                **common,
            )
        if kind == "ddpm":
            return sampling.sample_ddpm(pred_fn, noise_keys, x_init, y, diffusion=process, **common)
        return sampling.sample_ddim(
            pred_fn,
            x_init,
            y,
            diffusion=process,
            eta=float(sc.get("eta", 0.0) or 0.0),
            key=noise_keys,
            **common,
        )

    return sample_fn
