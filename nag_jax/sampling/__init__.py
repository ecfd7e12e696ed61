"""Samplers over a prediction function, one module per kind; they know nothing of models.

- `scan`: SiT's fixed-step probability-flow ODE (Euler / Heun) and reverse SDE (Euler-Maruyama /
  Heun) as ``lax.scan`` loops; float t in [0, 1], 0 = noise.
- `ddpm`: DiT's DDPM ancestral sampler and DDIM over the respaced process; the network sees the
  original integer step (0 = least noise).
- `adaptive`: diffrax adaptive ODE (the SiT release's dopri5 default) and the ODE log-likelihood.

The math is re-exported here (``sampling.sample_sde``); building a sampler from a config is
``nag_jax.sampling.build`` and image identity / batched generation ``nag_jax.sampling.generate``.
"""

from nag_jax.sampling.adaptive import (
    ADAPTIVE_SOLVERS,
    DIVERGENCES,
    ode_log_likelihood,
    sample_ode_adaptive,
)
from nag_jax.sampling.ddpm import sample_ddim, sample_ddpm
from nag_jax.sampling.scan import (
    LAST_STEPS,
    ODE_METHODS,
    SDE_METHODS,
    PredFn,
    ode_grid,
    sample_ode,
    sample_sde,
    sde_grid,
)
