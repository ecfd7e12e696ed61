"""SiT-XL/2 on 256px ImageNet latents with NAG's noise-condition dropout (release recipe).

    python -m nag_jax.main --config=configs/sit_xl.py --workdir=runs/sit_xl \
        --config.data.data_dir=data/imagenet256_latents

First, once, encode ImageNet (tfds imagenet2012 prepared in DATA) with the SD-VAE:

    python -m nag_jax.main --config=configs/sit_xl.py:encode --workdir=runs/encode_in256 \
        --config.encode.image_data_dir=DATA --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.encode.out_dir=data/imagenet256_latents

Variants (``:VARIANT``): a model size/patch such as ``B/2`` or ``L/2`` (default ``XL/2``), or
``encode``. Release settings: AdamW lr 1e-4, weight decay 0, global batch 256, EMA 0.9999 per
step, class dropout 0.1, noise-condition dropout 0.1, bf16 compute (float32 params), FSDP over all
devices. 1400 epochs (~7M steps) reproduce the published model; see sit_xl_nag_finetune.py to
add NAG to the released checkpoint in ~10 epochs instead. Multi-host: launch/tpu_pod.sh,
launch/slurm_gpu.sh.

Fits (the TPU compiler, docs/benchmarks.md): XL/2 per-chip batches that compile within the HBM:
v5e 32 (64 with model.remat=True), v4 128, v5p 256; with remat 64 / 128 / 256 use 6.1 / 8.0 /
12.3 GB. Check a topology first: --config.mode=compile --config.compile.topology=v5e:4x4.

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals are noise levels (1 = noise).
"""

from nag_jax.config.release import encode_variant, release_config


def get_config(arg: str = ""):
    size = arg if arg and arg != "encode" else "XL/2"
    c = release_config(f"SiT-{size}")
    return encode_variant(c) if arg == "encode" else c
