"""The one config schema: every section, every key, its default and its meaning.

Every job config (configs/*.py) and the tests' tiny config (nag_jax.training.testing) start from
``base_config()`` and change values, never the set of keys, so a key means the same thing in
every mode and an override valid for one job is valid for all. Jobs read ``config.x.y`` directly,
without fallbacks: the default lives here and only here. ``validate(config)`` (run by
``nag_jax.main`` and by each job's ``run``) checks that the keys are all there and that every
enumerated value is one of its choices, with an error naming the key, the value and the choices.

This module lives in the package (not in configs/) so an installed ``nag_jax`` can build and check
configs; it imports only ml_collections, so loading a config file stays cheap.

Paths shared by every mode (one name each):
  model.weights  the weights of ``config.model``: a converted release (``python -m nag_jax.convert
                 to-orbax``) or a training workdir's checkpoints/ directory (its latest EMA
                 params). train: the starting point of fine-tuning (ignored when the workdir
                 already has a checkpoint); sample / eval: the weights sampled.
  vae.path       the SD-VAE (a diffusers folder such as sd-vae-ft-ema or a converted Orbax dir):
                 decodes latents in sample / eval, encodes images in encode_latents.

Time conventions (fixed by the model family, nag_jax.diffusion.family): SiT float t in [0, 1],
t = 0 noise, t = 1 data; DiT integer step 0..999, 0 = least noise. Guidance intervals are noise
levels (1 = pure noise).
"""

from __future__ import annotations

import re

import ml_collections
from ml_collections.config_dict import placeholder

# config.mode -> the job module whose run(config, workdir) it runs (nag_jax.main dispatches).
MODES = {
    "train": "nag_jax.training.train",
    "demo": "nag_jax.demo",
    "sample": "nag_jax.sample_job",
    "eval": "nag_jax.evaluation.eval_job",
    "lab": "nag_jax.analysis.lab",
    "study": "nag_jax.analysis.demo_study",
    "encode_latents": "nag_jax.data.encode_latents",
    "sweep": "nag_jax.sweep",
}

