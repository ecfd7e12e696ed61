"""Guidance sweep on the demo model (mode "sweep", nag_jax/jobs/sweep.py): choose (s_cfg, w_nag) and
the NAG interval on validation seeds, report the choice on held-out seeds.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo   # the fine-tuned model
    python -m nag_jax.main --config=configs/sweep_demo.py --workdir=runs/sweep_demo

Grid: s_cfg in {1, 1.25, 1.5} x w_nag in {0, 0.5, 1} x NAG interval in {[0, 0.5], [0, 1]}
(noise levels; an interval of an off term is one point): 15 points, every one run by the same
compiled sampler. Metric: the proxy classifier's Fréchet distance (proxy FD, not FID) against
1024 real shapes, on 128 images of each validation seed (100, 101: the demo study's); the lowest
mean is reported on seeds 0-2 (the demo's report seeds) beside the unguided point. Image i of a
seed is nag_jax.sampling.generate's with label i % 16 (the class table cycled, as in the demo), so
every point scores the same images with the same class balance (paired). Outputs under
<workdir>/sweep/: points/*.json (one per point, resumable), results.json, table.md, curves.png.

Time convention: SiT, t = 0 noise, t = 1 data; intervals are noise levels (1 = noise).
"""

import os

from nag_jax.config.schema import sibling_config


def get_config():
    c = sibling_config(__file__, "demo")
    c.mode = "sweep"
    c.model.weights = os.path.join("runs", "demo", "checkpoints")  # the demo's NAG fine-tune
    # Labels 0..15 cycled over each seed's images (as the demo's rows): random labels alone gave a
    # real-vs-real proxy FD of 11 +- 7 at 256 images (class imbalance), in every absolute value.
    c.sample.labels = tuple(range(c.model.num_classes))
    c.eval.update(
        extractor="proxy",
        reference="dataset",  # real shapes of config.data
        reference_num_images=1024,
        batch_size=128,
        feature_batch_size=256,
        pr_block_size=2048,
    )
    c.sweep.update(
        cfg_scales=(1.0, 1.25, 1.5),
        nag_scales=(0.0, 0.5, 1.0),
        nag_intervals=((0.0, 0.5), (0.0, 1.0)),
        val_seeds=(100, 101),
        report_seeds=(0, 1, 2),
        num_images=128,
        metric="fid",  # the proxy's Fréchet distance (named proxy_fd in the outputs)
    )
    return c
