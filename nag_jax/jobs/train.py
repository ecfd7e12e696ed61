"""``mode = "train"``: train or fine-tune (``python -m nag_jax.main --config=configs/sit_xl.py``).

The loop is ``nag_jax.training.loop``; this job gives it the periodic evaluators of
``config.eval`` (nag_jax.evaluation.evaluators), so training and evaluation never import each
other. Time convention: the model family's (nag_jax.diffusion.family).
"""

from __future__ import annotations

from nag_jax.evaluation import evaluators
from nag_jax.training import loop


def run(config, workdir: str):
    """Trains ``config`` in ``workdir`` (resuming from its last verified step); returns the final
    train state."""
    return loop.run(config, workdir, make_evaluators=evaluators.from_config(config, workdir))
