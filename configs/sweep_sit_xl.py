"""Guidance sweep for SiT-XL/2 (256px) with NAG: FID-vs-scale curves and the best point, one
compiled sampler for the whole grid (mode "sweep", nag_jax/jobs/sweep.py). Pod-ready:

    python -m nag_jax.main --config=configs/sweep_sit_xl.py --workdir=runs/sweep_sit_xl \
        --config.model.weights=ckpt/sit_xl2_256_nag --config.vae.path=ckpt/sd-vae-ft-ema \
        --config.eval.inception_path=fid_inception.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz

Grid: s_cfg in {1, 1.25, 1.5, 1.75} x w_nag in {0, 0.5, 1, 1.5, 2} x NAG interval in {[0, 1],
[0, 0.5]} (noise levels): 36 points, FID on 10k images of validation seed 100 each (the sampling
is sharded over every device like mode "eval"; the same command resumes point by point after a
stop). The lowest FID is then reported on 10k images of the held-out seed 0 beside the unguided
point. For the paper's 50k protocol rerun the chosen point with configs/eval_sit_xl.py. Outputs
under <workdir>/sweep/: points/*.json, results.json, table.md, curves.png.

Prerequisites: those of configs/eval_sit_xl.py (converted NAG checkpoint, FID Inception, ADM
reference batch). Time convention: SiT, t = 0 noise, t = 1 data; intervals are noise levels.
"""

from nag_jax.config.schema import sibling_config


def get_config():
    c = sibling_config(__file__, "eval_sit_xl")
    c.mode = "sweep"
    c.sweep.update(
        cfg_scales=(1.0, 1.25, 1.5, 1.75),
        nag_scales=(0.0, 0.5, 1.0, 1.5, 2.0),
        nag_intervals=((0.0, 1.0), (0.0, 0.5)),
        val_seeds=(100,),
        report_seeds=(0,),
        num_images=10_000,
        metric="fid",
    )
    return c
