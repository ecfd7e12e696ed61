"""Guidance, one module per kind.

- `combine`: CFG + NAG (+ DoG's term) as ONE batched forward, per-step noise-level intervals.
- `two_model`: Domain Guidance's second set of weights (`TwoModelNet`, the ``DOMAIN`` branch).
- `classifier`: classifier-based NAG (the noise-level estimator's gradient; import it directly).

The public API is re-exported here: ``from nag_jax import guidance; guidance.guided_prediction``.
"""

from nag_jax.guidance.combine import (
    CLASS_UNCOND,
    COND,
    NOISE_UNCOND,
    GuidanceConfig,
    NetFn,
    branch_inputs,
    combine,
    guided_prediction,
)
from nag_jax.guidance.two_model import DOMAIN, TwoModelNet
