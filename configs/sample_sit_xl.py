"""Sample a grid + .npz from a converted SiT-XL/2 checkpoint (mode "sample").

    python -m nag_jax.main --config=configs/sample_sit_xl.py --workdir=runs/sample_sit_xl \
        --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema

Prerequisites (local files, nothing is downloaded):
  python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
  the SD-VAE: a local stabilityai/sd-vae-ft-ema folder (or `python -m nag_jax.convert vae` output)

Overrides:
  classes:            --config.sample.labels='(207, 360, 387, 974, 88, 979, 417, 279)'
  guidance:           --config.sample.cfg_scale=1.5 --config.sample.nag_scale=1.0
                      (NAG needs a NAG-fine-tuned checkpoint with a null noise token)
  releases' 3-channel CFG:  --config.sample.cfg_channels=3
  ODE instead of SDE: --config.sample.sampler=ode --config.sample.method=heun --config.sample.num_steps=50
  count / batch:      --config.sample.num_images=64 --config.sample.batch_size=32

Output: <workdir>/samples/grid.png, samples.npz (arr_0 uint8 NHWC, arr_1 labels), info.json.
The architecture (input size, classes, widths) comes from the checkpoint's metadata.
Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals in noise level (1 = noise).
"""

from nag_jax.config.release import release_config


def get_config(arg: str = ""):
    c = release_config(f"SiT-{arg or 'XL/2'}")
    c.mode = "sample"
    c.model.dtype = "float32"
    c.parallel.fsdp = False
    # SiT's FID sampler (sample.py defaults to the ODE): Euler-Maruyama, 250 steps,
    # "sigma" diffusion, Mean last step. CFG 4.0 = sample.py's default.
    c.sample.sampler = "sde"
    c.sample.num_steps = 250
    c.sample.cfg_scale = 4.0
    c.sample.nag_scale = 0.0
    c.sample.labels = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's classes
    c.sample.num_images = 8
    c.sample.batch_size = 8
    # config.model.weights: a `python -m nag_jax.convert to-orbax` output; config.vae.path: the
    # SD-VAE folder or its converted Orbax dir (the schema's defaults: nag_jax.config.schema).
    return c
