"""Guidance: the CFG + NAG combination of one batched forward (combine), per-step intervals.

The public API is re-exported here: ``from nag_jax import guidance; guidance.guided_prediction``.
"""

from nag_jax.guidance.combine import (
    CLASS_UNCOND,
    COND,
    DOMAIN,
    NOISE_UNCOND,
    GuidanceConfig,
    NetFn,
    TwoModelNet,
    branch_inputs,
    combine,
    guided_prediction,
)

__all__ = [
    "CLASS_UNCOND",
    "COND",
    "NOISE_UNCOND",
    "DOMAIN",
    "NetFn",
    "GuidanceConfig",
    "branch_inputs",
    "combine",
    "TwoModelNet",
    "guided_prediction",
]
