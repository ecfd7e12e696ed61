"""Noise-shift diagnosis (the paper's Fig. 4) of SiT-XL/2 on 256px ImageNet latents.

    python -m nag_jax.main --config=configs/noise_shift_sit_xl.py --workdir=runs/noise_shift_sit_xl \
        --config.model.weights=ckpt/sit_xl2_256_nag --config.data.data_dir=data/imagenet256_latents

Prerequisites: a converted (and NAG fine-tuned, configs/sit_xl_nag_finetune.py) checkpoint and
the latent shards of configs/sit_xl.py:encode. A release checkpoint without the null noise
token: --config.model.null_noise=zero and drop the NAG rows (--config.noise_shift.rows=...).
The estimator (a conv net over the 32x32x4 latents, 100 bins) trains data-parallel on all
devices and is saved to <workdir>/estimator; reuse it with
--config.noise_shift.estimator.weights=DIR, and for classifier-based NAG in sample / eval with
--config.sample.nag_mode=classifier --config.sample.estimator=DIR.
Sampler: SiT's FID setting (Euler-Maruyama SDE, 250 steps); the adaptive ODE:
--config.sample.sampler=ode_adaptive.

Time convention: SiT, t = 0 noise, t = 1 data; reported levels are noise levels (1 = noise).
"""

from nag_jax.config.release import release_config
from nag_jax.config.schema import noise_shift_section


def imagenet_config(model: str, cls_nag_interval: tuple[float, float]):
    """The noise-shift config of an XL/2 release model on ImageNet latents (this file's and
    configs/noise_shift_dit_xl.py's): rows, image counts and the estimator; the caller sets the
    sampler. ``cls_nag_interval``: the classifier-NAG row's noise-level interval."""
    c = release_config(model)  # the release's model, process and latents data
    c.mode = "noise_shift"
    c.data.update(global_batch_size=256, num_workers=4)
    c.parallel.update(fsdp=False)
    c.parallel.mesh.fsdp = 1
    c.noise_shift = noise_shift_section()
    c.noise_shift.rows = (
        dict(name="none"),
        dict(name="CFG", cfg_scale=1.5),
        dict(name="NAG", nag_scale=1.0),
        dict(name="CFG+NAG", cfg_scale=1.5, nag_scale=1.0),
        dict(name="cls-NAG", nag_mode="classifier", nag_scale=1.0, nag_interval=cls_nag_interval),
    )
    c.noise_shift.update(num_images=2048, batch_size=256, max_states=26, kde_states=6)
    c.noise_shift.estimator.update(
        num_bins=100, hidden=512, depth=4, conv_layers=3, num_steps=20_000, lr=3e-4
    )
    return c


def get_config():
    # SiT's velocity is classifier-guided through x (1 - t) / t: the interval ends below noise 1.
    c = imagenet_config("SiT-XL/2", (0.0, 0.6))
    c.sample.update(sampler="sde", num_steps=250, method="euler", diffusion_form="sigma")
    c.sample.update(last_step="Mean", last_step_size=0.04)
    return c
