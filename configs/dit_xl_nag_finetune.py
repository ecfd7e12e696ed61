"""NAG fine-tuning of the released DiT-XL/2 (256px): ~10 epochs with noise-condition dropout.

    python -m nag_jax.main --config=configs/dit_xl_nag_finetune.py --workdir=runs/dit_xl_nag \
        --config.model.weights=ckpt/dit_xl2_256 --config.data.data_dir=data/imagenet256_latents

ckpt/dit_xl2_256 is the release converted to Orbax (params only, no null noise token):
    python -m nag_jax.convert to-orbax DiT-XL-2-256x256.pt ckpt/dit_xl2_256 --family DiT
Latents: see configs/dit_xl.py (``:encode``).

The null noise token starts at the mean timestep embedding over steps 0..999
(``train.null_token_init``: "mean_t_embedding" | "zeros" | "random"). ~10 epochs at batch 256
(~50k steps), p_noise_drop 0.1, release optimizer (AdamW 1e-4, wd 0, EMA 0.9999).
Variants (``:VARIANT``): ``all`` (default) or ``null_token`` (only the new token trains).
Sample afterwards with configs/eval_dit_xl.py and --config.sample.nag_scale.

Time convention: DiT, integer step 0..999 (0 = least noise); noise level = (step + 1) / 1000.
"""

from nag_jax.config.release import release_config
from nag_jax.config.schema import steps_for_epochs


def get_config(arg: str = "all"):
    c = release_config("DiT-XL/2")
    c.objective.p_noise_drop = 0.1
    c.optim.trainable = arg or "all"
    c.train.num_steps = steps_for_epochs(10)  # 50_046 steps at batch 256
    c.train.checkpoint_every = 5_000
    c.train.keep_every = 10_000
    c.train.sample_every = 5_000
    c.train.null_token_init = "mean_t_embedding"
    return c
