"""The release training recipe as a full config (every schema field), shared by configs/*.py.

DiT / SiT releases: AdamW lr 1e-4, weight decay 0, global batch 256, EMA 0.9999 every step,
class dropout 0.1, 256px ImageNet through the SD-VAE (32x32x4 latents, scaled by 0.18215).
NAG adds noise-condition dropout p_noise_drop = 0.1 and the learned null noise token.

Time conventions (set by the family): SiT float t in [0, 1], t = 0 noise, t = 1 data; DiT integer
step 0..999, 0 = least noise. Guidance intervals are noise levels (1 = pure noise).

Data is read as precomputed latents (``data.name = "latents"``). The ``encode`` block and the
``:encode`` variant of each config turn the image source into those latents first:
``--config=configs/X.py:encode`` -> mode "encode_latents" with ``encode.image_source`` as data.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

IMAGENET_TRAIN_IMAGES = 1_281_167


def steps_for_epochs(epochs: float, batch: int = 256, images: int = IMAGENET_TRAIN_IMAGES) -> int:
    """Optimizer steps for ``epochs`` passes over ``images`` at global ``batch`` (rounded)."""
    return int(round(epochs * images / batch))


def release_config(model_name: str = "SiT-XL/2") -> ml_collections.ConfigDict:
    """Release settings for ``model_name`` ("SiT-XL/2", "DiT-B/4", ...), 256px ImageNet latents."""
    family = model_name.split("-")[0]
    if family not in ("SiT", "DiT"):
        raise ValueError(f"Model name {model_name!r} must start with 'SiT-' or 'DiT-'.")
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(
            name=model_name,
            input_size=32,  # 256px / VAE factor 8
            in_channels=4,
            num_classes=1000,
            learn_sigma=True,
            null_noise="learned",
            dtype="bfloat16",  # compute dtype; params and optimizer state stay float32
            hidden_size=placeholder(int),
            depth=placeholder(int),
            num_heads=placeholder(int),
            patch_size=placeholder(int),
            attention_impl=placeholder(str),
            remat=False,
        )
    )
    if family == "SiT":
        c.process = ml_collections.ConfigDict(
            dict(
                path="linear",
                prediction="velocity",
                train_eps=placeholder(float),
                sample_eps=placeholder(float),
            )
        )
    else:
        c.process = ml_collections.ConfigDict(dict(num_timesteps=1000, beta_schedule="linear"))
    c.objective = ml_collections.ConfigDict(dict(p_class_drop=0.1, p_noise_drop=0.1))
    c.data = ml_collections.ConfigDict(
        dict(
            name="latents",
            data_dir=placeholder(str),  # the encode step's out_dir
            image_size=256,
            num_classes=1000,
            global_batch_size=256,
            num_workers=4,
            num_threads=8,
            random_flip=True,
            shuffle=True,
        )
    )
    # Image source + VAE for the ':encode' variant (mode encode_latents).
    c.encode = ml_collections.ConfigDict(
        dict(
            image_source="imagenet2012",
            image_data_dir=placeholder(str),
            vae_path=placeholder(str),
            out_dir=placeholder(str),
            batch_size=64,
            dtype="float16",
            store_flips=True,
            sample=True,
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=placeholder(float),
            warmup_steps=0,
            ema_decay=0.9999,
            trainable="all",
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=steps_for_epochs(1400),  # the published XL models: ~7M steps
            log_every=100,
            checkpoint_every=10_000,
            keep=3,
            keep_every=placeholder(int),
            sample_every=10_000,
            eval_every=0,
            init_from=placeholder(str),
            null_token_init="mean_t_embedding",
            preemption_sync_every=10,
            async_checkpoint=True,
            tensorboard=True,
        )
    )
    sampler = (
        dict(sampler="sde", num_steps=250)
        if family == "SiT"
        else dict(sampler="ddpm", num_steps=250)
    )
    c.sample = ml_collections.ConfigDict(
        dict(
            **sampler,
            method="euler",
            diffusion_form="sigma",
            last_step="Mean",
            last_step_size=0.04,
            cfg_scale=1.0,
            nag_scale=0.0,
            cfg_interval=(0.0, 1.0),
            nag_interval=(0.0, 1.0),
            cfg_channels=placeholder(int),
            num_images=16,
            batch_size=16,
            labels=placeholder(tuple),
            return_trajectory=False,
        )
    )
    c.parallel = ml_collections.ConfigDict(
        dict(fsdp=True, mesh=dict(data=-1, fsdp=-1, tensor=1), fsdp_min_size=2**16)
    )
    return c


def encode_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``:encode`` variant: mode encode_latents, reading ``encode.image_source`` images."""
    c.mode = "encode_latents"
    c.data.name = c.encode.get_ref("image_source")  # references: later overrides flow through
    c.data.data_dir = c.encode.get_ref("image_data_dir")
    return c
