"""Noising processes and training objectives.

- `paths`: SiT's paths, one class each (Linear / GVP / VP: coefficients, drift, diffusion).
- `transport`: SiT interpolants over a path (t = 0 noise, t = 1 data; noise level = 1 - t).
- `gaussian`: DiT DDPM (integer step, 0 = least noise; noise level = (step + 1) / 1000).
- `objective`: the NAG training loss (class + noise-condition dropout) for both families.
"""

from nag_jax.diffusion.gaussian import GaussianDiffusion, create_diffusion, space_timesteps
from nag_jax.diffusion.objective import nag_loss
from nag_jax.diffusion.transport import Transport, create_transport

__all__ = [
    "GaussianDiffusion",
    "Transport",
    "create_diffusion",
    "create_transport",
    "nag_loss",
    "space_timesteps",
]
