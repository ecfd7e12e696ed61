"""Sample 50k images from a SiT-XL/2 (256px) checkpoint and score them (FID/sFID/IS/P/R).

    python -m nag_jax.main --config=configs/eval_sit_xl.py --workdir=runs/eval_sit_xl \
        --config.model.weights=ckpt/sit_xl2_256_nag --config.vae.path=sd-vae-ft-ema \
        --config.eval.inception_path=fid_inception.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz --config.sample.nag_scale=1.5

Variants:
  release baseline (no null-noise token in the checkpoint): --config.model.null_noise=zero
      --config.sample.nag_scale=0.0 [--config.sample.cfg_scale=1.5 --config.sample.cfg_channels=3]
  ODE sampler: --config.sample.sampler=ode --config.sample.method=heun --config.sample.num_steps=50
  quick check: --config.eval.num_images=5000

Prerequisites (local files; nothing is downloaded):
  * converted checkpoint: python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
  * FID Inception: python -m nag_jax.convert inception --src pt_inception-2015-12-05-6726825d.pth
        --dst fid_inception.npz   (pytorch-fid's GitHub release)
  * ADM reference batch VIRTUAL_imagenet256_labeled.npz (openai/guided-diffusion evaluations).
Output: <workdir>/eval/<key>/samples_50000.npz (ADM format, arr_0 uint8) and one row appended to
<workdir>/eval_results.jsonl + .csv. Interrupted runs resume from the written chunks.

Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals in noise level (1 = noise).
"""

from nag_jax.config.release import release_config
from nag_jax.evaluation.protocol import ADM_EVAL


def get_config():
    c = release_config("SiT-XL/2")  # the release's model and process, every schema key
    c.mode = "eval"
    c.data.update(name="imagenet2012", num_workers=0)  # eval.reference="dataset" reads it
    # SiT's FID setting: Euler-Maruyama SDE, 250 steps, "sigma" diffusion, Mean last step.
    c.sample.update(sampler="sde", num_steps=250, method="euler", diffusion_form="sigma")
    c.sample.update(last_step="Mean", last_step_size=0.04)
    c.sample.update(num_images=50_000, batch_size=256)
    c.parallel.update(fsdp=False)
    c.parallel.mesh.fsdp = 1
    c.eval.update(ADM_EVAL)
    # config.model.weights, config.vae.path, config.eval.inception_path and
    # config.eval.reference are set on the command line (nag_jax.config.schema documents them).
    return c
