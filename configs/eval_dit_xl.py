"""Sample 50k images from a DiT-XL/2 (256px) checkpoint and score them (FID/sFID/IS/P/R).

    python -m nag_jax.main --config=configs/eval_dit_xl.py --workdir=runs/eval_dit_xl \
        --config.eval.checkpoint=ckpt/dit_xl2_256_nag --config.eval.vae=sd-vae-ft-ema \
        --config.eval.inception_path=fid_inception.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz --config.sample.nag_scale=1.5

Variants:
  release baseline (no null-noise token in the checkpoint): --config.model.null_noise=zero
      --config.sample.nag_scale=0.0 [--config.sample.cfg_scale=1.5 --config.sample.cfg_channels=3
      reproduces the published FID 2.27 setting]
  DDIM: --config.sample.sampler=ddim --config.sample.num_steps=50
  quick check: --config.eval.num_images=5000

Prerequisites (local files; nothing is downloaded):
  * converted checkpoint: python -m nag_jax.convert to-orbax DiT-XL-2-256x256.pt ckpt/dit_xl2_256 --family DiT
  * FID Inception: python -m nag_jax.convert inception --src pt_inception-2015-12-05-6726825d.pth
        --dst fid_inception.npz   (pytorch-fid's GitHub release)
  * ADM reference batch VIRTUAL_imagenet256_labeled.npz (openai/guided-diffusion evaluations).
Output: <workdir>/eval/<key>/samples_50000.npz (ADM format, arr_0 uint8) and one row appended to
<workdir>/eval_results.jsonl + .csv. Interrupted runs resume from the written chunks.

Time convention: DiT, integer step 0..999 (0 = least noise); guidance intervals in noise level (1 = noise).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from nag_jax.evaluation.protocol import adm_eval_config

# Optional fields are typed placeholders (value None) so that --config.x.y=... can set them.


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        dict(
            name="DiT-XL/2",
            input_size=32,
            in_channels=4,
            num_classes=1000,
            learn_sigma=True,
            null_noise="learned",
            dtype="bfloat16",
            hidden_size=placeholder(int),
            depth=placeholder(int),
            num_heads=placeholder(int),
        )
    )
    config.process = ml_collections.ConfigDict(dict(num_timesteps=1000, beta_schedule="linear"))
    config.objective = ml_collections.ConfigDict(dict(p_class_drop=0.1, p_noise_drop=0.1))
    config.data = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",
            data_dir=placeholder(str),
            image_size=256,
            global_batch_size=256,
            num_workers=0,
        )
    )
    config.optim = ml_collections.ConfigDict(
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
    config.train = ml_collections.ConfigDict(
        dict(
            num_steps=0,
            log_every=100,
            checkpoint_every=0,
            keep=1,
            keep_every=0,
            sample_every=0,
            eval_every=0,
            init_from=placeholder(str),
        )
    )
    # DiT's FID setting: ancestral DDPM respaced to 250 steps.
    config.sample = ml_collections.ConfigDict(
        dict(
            sampler="ddpm",
            num_steps=250,
            method="euler",
            eta=0.0,
            cfg_scale=1.0,
            nag_scale=0.0,
            cfg_interval=(0.0, 1.0),
            nag_interval=(0.0, 1.0),
            cfg_channels=placeholder(int),
            num_images=50_000,
            batch_size=256,
            labels=placeholder(tuple),
            return_trajectory=False,
        )
    )
    config.parallel = ml_collections.ConfigDict(
        dict(fsdp=False, mesh=dict(data=-1, fsdp=1, tensor=1))
    )
    config.eval = adm_eval_config()
    return config
