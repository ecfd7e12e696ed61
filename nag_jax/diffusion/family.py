"""The model families, decided once: what the "SiT" / "DiT" prefix of a model name implies.

SiT and DiT share one backbone (nag_jax.models); the family fixes everything around it:

  family  process              time the network sees               noise level        samplers
  SiT     `Transport`          float t in [0, 1], 0 noise, 1 data  1 - t              ode, sde,
                                                                                        ode_adaptive
  DiT     `GaussianDiffusion`  integer step 0..999, 0 least noise  (step + 1) / 1000  ddpm, ddim

Guidance: SiT guides the first C output channels (the learned-sigma half is dropped, as in the
release); DiT guides the full 2C output but applies the guidance formula to the first C channels
(``guided_channels``). Builders, the objective, the release configs and NAG fine-tuning ask
`family_for` / `family_of_process` instead of re-deciding from the name or the process type.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from nag_jax.diffusion.gaussian import GaussianDiffusion, create_diffusion
from nag_jax.diffusion.transport import Transport
from nag_jax.models.registry import parse_model_name


@dataclasses.dataclass(frozen=True)
class Family:
    """One family's conventions (see the module table)."""

    name: str
    process_type: type
    time_convention: str
    samplers: tuple[str, ...]
    default_sampler: str

    def build_process(self, process_cfg, *, learn_sigma: bool, sample_cfg=None):
        """``config.process`` -> the noising process.

        SiT: a `Transport` (path, prediction, train_eps, sample_eps). DiT: the DDPM of
        ``num_timesteps`` steps for training; with ``sample_cfg`` respaced to its ``num_steps``
        (``"ddimN"`` spacing for the DDIM sampler), as the release's ``create_diffusion(str(N))``.
        """
        if self.process_type is Transport:
            return Transport(
                path=process_cfg.path,
                prediction=process_cfg.prediction,
                train_eps=process_cfg.train_eps,
                sample_eps=process_cfg.sample_eps,
            )
        respacing = ""
        if sample_cfg is not None:
            steps = int(sample_cfg.num_steps)
            respacing = f"ddim{steps}" if sample_cfg.sampler == "ddim" else str(steps)
        return create_diffusion(
            respacing,
            int(process_cfg.num_timesteps),
            bool(learn_sigma),
            beta_schedule=process_cfg.beta_schedule,
        )

    def net_output(self, out: jax.Array, in_channels: int) -> jax.Array:
        """The part of the raw (N, H, W, out_ch) output the process reads: SiT the first C
        channels, DiT all of them (eps and the variance value)."""
        return out[..., :in_channels] if self.process_type is Transport else out

    def guided_channels(self, in_channels: int) -> int | None:
        """Channels the guidance formula acts on (None = all of `net_output`)."""
        return None if self.process_type is Transport else in_channels

    def training_times(self, process, num_times: int = 1000) -> np.ndarray:
        """(T,) float32 times spread like the training time distribution, in the network's
        convention: SiT the midpoints of ``num_times`` equal cells of the transport's train
        interval; DiT every original step 0..num_timesteps-1."""
        if self.process_type is GaussianDiffusion:
            return np.arange(int(process.original_num_steps), dtype=np.float32)
        lo, hi = (float(v) for v in process.train_interval())
        cells = (np.arange(num_times, dtype=np.float64) + 0.5) / num_times
        return (lo + (hi - lo) * cells).astype(np.float32)


SIT = Family(
    name="SiT",
    process_type=Transport,
    time_convention="float t in [0, 1], t = 0 noise, t = 1 data",
    samplers=("ode", "sde", "ode_adaptive"),
    default_sampler="sde",
)
DIT = Family(
    name="DiT",
    process_type=GaussianDiffusion,
    time_convention="integer step 0..num_timesteps-1, 0 = least noise",
    samplers=("ddpm", "ddim"),
    default_sampler="ddpm",
)
FAMILIES = {f.name: f for f in (SIT, DIT)}


def family_for(model_name: str) -> Family:
    """The family of a model name ("SiT-XL/2" -> SIT); unknown names raise naming the choices."""
    return FAMILIES[parse_model_name(model_name)[0]]


def family_of_process(process) -> Family:
    """The family whose process ``process`` is (a `Transport` -> SIT, a `GaussianDiffusion` ->
    DIT); anything else raises a TypeError."""
    for family in FAMILIES.values():
        if isinstance(process, family.process_type):
            return family
    raise TypeError(
        f"process is a {type(process).__name__}; expected a Transport (SiT) or a "
        "GaussianDiffusion (DiT) from nag_jax.diffusion (see build.build_process)."
    )
