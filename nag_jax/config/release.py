"""The release training recipe on top of the one schema (nag_jax.config.schema), for configs/*.py.

DiT / SiT releases: AdamW lr 1e-4, weight decay 0, global batch 256, EMA 0.9999 every step,
class dropout 0.1, 256px ImageNet through the SD-VAE (32x32x4 latents, scaled by 0.18215), bf16
compute. NAG adds noise-condition dropout p_noise_drop = 0.1 and the learned null noise token.
`release_config` is `schema.base_config` (whose model / optimizer / schedule defaults are
this recipe) plus bf16 compute, the ImageNet latents and the family's release sampler
(nag_jax.diffusion.family).

Time conventions (set by the family): SiT float t in [0, 1], t = 0 noise, t = 1 data; DiT integer
step 0..999, 0 = least noise. Guidance intervals are noise levels (1 = pure noise).

Data is read as precomputed latents (``data.name = "latents"``). The ``encode`` block and the
``:encode`` variant of each config turn the image source into those latents first:
``--config=configs/X.py:encode`` -> mode "encode_latents" with ``encode.image_source`` as data.
"""

from __future__ import annotations

import ml_collections

from nag_jax.config.schema import base_config
from nag_jax.diffusion.family import family_for


def release_config(model_name: str = "SiT-XL/2") -> ml_collections.ConfigDict:
    """Release settings for ``model_name`` ("SiT-XL/2", "DiT-B/4", ...), 256px ImageNet latents."""
    family = family_for(model_name)
    c = base_config()
    c.model.name = model_name
    c.model.dtype = "bfloat16"  # compute; params and optimizer state stay float32
    c.data.update(
        name="latents",  # the encode step's output (data_dir)
        image_size=256,
        num_classes=1000,
        global_batch_size=256,
        num_workers=4,
        num_threads=8,
    )
    c.sample.sampler = family.default_sampler  # SiT: Euler-Maruyama SDE; DiT: ancestral DDPM
    return c


def encode_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``:encode`` variant: mode encode_latents, reading ``encode.image_source`` images."""
    c.mode = "encode_latents"
    c.data.name = c.encode.get_ref("image_source")  # references: later overrides flow through
    c.data.data_dir = c.encode.get_ref("image_data_dir")
    return c
