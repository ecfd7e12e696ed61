"""NAG fine-tuning of the released SiT-XL/2 (256px): ~10 epochs with noise-condition dropout.

    python -m nag_jax.main --config=configs/sit_xl_nag_finetune.py --workdir=runs/sit_xl_nag \
        --config.model.weights=ckpt/sit_xl2_256 --config.data.data_dir=data/imagenet256_latents

ckpt/sit_xl2_256 is the release converted to Orbax (params only, no null noise token):
    python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
Latents: see configs/sit_xl.py (``:encode``).

The null noise token (absent from the release) starts at the mean timestep embedding over the
training time distribution (``train.null_token_init``: "mean_t_embedding" | "zeros" | "random").
The paper fine-tunes ~10 epochs at batch 256 (1.28M images -> ~50k steps), p_noise_drop 0.1,
release optimizer (AdamW 1e-4, wd 0, EMA 0.9999; the EMA starts at the release's EMA weights).
Variants (``:VARIANT``): ``all`` (default: every weight trains with both dropouts) or
``null_token`` (only the new token trains; the release's weights stay frozen, a cheap probe).
Sample afterwards with configs/eval_sit_xl.py and --config.sample.nag_scale.

Fits (the TPU compiler, docs/benchmarks.md): on a v4-16 (v4:2x2x2, 32 images a chip) the train
step peaks at 17.6 of 34.4 GB a chip. XL/2 per-chip batches that compile within the HBM: v5e 32
(64 with model.remat=True), v4 128, v5p 256; with remat 64 / 128 / 256 use 6.1 / 8.0 / 12.3 GB.
Check a topology before renting it: --config.mode=compile --config.compile.topology=v4:2x2x2.

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals are noise levels (1 = noise).
"""

from nag_jax.config.release import release_config
from nag_jax.config.schema import steps_for_epochs


def get_config(arg: str = "all"):
    c = release_config("SiT-XL/2")
    c.objective.p_noise_drop = 0.1
    c.optim.trainable = arg or "all"
    c.train.num_steps = steps_for_epochs(10)  # 50_046 steps at batch 256
    c.train.checkpoint_every = 5_000
    c.train.keep_every = 10_000
    c.train.sample_every = 5_000
    c.train.null_token_init = "mean_t_embedding"
    return c
