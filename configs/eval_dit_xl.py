"""Sample 50k images from a DiT-XL/2 (256px) checkpoint and score them (FID/sFID/IS/P/R).

    python -m nag_jax.main --config=configs/eval_dit_xl.py --workdir=runs/eval_dit_xl \
        --config.model.weights=ckpt/dit_xl2_256_nag --config.vae.path=sd-vae-ft-ema \
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

from nag_jax.config.release import release_config
from nag_jax.evaluation.protocol import ADM_EVAL


def get_config():
    c = release_config("DiT-XL/2")  # the release's model and process, every schema key
    c.mode = "eval"
    c.data.update(name="imagenet2012", num_workers=0)  # eval.reference="dataset" reads it
    # DiT's FID setting: ancestral DDPM respaced to 250 steps.
    c.sample.update(sampler="ddpm", num_steps=250)
    c.sample.update(num_images=50_000, batch_size=256)
    c.parallel.update(fsdp=False)
    c.parallel.mesh.fsdp = 1
    c.eval.update(ADM_EVAL)
    # config.model.weights, config.vae.path, config.eval.inception_path and
    # config.eval.reference are set on the command line (nag_jax.config.schema documents them).
    return c