# Enumerated keys and their allowed values (None allowed where listed). The tuples mirror the
# modules that consume them (a test checks they agree): sampling.ODE_METHODS / LAST_STEPS,
# diffusion.transport.PATHS / PREDICTIONS / DIFFUSION_FORMS, diffusion.family samplers.
CHOICES = {
    "mode": tuple(MODES),
    "model.null_noise": ("learned", "zero"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attention_impl": (None, "xla", "cudnn"),
    "process.path": ("linear", "gvp", "vp"),
    "process.prediction": ("velocity", "score", "noise"),
    "process.beta_schedule": ("linear", "squaredcos_cap_v2"),
    "encode.dtype": ("float16", "bfloat16", "float32"),
    "encode.vae_dtype": ("float32", "bfloat16"),
    "train.null_token_init": ("mean_t_embedding", "zeros", "random"),
    "sample.sampler": ("ode", "sde", "ddpm", "ddim"),
    "sample.method": ("euler", "heun"),
    "sample.diffusion_form": (
        "constant",
        "SBDM",
        "sigma",
        "linear",
        "decreasing",
        "increasing-decreasing",
    ),
    "sample.last_step": (None, "Mean", "Tweedie", "Euler"),
    "sample.dog_call": ("stacked", "sequential"),
    "data.synthetic_variant": ("base", "recoloured"),
    "eval.extractor": ("inception", "proxy", "random_inception"),
    "eval.inception_preprocess": ("pytorch_fid", "adm_tf"),
    "eval.reference_stats": ("images", "precomputed"),
}


IMAGENET_TRAIN_IMAGES = 1_281_167


def steps_for_epochs(epochs: float, batch: int = 256, images: int = IMAGENET_TRAIN_IMAGES) -> int:
    """Optimizer steps for ``epochs`` passes over ``images`` at global ``batch`` (rounded)."""
    return int(round(epochs * images / batch))


def _section(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def base_config() -> ml_collections.ConfigDict:
    """The full schema with its defaults. Model, objective, optimizer and schedule default to the
    releases' recipe (SiT-XL/2, 256px SD-VAE latents; bf16 compute and ImageNet latents are set
    by nag_jax.training.defaults.release_config); data defaults to the built-in shapes. Optional
    values are typed placeholders (None) so that ``--config.x.y=...`` can set them."""
    c = ml_collections.ConfigDict()
    c.mode = "train"  # one of MODES
    c.seed = 0  # every random draw of a job derives from it (image i: nag_jax.generate)
    c.model = _section(
        name="SiT-XL/2",  # "<SiT|DiT>-<XL|L|B|S>/<2|4|8>"; the prefix is the family
        input_size=32,  # spatial size the network sees (256px / VAE factor 8)
        in_channels=4,  # 4 = SD-VAE latents (a VAE decodes samples), 3 = pixels
        num_classes=1000,
        learn_sigma=True,  # 2C outputs (DiT: learned-range variance; SiT ignores the second half)
        null_noise="learned",  # NAG's null noise token: "learned" parameter or "zero"
        dtype="float32",  # compute dtype (the releases train in bfloat16); params stay float32
        hidden_size=placeholder(int),  # None: from the size in the name
        depth=placeholder(int),
        num_heads=placeholder(int),
        patch_size=placeholder(int),  # None: from the name
        attention_impl=placeholder(str),  # jax.nn.dot_product_attention: None/"xla"/"cudnn"
        remat=False,  # rematerialise each block in the backward pass
        weights=placeholder(str),  # see the module docstring
        # Domain Guidance (sample.dog_scale != 1): the PRE-TRAINED weights of the same
        # architecture, the second network (nag_jax.guidance; nag_jax.generate.with_domain_params)
        domain_weights=placeholder(str),
    )
    # SiT reads path..sample_eps (a Transport); DiT reads num_timesteps, beta_schedule (DDPM).
    c.process = _section(
        path="linear",
        prediction="velocity",
        train_eps=placeholder(float),
        sample_eps=placeholder(float),
        num_timesteps=1000,
        beta_schedule="linear",
    )
    c.objective = _section(p_class_drop=0.1, p_noise_drop=0.1)  # NAG's two dropouts
    c.data = _section(
        name="synthetic_shapes",  # "latents", "synthetic_shapes", "image_folder" or a tfds name
        data_dir=placeholder(str),  # latents: the encode step's out_dir
        split="train",
        image_size=32,
        num_classes=16,
        global_batch_size=256,
        num_workers=0,  # grain worker processes (0 = in-process)
        num_threads=1,
        prefetch_buffer_size=2,
        random_flip=True,
        shuffle=True,
        num_epochs=placeholder(int),  # None: repeat forever
        return_index=False,
        tfds_prepare=False,
        synthetic_seed=0,  # synthetic_shapes only
        num_examples=100_000,  # synthetic_shapes only
        synthetic_variant="base",  # synthetic_shapes: "recoloured" = new colours (transfer)
    )
    # Image source -> SD-VAE latent shards (mode encode_latents; the ':encode' config variants).
    c.encode = _section(
        image_source="imagenet2012",
        image_data_dir=placeholder(str),
        out_dir=placeholder(str),  # None: <workdir>/latents
        batch_size=64,
        shard_size=10_000,
        max_examples=placeholder(int),
        dtype="float16",  # stored latents
        vae_dtype="float32",  # VAE compute
        store_flips=True,
        sample=True,  # sample the posterior (the releases) rather than take its mean
    )
    c.vae = _section(path=placeholder(str), chunk_size=8)  # chunk_size: decode batch slices
    c.optim = _section(
        lr=1e-4,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=placeholder(float),  # global norm; None = off
        warmup_steps=0,
        ema_decay=0.9999,
        trainable="all",  # "all", "null_token" or a regex over '/'-joined param paths
    )
    c.train = _section(
        num_steps=steps_for_epochs(1400),  # the published XL models: ~7M steps
        log_every=100,
        checkpoint_every=10_000,  # 0 = only at the end
        keep=3,
        keep_every=placeholder(int),  # also keep every N-th step's checkpoint
        sample_every=10_000,  # sample grid of the EMA weights (0 = never)
        eval_every=0,  # the trainer's evaluators (config.eval; 0 = never)
        reinit=placeholder(str),  # regex: params re-initialised instead of read from weights
        null_token_init="mean_t_embedding",  # how a null token absent from weights starts
        preemption_sync_every=10,  # steps between the processes' SIGTERM agreement
        async_checkpoint=True,
        tensorboard=True,
    )
    c.sample = _section(
        sampler="sde",  # SiT: "ode" | "sde"; DiT: "ddpm" | "ddim"
        num_steps=250,
        method="euler",  # ODE / SDE integrator
        diffusion_form="sigma",  # SDE
        last_step="Mean",  # SDE
        last_step_size=0.04,  # SDE
        eta=0.0,  # DDIM
        cfg_scale=1.0,
        nag_scale=0.0,
        dog_scale=1.0,  # Domain Guidance omega (1 = off): model.domain_weights guides
        dog_call="stacked",  # DoG's two networks: one vmapped call ("stacked") or "sequential"
        cfg_interval=(0.0, 1.0),  # noise levels where CFG acts
        nag_interval=(0.0, 1.0),
        cfg_channels=placeholder(int),  # guide only the first C channels (the releases' 3)
        num_images=16,
        batch_size=16,  # global; padded to a multiple of the devices
        labels=placeholder(tuple),  # class ids cycled over the images; None: drawn per image
        return_trajectory=False,
        grid_images=64,  # sample mode: images in grid.png
        grid_cols=0,  # 0 = square-ish
    )
    c.eval = _section(
        num_images=50_000,
        batch_size=64,  # global, padded to a multiple of the devices
        extractor="inception",
        inception_path=placeholder(str),  # pytorch-fid weights (python -m nag_jax.convert)
        inception_preprocess="pytorch_fid",
        extractor_seed=0,  # random_inception only (plumbing tests, never a quality number)
        proxy_path=placeholder(str),  # extractor "proxy": the demo's shapes classifier
        proxy_seed=0,
        reference=placeholder(str),  # ADM reference batch .npz or "dataset" (config.data)
        reference_stats="images",  # "precomputed": the batch's stored mu / sigma
        reference_num_images=placeholder(int),
        reference_seed=0,
        cache_dir=placeholder(str),  # None: <workdir>/reference_cache
        feature_batch_size=200,
        pr_k=3,
        pr_block_size=10_000,
        is_splits=10,
        samples=placeholder(str),  # an existing ADM .npz to score instead of sampling
        results_file=placeholder(str),  # None: <workdir>/eval_results.jsonl (+ .csv)
        train_num_images=1000,  # images per evaluation during training
    )
    # mode "sweep" (nag_jax.sweep): a guidance grid scored with config.eval's extractor and
    # reference, one compiled sampler for every point; intervals are noise levels (1 = noise).
    c.sweep = _section(
        cfg_scales=(1.0,),
        nag_scales=(0.0,),
        dog_scales=(1.0,),  # Domain Guidance omega (needs model.domain_weights when != 1)
        cfg_intervals=((0.0, 1.0),),
        nag_intervals=((0.0, 1.0),),
        points=placeholder(tuple),  # explicit points (dicts of nag_jax.sweep.Point) instead
        val_seeds=(100, 101),  # the best point is chosen here ...
        report_seeds=(0, 1, 2),  # ... and reported on these held-out seeds
        num_images=1000,  # per seed and point
        metric="fid",  # the key of the evaluation metrics minimised (fid, class_accuracy...)
    )
    c.parallel = _section(fsdp=True, mesh=_section(data=-1, fsdp=-1, tensor=1), fsdp_min_size=2**16)
    return c


def _merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for key, value in given.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def complete(config, section: str | None = None) -> ml_collections.ConfigDict:
    """A hand-built, possibly partial config (notebooks, benchmarks) with the schema's defaults
    filled in: ``base_config()`` overlaid with ``config``'s values. With ``section`` (e.g.
    "model"), ``config`` is that section alone and the completed section is returned."""
    base = base_config().to_dict()
    if section is not None:
        return ml_collections.ConfigDict(_merge(base[section], _as_dict(config)))
    return ml_collections.ConfigDict(_merge(base, _as_dict(config)))


def _missing(reference, config, prefix: str = "") -> list[str]:
    out = []
    for key, value in reference.items():
        name = f"{prefix}{key}"
        if key not in config:
            out.append(name)
        elif isinstance(value, ml_collections.ConfigDict):
            sub = config[key]
            if isinstance(sub, (ml_collections.ConfigDict, dict)):
                out += _missing(value, sub, f"{name}.")
            else:
                out.append(name)
    return out


def validate(config) -> None:
    """Raises ValueError if a schema key is missing or an enumerated value is not allowed.

    Checked: every key of ``base_config()`` is present; every ``CHOICES`` key holds one of its
    values; ``sample.sampler`` is one of the model family's (nag_jax.diffusion.family);
    ``optim.trainable`` is "all", "null_token" or a valid regex.
    """
    missing = _missing(base_config(), config)
    if missing:
        raise ValueError(
            f"config lacks the schema keys {missing[:8]}{' ...' if len(missing) > 8 else ''}: "
            "build job configs from nag_jax.config_schema.base_config() and change values only."
        )
    for dotted, allowed in CHOICES.items():
        section, _, key = dotted.rpartition(".")
        value = config[section][key] if section else config[key]
        if value not in allowed:
            raise ValueError(
                f"config.{dotted}={value!r} is not allowed; expected one of {allowed}."
            )
    from nag_jax.diffusion.family import family_for  # jax: only when a job validates

    try:
        family = family_for(config.model.name)
    except ValueError:  # not a registry name (the lab's MLP denoiser): built by its own job
        family = None
    if family is not None and config.sample.sampler not in family.samplers:
        raise ValueError(
            f"config.sample.sampler={config.sample.sampler!r} does not apply to "
            f"{config.model.name}; {family.name} models sample with one of {family.samplers}."
        )
    trainable = config.optim.trainable
    if trainable not in ("all", "null_token"):
        try:
            re.compile(trainable)
        except (re.error, TypeError) as e:
            raise ValueError(
                f"config.optim.trainable={trainable!r} is neither 'all', 'null_token' nor a "
                f"valid regex ({e})."
            ) from e
