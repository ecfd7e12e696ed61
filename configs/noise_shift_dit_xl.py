"""Noise-shift diagnosis (the paper's Fig. 4) of DiT-XL/2 on 256px ImageNet latents.

    python -m nag_jax.main --config=configs/noise_shift_dit_xl.py --workdir=runs/noise_shift_dit_xl \
        --config.model.weights=ckpt/dit_xl2_256_nag --config.data.data_dir=data/imagenet256_latents

Prerequisites: a converted (and NAG fine-tuned, configs/dit_xl_nag_finetune.py) checkpoint and
the latent shards of configs/dit_xl.py:encode. A release checkpoint without the null noise
token: --config.model.null_noise=zero and drop the NAG rows (--config.noise_shift.rows=...).
The estimator (a conv net over the 32x32x4 latents, 100 bins) trains data-parallel on all
devices and is saved to <workdir>/estimator; reuse it with
--config.noise_shift.estimator.weights=DIR, and for classifier-based NAG in sample / eval with
--config.sample.nag_mode=classifier --config.sample.estimator=DIR.
Sampler: DiT's FID setting (ancestral DDPM respaced to 250 steps). The estimator is trained on
the DiT forward process at the original steps (levels (step + 1) / 1000); classifier-based NAG
maps its score gradient to the epsilon prediction (-sqrt(1 - abar) per unit of score).

Time convention: DiT, integer step 0..999, 0 = least noise; reported levels are noise levels
(step + 1) / 1000 (1 = noise).
"""

from nag_jax.config.schema import sibling_module


def get_config():
    c = sibling_module(__file__, "noise_shift_sit_xl").imagenet_config("DiT-XL/2", (0.0, 1.0))
    c.sample.update(sampler="ddpm", num_steps=250)
    return c
