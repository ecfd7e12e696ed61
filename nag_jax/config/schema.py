"""The one config schema: every section, every key, its default and its meaning.

Every job config (configs/*.py) and the tests' tiny config (tests.fixtures) start from
``base_config()`` and change values, never the set of keys, so a key means the same thing in
every mode and an override valid for one job is valid for all. Jobs read ``config.x.y`` directly,
without fallbacks: the default lives here and only here. ``validate(config)`` checks that the
keys are all there and that every enumerated value is one of its choices, with an error naming
the key, the value and the choices.

The config is completed and validated ONCE, where a job starts: ``resolve(config)`` (called by
``nag_jax.main.run``; notebooks, benchmarks and tests call it on a hand-built, possibly partial
config). Library functions (nag_jax.sampling.build, nag_jax.data.pipeline, ...) take the
sections of a resolved config or plain arguments and never complete a config themselves.

This module lives in the package (not in configs/) so an installed ``nag_jax`` can build and check
configs; it imports only ml_collections (and nag_jax.errors) at load time, so loading a config
file stays cheap (``CHOICES`` reads the library modules that own the enumerations on first use).

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

import functools
import math
import numbers
import re

import ml_collections
from ml_collections.config_dict import placeholder

from nag_jax.errors import ConfigError  # its home is nag_jax.errors; the schema's name stays

# config.mode -> the job module whose run(config, workdir) it runs (nag_jax.main dispatches).
# Every job lives in nag_jax/jobs/<mode>.py; nothing outside nag_jax.jobs imports a job.
MODES = {
    mode: f"nag_jax.jobs.{mode}"
    for mode in (
        "train",
        "demo",
        "sample",
        "eval",
        "lab",
        "study",
        "noise_shift",
        "encode_latents",
        "sweep",
        "compile",
    )
}

# Enumerated keys and their allowed values (None allowed where listed): the schema's own here;
# those a library module defines are read from it (`choices`), never copied.
_OWN_CHOICES = {
    "model.null_noise": ("learned", "zero"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attention_impl": (None, "explicit", "xla", "cudnn"),
    # nag_jax.training.step.compiler_options reads it from here (the step imports the schema)
    "train.cpu_dot_library": (None, "onednn", "xla"),
    "process.beta_schedule": ("linear", "squaredcos_cap_v2"),
    "encode.dtype": ("float16", "bfloat16", "float32"),
    "encode.vae_dtype": ("float32", "bfloat16"),
    "train.null_token_init": ("mean_t_embedding", "zeros", "random"),
    "sample.nag_mode": ("token", "classifier"),
    "sample.dog_call": ("stacked", "sequential"),
    "data.synthetic_variant": ("base", "recoloured"),
    "eval.extractor": ("inception", "proxy", "random_inception"),
    "eval.inception_preprocess": ("pytorch_fid", "adm_tf"),
    "eval.reference_stats": ("images", "precomputed"),
    "data.bad_images": ("skip", "fail"),
    "data.channels": (1, 3),
    "data.idx_fit": ("pad", "resize"),
}


@functools.cache
def choices() -> dict[str, tuple]:
    """Every enumerated key -> its allowed values (``CHOICES``): `_OWN_CHOICES` and the tuples
    of the modules that own them (imported on first use: they import jax)."""
    from nag_jax.diffusion import family, transport
    from nag_jax.models import linear
    from nag_jax.sampling import adaptive, scan

    samplers = tuple(dict.fromkeys(s for f in family.FAMILIES.values() for s in f.samplers))
    owned = {
        "mode": tuple(MODES),
        "process.path": transport.PATHS,
        "process.prediction": transport.PREDICTIONS,
        "sample.sampler": samplers,
        "sample.ode_solver": adaptive.ADAPTIVE_SOLVERS,
        "sample.method": scan.ODE_METHODS,  # the SDE integrators are the same pair (a test)
        "sample.diffusion_form": transport.DIFFUSION_FORMS,
        "sample.last_step": scan.LAST_STEPS,
        "model.dense_impl": linear.IMPLEMENTATIONS,
    }
    return {**owned, **_OWN_CHOICES}


def __getattr__(name: str):  # ``schema.CHOICES`` on first use: importing the schema needs no jax
    if name == "CHOICES":
        return choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


IMAGENET_TRAIN_IMAGES = 1_281_167


def steps_for_epochs(epochs: float, batch: int = 256, images: int = IMAGENET_TRAIN_IMAGES) -> int:
    """Optimizer steps for ``epochs`` passes over ``images`` at global ``batch`` (rounded)."""
    return int(round(epochs * images / batch))


def _section(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def sibling_module(here: str, name: str):
    """The config module ``NAME.py`` in the folder of ``here`` (a config file's ``__file__``).

    Configs build on each other (the demo's study, sweep and noise-shift configs start from
    ``configs/demo.py``) but run by path, from a checkout or the installed package, so they are
    not imported as a package: this is the one loader they share."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(here)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_nag_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(here: str, name: str, *args) -> ml_collections.ConfigDict:
    """``get_config(*args)`` of the sibling config ``NAME.py`` (`sibling_module`)."""
    return sibling_module(here, name).get_config(*args)


def config_file(path: str, *args) -> ml_collections.ConfigDict:
    """``get_config(*args)`` of the config file at ``path`` (configs/NAME.py), by path."""
    import os

    name = os.path.splitext(os.path.basename(path))[0]
    return sibling_config(os.path.abspath(path), name, *args)


def base_config() -> ml_collections.ConfigDict:
    """The full schema with its defaults. Model, objective, optimizer and schedule default to the
    releases' recipe (SiT-XL/2, 256px SD-VAE latents; bf16 compute and ImageNet latents are set
    by nag_jax.config.release.release_config); data defaults to the built-in shapes. Optional
    values are typed placeholders (None) so that ``--config.x.y=...`` can set them."""
    c = ml_collections.ConfigDict()
    c.mode = "train"  # one of MODES
    c.seed = 0  # every random draw of a job derives from it (image i: nag_jax.sampling.generate)
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
        # nag_jax.models.attention: None (CPU "explicit", GPU/TPU "xla"), "explicit", "xla", "cudnn"
        attention_impl=placeholder(str),
        # nag_jax.models.linear: None (CPU "transposed_input", GPU/TPU "xla"), "transposed_input",
        # "xla": how the dense layers' kernel gradients are formed (same forward pass)
        dense_impl=placeholder(str),
        remat=False,  # rematerialise each block in the backward pass
        weights=placeholder(str),  # see the module docstring
        # Domain Guidance (sample.dog_scale != 1): the PRE-TRAINED weights of the same
        # architecture, the second network (nag_jax.guidance;
        # nag_jax.sampling.build.with_domain_params)
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
        name="synthetic_shapes",  # "latents", "synthetic_shapes", "image_folder", "idx" or tfds
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
        channels=3,  # idx: 3 = grey repeated (an RGB model), 1 = grey (model.in_channels=1)
        idx_fit="pad",  # idx: to image_size by centred zero "pad" (or crop), or bicubic "resize"
        # an image that does not decode: "skip" (a warning naming it, a running count, and the
        # next good image of the same process's shard in its place: batches and resumes stay
        # deterministic) or "fail" (stop, naming the file)
        bad_images="skip",
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
        decay_steps=0,  # 0: constant lr after warmup; N: cosine decay to 0 ending at step N
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
        # XLA:CPU's library for the train step's dot products (nag_jax.training.step):
        # "onednn", "xla"; None: "onednn" on x86-64 hosts, else "xla". Ignored off CPU.
        cpu_dot_library=placeholder(str),
    )
    c.sample = _section(
        sampler="sde",  # SiT: "ode" | "sde" | "ode_adaptive"; DiT: "ddpm" | "ddim"
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
    # Adaptive ODE (sample.sampler = "ode_adaptive", SiT; nag_jax.sampling.sample_ode_adaptive,
    # diffrax): the release's sample_ode defaults. ode_per_image: steps chosen per image (image i
    # independent of its batch); False = shared by the batch as in the release.
    c.sample.update(ode_solver="dopri5", atol=1e-6, rtol=1e-3, max_steps=4096, ode_per_image=True)
    # NAG's kind: "token" = classifier-free NAG (the null noise token branch); "classifier" =
    # classifier-based NAG with a noise-level estimator (nag_jax.models.noise_estimator; trained by
    # mode=noise_shift, which writes <workdir>/estimator): nag_scale is then the estimator's
    # gradient scale and nag_interval where it acts (SiT: its upper end must be < 1).
    c.sample.update(nag_mode="token", estimator=placeholder(str))
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
    # mode "sweep" (nag_jax.jobs.sweep): a guidance grid scored with config.eval's extractor and
    # reference, one compiled sampler for every point; intervals are noise levels (1 = noise).
    c.sweep = _section(
        cfg_scales=(1.0,),
        nag_scales=(0.0,),
        dog_scales=(1.0,),  # Domain Guidance omega (needs model.domain_weights when != 1)
        cfg_intervals=((0.0, 1.0),),
        nag_intervals=((0.0, 1.0),),
        points=placeholder(tuple),  # explicit points (dicts of nag_jax.jobs.sweep.Point) instead
        val_seeds=(100, 101),  # the best point is chosen here ...
        report_seeds=(0, 1, 2),  # ... and reported on these held-out seeds
        num_images=1000,  # per seed and point
        metric="fid",  # the key of the evaluation metrics minimised (fid, class_accuracy...)
    )
    # mode "compile" (nag_jax.jobs.compile): AOT-compile the train step and sampler for a pod
    # topology ("v5e:4x4", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2": needs libtpu; "cpu:N"; None: this
    # host's devices) and report per-chip memory against the chip's HBM, FLOPs, compile time.
    c.compile = _section(
        topology=placeholder(str),
        per_device_batch=placeholder(int),  # None: data.global_batch_size / batch shards
        sampler=True,  # also compile config.sample's sampler at sample.batch_size
        hbm_gib=placeholder(float),  # None: the chip's (HBM_GIB_PER_CHIP); cpu: unchecked
    )
    c.parallel = _section(fsdp=True, mesh=_section(data=-1, fsdp=-1, tensor=1), fsdp_min_size=2**16)
    # nag_jax.main: a bf16 / fp16 config (the releases' FSDP recipe) on a host whose JAX sees only
    # CPUs stops with one line (usually a CPU jaxlib over the accelerator build) unless True.
    c.parallel.allow_cpu = False
    return c


def noise_shift_section() -> ml_collections.ConfigDict:
    """``config.noise_shift``: the keys of mode=noise_shift (nag_jax.jobs.noise_shift); its
    configs start from these defaults and change values.

    rows: the guidance settings compared, each a dict of ``name`` and any of cfg_scale,
      nag_scale, nag_interval, nag_mode ("token" | "classifier": the mode's own estimator, or
      the one at the row's ``estimator`` path).
    """
    return ml_collections.ConfigDict(
        dict(
            rows=(
                dict(name="none"),
                dict(name="CFG", cfg_scale=1.5),
                dict(name="NAG", nag_scale=1.0),
                dict(name="CFG+NAG", cfg_scale=1.5, nag_scale=1.0),
                dict(name="cls-NAG", nag_mode="classifier", nag_scale=1.0, nag_interval=(0.0, 0.6)),
            ),
            num_images=256,  # sampled per row (image i of config.seed: nag_jax.sampling.generate)
            batch_size=64,  # global, padded to a multiple of the devices
            max_states=16,  # trajectory states measured per row (evenly spaced, ends included)
            late=0.25,  # "late" shift summary: nominal levels <= this
            kde_states=6,  # nominal steps drawn in the KDE figure
            # g(lambda | x): trained on config.data (sharded) unless `weights` names a saved one
            estimator=dict(
                weights=placeholder(str),
                seed=placeholder(int),  # None: config.seed (training draws and data order)
                num_bins=50,
                hidden=256,
                depth=3,
                conv_layers=2,
                num_steps=2000,
                lr=1e-3,
                log_every=100,
                eval_images=512,  # held-out forward samples for the estimator's accuracy
            ),
        )
    )


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
    """A hand-built, possibly partial config (notebooks, benchmarks, tests) with the schema's
    defaults filled in: ``base_config()`` overlaid with ``config``'s values. With ``section``
    (e.g. "data"), ``config`` is that section alone and the completed section is returned."""
    base = base_config().to_dict()
    if section is not None:
        return ml_collections.ConfigDict(_merge(base[section], _as_dict(config)))
    return ml_collections.ConfigDict(_merge(base, _as_dict(config)))


def resolve(config, *, mode: str | None = None) -> ml_collections.ConfigDict:
    """The config a job runs with, completed and validated once: by nag_jax.main.run, and by
    notebooks, benchmarks and tests for a hand-built (partial, dicts fine) config. A config
    holding every key (configs/*.py) is returned itself. ``mode`` sets ``config.mode`` (a partial
    sampling config would otherwise be checked as mode "train"). Raises ConfigError."""
    if not isinstance(config, ml_collections.ConfigDict) or _missing(base_config(), config):
        config = complete(config)
    if mode is not None:
        with config.unlocked():
            config.mode = mode
    validate(config)
    return config


def optional_keys() -> set[str]:
    """Dotted keys whose schema default is None (typed placeholders: paths, sizes taken from the
    name, optional limits). ``--config.KEY=None`` (or an empty value) sets them to None."""
    out = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif v is None:
                out.add(f"{prefix}{k}")

    walk(base_config().to_dict())
    return out


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


# Numeric keys: key -> (test, what is allowed). Checked by validate() before any job compiles.
def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _interval(v) -> bool:
    return (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(_finite(x) and 0 <= x <= 1 for x in v)
        and v[0] <= v[1]
    )


_POSITIVE_INT = (lambda v: _int(v) and v >= 1, "an integer >= 1")
_COUNT = (lambda v: _int(v) and v >= 0, "an integer >= 0")
_OPTIONAL_POSITIVE_INT = (lambda v: v is None or (_int(v) and v >= 1), "None or an integer >= 1")
_PROBABILITY = (lambda v: _finite(v) and 0 <= v <= 1, "a number in [0, 1]")
_FINITE = (_finite, "a finite number")
_NONNEG = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
_ADAM_BETA = (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")
_INTERVAL = (_interval, "(lo, hi) noise levels with 0 <= lo <= hi <= 1")
VALUE_CHECKS = {
    "seed": (_int, "an integer"),
    "model.input_size": _OPTIONAL_POSITIVE_INT,
    "data.image_size": _OPTIONAL_POSITIVE_INT,
    "data.global_batch_size": _POSITIVE_INT,
    "data.num_workers": _COUNT,
    "data.num_threads": _COUNT,
    "data.prefetch_buffer_size": _COUNT,
    "data.num_epochs": _OPTIONAL_POSITIVE_INT,
    "encode.batch_size": _POSITIVE_INT,
    "encode.shard_size": _POSITIVE_INT,
    "encode.max_examples": _OPTIONAL_POSITIVE_INT,
    "vae.chunk_size": _POSITIVE_INT,
    # lr = 0 holds the weights (a frozen run: EMA, data and logging only); tests use it
    "optim.lr": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (the releases: 1e-4)"),
    "optim.weight_decay": _NONNEG,
    "optim.b1": _ADAM_BETA,
    "optim.b2": _ADAM_BETA,
    "optim.eps": _NONNEG,
    "optim.grad_clip": (lambda v: v is None or (_finite(v) and v > 0), "None or a number > 0"),
    "optim.warmup_steps": _COUNT,
    "optim.decay_steps": _COUNT,
    "optim.ema_decay": _PROBABILITY,
    "objective.p_class_drop": _PROBABILITY,
    "objective.p_noise_drop": _PROBABILITY,
    "train.num_steps": _POSITIVE_INT,
    "train.log_every": _POSITIVE_INT,
    "train.checkpoint_every": _COUNT,
    "train.keep": _COUNT,
    "train.keep_every": (lambda v: v is None or (_int(v) and v >= 0), "None or an integer >= 0"),
    "train.sample_every": _COUNT,
    "train.eval_every": _COUNT,
    "train.preemption_sync_every": _POSITIVE_INT,
    "sample.num_steps": _POSITIVE_INT,
    "sample.num_images": _POSITIVE_INT,
    "sample.batch_size": _POSITIVE_INT,
    "sample.grid_images": _COUNT,
    "sample.grid_cols": _COUNT,
    "sample.last_step_size": _NONNEG,
    "sample.eta": _NONNEG,
    "sample.cfg_scale": _FINITE,
    "sample.nag_scale": _FINITE,
    "sample.cfg_interval": _INTERVAL,
    "sample.nag_interval": _INTERVAL,
    "eval.num_images": _POSITIVE_INT,
    "eval.batch_size": _POSITIVE_INT,
    "eval.feature_batch_size": _POSITIVE_INT,
    "eval.pr_k": _POSITIVE_INT,
    "eval.pr_block_size": _POSITIVE_INT,
    "eval.is_splits": _POSITIVE_INT,
    "eval.train_num_images": _POSITIVE_INT,
}

# optim / objective / train values are checked only in the modes that train (others ignore them).
TRAINING_MODES = ("train", "demo", "compile")  # compile: builds the train step
_TRAINING_SECTIONS = ("optim.", "objective.", "train.")

# The SD-VAE's spatial downsampling: a 256px image is a 32x32x4 latent.
VAE_FACTOR = 8


def _get(config, dotted: str):
    section, _, key = dotted.rpartition(".")
    return config[section][key] if section else config[key]


def value_errors(config) -> list[str]:
    """One line per impossible value (key, value, what is allowed): the numeric ranges of
    VALUE_CHECKS (optim / objective / train keys in TRAINING_MODES only), and for training the
    data / model shapes (pixels: data.image_size == model.input_size; latents: data.image_size
    == VAE_FACTOR * model.input_size; the patch size divides model.input_size; an image source
    feeds a 3-channel model, latents a latent one)."""
    lines = []
    trains = config.mode in TRAINING_MODES
    for dotted, (ok, allowed) in VALUE_CHECKS.items():
        if dotted.startswith(_TRAINING_SECTIONS) and not trains:
            continue
        value = _get(config, dotted)
        if not ok(value):
            lines.append(f"config.{dotted}={value!r} is not allowed: expected {allowed}.")
    m = config.model
    patch = m.patch_size
    if patch is None and re.fullmatch(r"[A-Za-z]+-[A-Za-z]+/\d+", str(m.name)):
        patch = int(str(m.name).rsplit("/", 1)[1])
    if _int(m.input_size) and _int(patch) and patch > 0 and m.input_size % patch:
        lines.append(
            f"config.model.input_size={m.input_size!r} is not allowed: {m.name} cuts it into "
            f"{patch}x{patch} patches, so it must be a multiple of {patch}."
        )
    size, ch = config.data.image_size, m.in_channels
    if config.mode == "train" and _int(size) and _int(m.input_size) and _int(ch):
        latents = config.data.name == "latents"
        nc = config.data.channels if config.data.name == "idx" else 3  # image channels
        if latents and ch == 3:
            lines.append(
                "config.model.in_channels=3 is not allowed with config.data.name='latents': "
                "latents have 4 channels (set model.in_channels=4, or train on an image source)."
            )
        elif not latents and ch != nc:
            lines.append(
                f"config.model.in_channels={ch!r} is not allowed with the image source "
                f"config.data.name={config.data.name!r}: images have {nc} channels (set "
                f"model.in_channels={nc}, or encode the images first and train on "
                "data.name='latents')."
            )
        want = VAE_FACTOR * m.input_size if latents else m.input_size
        if size != want:
            how = (
                f"the SD-VAE latents of {want}px images are {m.input_size}x{m.input_size}"
                if latents
                else f"the model sees {m.input_size}x{m.input_size} pixels"
            )
            lines.append(
                f"config.data.image_size={size!r} is not allowed with config.model.input_size="
                f"{m.input_size!r}: expected {want} ({how}); change one of the two."
            )
    return lines


def validate(config) -> None:
    """Raises ConfigError (a ValueError) if a schema key is missing or an enumerated value is
    not allowed.

    Checked: every key of ``base_config()`` is present; every ``CHOICES`` key holds one of its
    values (every sampler key, whether or not the job samples); ``sample.sampler`` is one of the
    model family's (nag_jax.diffusion.family); ``optim.trainable`` is "all", "null_token" or a
    valid regex; no impossible value (``value_errors``: one line each, all reported at once).
    """
    missing = _missing(base_config(), config)
    if missing:
        raise ConfigError(
            f"config lacks the schema keys {missing[:8]}{' ...' if len(missing) > 8 else ''}: "
            "build job configs from nag_jax.config.schema.base_config() and change values only."
        )
    for dotted, allowed in choices().items():
        value = _get(config, dotted)
        if value not in allowed:
            import difflib

            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"config.{dotted}={value!r} is not allowed; expected one of {allowed}{hint}."
            )
    from nag_jax.diffusion.family import family_for  # jax: only when a job validates

    try:
        family = family_for(config.model.name)
    except ValueError:  # not a registry name (the lab's MLP denoiser): built by its own job
        family = None
    if family is not None and config.sample.sampler not in family.samplers:
        raise ConfigError(
            f"config.sample.sampler={config.sample.sampler!r} does not apply to "
            f"{config.model.name}; {family.name} models sample with one of {family.samplers}."
        )
    trainable = config.optim.trainable
    if trainable not in ("all", "null_token"):
        try:
            re.compile(trainable)
        except (re.error, TypeError) as e:
            raise ConfigError(
                f"config.optim.trainable={trainable!r} is neither 'all', 'null_token' nor a "
                f"valid regex ({e})."
            ) from e
    errors = value_errors(config)
    if errors:  # every impossible value at once, on one line
        raise ConfigError(" ".join(errors))
