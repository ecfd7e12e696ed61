"""The noise-shift lab: train, sample under each guidance setting, measure shift and quality.

``python -m nag_jax.main --config=configs/lab_gmm.py --workdir=DIR`` (``config.mode = "lab"``)
calls ``run(config, workdir)``, which writes ``DIR/report.md``, ``DIR/results.json`` and PNG
figures. ``config.lab.kind`` selects the data:

    "gmm"     exact analysis on a Gaussian mixture   (``nag_jax.analysis.lab.gmm_lab``)
    "shapes"  built-in images, a learned estimator   (``nag_jax.analysis.lab.shapes_lab``)

Modules: ``common`` (process through ``nag_jax.sampling.build``, training with the project's
``nag_loss``, guided sampling of one row with trajectories, formatting), ``gmm_lab``,
``shapes_lab``, ``report`` (figures, report.md, results.json). Progress is logged with absl logging.

Time conventions: models and samplers use the SiT convention (float t in [0, 1], t = 0 noise,
t = 1 data); every reported level is the paper's noise level lambda = 1 - t (1 = pure noise).
"""

from __future__ import annotations

KINDS = ("gmm", "shapes")


def run(config, workdir: str) -> dict:
    """Entry point for ``mode = "lab"``: runs the lab ``config.lab.kind``; returns its results."""
    kind = config.lab.kind
    if kind == "gmm":
        from nag_jax.analysis.lab import gmm_lab

        return gmm_lab.run(config, workdir)
    if kind == "shapes":
        from nag_jax.analysis.lab import shapes_lab

        return shapes_lab.run(config, workdir)
    raise ValueError(f"config.lab.kind={kind!r}; expected one of {KINDS}")
