"""DiT-XL/2 on 256px ImageNet latents with NAG's noise-condition dropout (release recipe).

    python -m nag_jax.main --config=configs/dit_xl.py --workdir=runs/dit_xl \
        --config.data.data_dir=data/imagenet256_latents

First, once, encode ImageNet (tfds imagenet2012 prepared in DATA) with the SD-VAE:

    python -m nag_jax.main --config=configs/dit_xl.py:encode --workdir=runs/encode_in256 \
        --config.encode.image_data_dir=DATA --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.encode.out_dir=data/imagenet256_latents

Variants (``:VARIANT``): a model size/patch such as ``B/2`` (default ``XL/2``), or ``encode``.
Release settings: DDPM 1000 linear-beta steps, epsilon + learned-range variance (learn_sigma),
AdamW lr 1e-4, weight decay 0, global batch 256, EMA 0.9999 per step, class dropout 0.1,
noise-condition dropout 0.1, bf16 compute (float32 params), FSDP over all devices.
See dit_xl_nag_finetune.py to add NAG to the released checkpoint in ~10 epochs.

Time convention: DiT, integer step 0..999 (0 = least noise); noise level = (step + 1) / 1000.
"""

from nag_jax.config.release import encode_variant, release_config


def get_config(arg: str = ""):
    size = arg if arg and arg != "encode" else "XL/2"
    c = release_config(f"DiT-{size}")
    return encode_variant(c) if arg == "encode" else c
