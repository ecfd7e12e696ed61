"""Noise-shift diagnosis (the paper's Fig. 4) of the demo model on the built-in shapes.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo     # the NAG fine-tune
    python -m nag_jax.main --config=configs/noise_shift_demo.py --workdir=runs/noise_shift_demo \
        --config.model.weights=runs/demo/checkpoints

mode=noise_shift (nag_jax.jobs.noise_shift): trains the conv noise-level estimator g(lambda |
x) on the shapes data (the study's estimator settings), samples the demo's rows with its sampler
(SDE, 40 steps) and classifier-based NAG with that estimator, and writes results.json, report.md,
noise_shift_kde.png and noise_shift_delta.png (committed: benchmarks/results/noise_shift/).
The CFG / NAG scales and the NAG interval are the demo's (chosen on validation seeds by
configs/demo_study.py).

Time convention: SiT, t = 0 noise, t = 1 data; reported levels are noise levels (1 = noise).
"""

from nag_jax.config.schema import noise_shift_section, sibling_config


def get_config():
    c = sibling_config(__file__, "demo")
    c.mode = "noise_shift"
    c.model.weights = "runs/demo/checkpoints"  # the demo's fine-tuned model (see above)
    c.data.global_batch_size = 64  # the estimator's training batch
    c.noise_shift = noise_shift_section()
    c.noise_shift.rows = (
        dict(name="none"),
        dict(name="CFG", cfg_scale=1.25),
        dict(name="NAG", nag_scale=1.0, nag_interval=(0.0, 0.5)),
        dict(name="CFG+NAG", cfg_scale=1.125, nag_scale=1.0, nag_interval=(0.0, 0.5)),
        dict(name="cls-NAG", nag_mode="classifier", nag_scale=1.0, nag_interval=(0.0, 0.6)),
    )
    c.noise_shift.update(num_images=256, batch_size=128, max_states=11, late=0.25, kde_states=6)
    c.noise_shift.estimator.update(
        num_bins=50, hidden=128, depth=2, conv_layers=2, num_steps=800, lr=1e-3, eval_images=512
    )
    return c
