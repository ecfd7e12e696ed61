"""Sample a grid + .npz from a converted DiT-XL/2 checkpoint (mode "sample").

    python -m nag_jax.main --config=configs/sample_dit_xl.py --workdir=runs/sample_dit_xl \
        --config.model.weights=ckpt/dit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema

Prerequisites (local files, nothing is downloaded):
  python -m nag_jax.convert to-orbax DiT-XL-2-256x256.pt ckpt/dit_xl2_256 --family DiT
  (512px: DiT-XL-2-512x512.pt; the input size 64 is read from the checkpoint)
  the SD-VAE: a local stabilityai/sd-vae-ft-ema folder (or `python -m nag_jax.convert vae` output)

Overrides:
  classes:            --config.sample.labels='(207, 360, 387, 974, 88, 979, 417, 279)'
  guidance:           --config.sample.cfg_scale=1.5 --config.sample.nag_scale=1.0
                      (NAG needs a NAG-fine-tuned checkpoint with a null noise token)
  releases' 3-channel CFG (FID 2.27 setting with cfg_scale=1.5):  --config.sample.cfg_channels=3
  DDIM:               --config.sample.sampler=ddim --config.sample.num_steps=50
  count / batch:      --config.sample.num_images=64 --config.sample.batch_size=32

Output: <workdir>/samples/grid.png, samples.npz (arr_0 uint8 NHWC, arr_1 labels), info.json.
Time convention: DiT, integer step 0..999 (0 = least noise), respaced to num_steps; guidance
intervals in noise level (1 = noise).
"""

from nag_jax.config.release import release_config


def get_config(arg: str = ""):
    c = release_config(f"DiT-{arg or 'XL/2'}")
    c.mode = "sample"
    c.model.dtype = "float32"
    c.parallel.fsdp = False
    # DiT's sample.py: DDPM ancestral over 250 respaced steps, CFG 4.0.
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 250
    c.sample.cfg_scale = 4.0
    c.sample.nag_scale = 0.0
    c.sample.labels = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's classes
    c.sample.num_images = 8
    c.sample.batch_size = 8
    # config.model.weights: a `python -m nag_jax.convert to-orbax` output; config.vae.path: the
    # SD-VAE folder or its converted Orbax dir (the schema's defaults: nag_jax.config.schema).
    return c
