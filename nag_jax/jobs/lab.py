"""``mode = "lab"``: the noise-shift lab report (``configs/lab_gmm.py``, ``configs/lab_shapes.py``).

The labs themselves are library code in ``nag_jax.analysis.lab``; this job runs the one named by
``config.lab.kind`` and writes ``WORKDIR/report.md``, ``results.json`` and the figures.
"""

from __future__ import annotations

from nag_jax.analysis import lab


def run(config, workdir: str) -> dict:
    """Runs the lab ``config.lab.kind`` in ``workdir``; returns its results."""
    return lab.run(config, workdir)
