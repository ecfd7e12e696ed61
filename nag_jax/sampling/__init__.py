"""Samplers over a prediction function: lax.scan ODE/SDE (scan), DDPM/DDIM, adaptive ODE.

The math is re-exported here (``sampling.sample_sde``); building a sampler from a config is
``nag_jax.sampling.build`` and image identity / batched generation ``nag_jax.sampling.generate``.
"""

from nag_jax.sampling.scan import (
    ADAPTIVE_SOLVERS,
    DIVERGENCES,
    LAST_STEPS,
    ODE_METHODS,
    SDE_METHODS,
    PredFn,
    ode_grid,
    ode_log_likelihood,
    sample_ddim,
    sample_ddpm,
    sample_ode,
    sample_ode_adaptive,
    sample_sde,
    sde_grid,
)

__all__ = [
    "PredFn",
    "ODE_METHODS",
    "SDE_METHODS",
    "LAST_STEPS",
    "ADAPTIVE_SOLVERS",
    "DIVERGENCES",
    "ode_grid",
    "sample_ode",
    "sde_grid",
    "sample_sde",
    "sample_ode_adaptive",
    "ode_log_likelihood",
    "sample_ddpm",
    "sample_ddim",
]
