"""SiT's interpolation paths, one class per path (the release's ``transport/path.py``).

Time convention (SiT family): float ``t`` in [0, 1], ``t = 0`` is NOISE and ``t = 1`` is DATA.
The interpolant is ``x_t = alpha(t) x1 + sigma(t) x0`` (``x0 ~ N(0, I)`` noise, ``x1`` data).

| class    | release    | alpha(t)                                  | sigma(t)          |
|----------|------------|-------------------------------------------|-------------------|
| `Linear` | ICPlan     | t                                         | 1 - t             |
| `GVP`    | GVPCPlan   | sin(pi t / 2)                             | cos(pi t / 2)     |
| `VP`     | VPCPlan    | exp(m(t)), m = -1/4 (1-t)^2 (b1-b0) - 1/2 (1-t) b0 | sqrt(1 - alpha^2) |

Each path gives its coefficients and their time derivatives (`Path.alpha_sigma`, the release's
``compute_alpha_t`` / ``compute_sigma_t``), ``a = alpha'/alpha`` in a stable form
(`Path.d_log_alpha`, ``compute_d_alpha_alpha_ratio_t``), the probability-flow drift pieces
``velocity = a x + var score`` (`Path.drift`, ``compute_drift``; ``var`` = `Path.drift_var`, the
"SBDM" coefficient), the SDE diffusion coefficient (`Path.diffusion`, ``compute_diffusion``), the
conversions between velocity, score and noise, and the release's time epsilons and intervals
(``check_interval``), which depend on the path. `nag_jax.diffusion.transport.Transport` delegates
to one of these objects; the prediction type stays the transport's.

Arguments ``t`` are scalars or arrays already broadcastable against ``x`` (the transport expands
a per-example ``(N,)`` time to ``(N, 1, ..., 1)``); every method is a pure jnp function.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = [
    "PATHS",
    "DIFFUSION_FORMS",
    "Path",
    "Linear",
    "GVP",
    "VP",
    "make_path",
]

PATHS = ("linear", "gvp", "vp")
DIFFUSION_FORMS = (
    "constant",
    "SBDM",
    "sigma",
    "linear",
    "decreasing",
    "increasing-decreasing",
)


def _time(t) -> jax.Array:
    """``t`` as an array of at least float32 precision."""
    return jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Path:
    """What every path shares (the release's ``ICPlan`` methods that only use the coefficients).

    A subclass defines `alpha_sigma` and `d_log_alpha`; the rest follows from them.
    """

    name = ""  # "linear" | "gvp" | "vp" (a class attribute, not a field)

    # ------------------------------------------------------------------ coefficients
    def alpha_sigma(self, t):
        """``(alpha, sigma, d_alpha, d_sigma)`` at ``t``, each with ``t``'s shape."""
        raise NotImplementedError

    def d_log_alpha(self, t):
        """``alpha'(t) / alpha(t)`` in a stable form (infinite at ``t = 0`` for Linear/GVP)."""
        raise NotImplementedError

    def drift_var(self, t):
        """``var(t) = a sigma^2 - sigma sigma'`` with ``a = alpha'/alpha`` (the "SBDM" coefficient).

        ``velocity = a x + var * score``.
        """
        t = _time(t)
        _, sigma, _, d_sigma = self.alpha_sigma(t)
        return self.d_log_alpha(t) * sigma**2 - sigma * d_sigma

    def drift(self, x, t):
        """Probability-flow drift pieces ``(a x, var)``: ``velocity = a x + var * score``.

        (The release's ``compute_drift`` returns ``(-a x, var)``.)
        """
        return self.d_log_alpha(t) * x, self.drift_var(t)

    def diffusion(self, t, form: str = "sigma", norm: float = 1.0):
        """SDE diffusion coefficient ``w(t)`` (release ``compute_diffusion``), ``t``'s shape.

        constant: ``norm``; SBDM: ``norm * var(t)``; sigma: ``norm * sigma(t)``; linear:
        ``norm (1 - t)``; decreasing: ``(norm cos(pi t) + 1)^2 / 4``; increasing-decreasing:
        ``norm sin(pi t)^2``. The SDE is ``dx = [v + w s] dt + sqrt(2 w) dW``.
        """
        t = _time(t)
        if form == "constant":
            return norm * jnp.ones_like(t)
        if form == "SBDM":
            return norm * self.drift_var(t)
        if form == "sigma":
            return norm * self.alpha_sigma(t)[1]
        if form == "linear":
            return norm * (1.0 - t)
        if form == "decreasing":
            return 0.25 * (norm * jnp.cos(math.pi * t) + 1.0) ** 2
        if form in ("increasing-decreasing", "inccreasing-decreasing"):
            return norm * jnp.sin(math.pi * t) ** 2
        raise ValueError(f"diffusion_form={form!r}; expected one of {DIFFUSION_FORMS}.")

    # ------------------------------------------------------------------ conversions
    def velocity_from_score(self, score, x, t):
        """``a x + var * score`` (release ``get_velocity_from_score``)."""
        drift_mean, drift_var = self.drift(x, t)
        return drift_mean + drift_var * score

    def score_from_velocity(self, velocity, x, t):
        """The score solving ``velocity = a x + var score``, in the release's form
        (``alpha / alpha'`` is finite at ``t = 0`` for Linear/GVP)."""
        alpha, sigma, d_alpha, d_sigma = self.alpha_sigma(t)
        ratio = alpha / d_alpha  # = 1 / d_log_alpha
        var = sigma**2 - ratio * d_sigma * sigma
        return (ratio * velocity - x) / var

    def noise_from_velocity(self, velocity, x, t):
        """``E[x0 | x_t = x]`` from the velocity (release ``get_noise_from_velocity``)."""
        alpha, sigma, d_alpha, d_sigma = self.alpha_sigma(t)
        ratio = alpha / d_alpha
        return (ratio * velocity - x) / (ratio * d_sigma - sigma)

    # ------------------------------------------------------------------ time epsilons, intervals
    def default_eps(self, prediction: str) -> tuple[float, float]:
        """The release's ``(train_eps, sample_eps)``: velocity 0 / 0, score|noise 1e-3 / 1e-3."""
        if prediction != "velocity":
            return 1e-3, 1e-3
        return 0.0, 0.0

    def train_interval(self, prediction: str, eps: float) -> tuple[float, float]:
        """``(t0, t1)`` of training times (release ``check_interval``, training mode)."""
        if prediction != "velocity":
            return eps, 1.0 - eps
        return 0.0, 1.0

    def sample_interval(
        self, prediction: str, eps: float, sde: bool, diffusion_form: str, last_step_size: float
    ) -> tuple[float, float]:
        """``(t0, t1)`` of a sampler grid (release ``check_interval``, eval mode).

        ODE: velocity ``[0, 1]``; score|noise ``[eps, 1 - eps]``. SDE: ``t1 = 1 - last_step_size``
        when a last step is taken (``last_step_size > 0``), else ``1 - eps``; ``t0 = eps`` if the
        form is "SBDM" or the prediction is not velocity, else 0.
        """
        t1_sde = 1.0 - eps if last_step_size == 0 else 1.0 - last_step_size
        if prediction != "velocity" or sde:
            t0 = eps if (diffusion_form == "SBDM" and sde) or prediction != "velocity" else 0.0
            return t0, (t1_sde if sde else 1.0 - eps)
        return 0.0, 1.0


@dataclasses.dataclass(frozen=True)
class Linear(Path):
    """``alpha = t``, ``sigma = 1 - t`` (the release's ``ICPlan``, SiT's default)."""

    name = "linear"

    def alpha_sigma(self, t):
        t = _time(t)
        one = jnp.ones_like(t)
        return t, 1.0 - t, one, -one

    def d_log_alpha(self, t):
        return 1.0 / _time(t)


@dataclasses.dataclass(frozen=True)
class GVP(Path):
    """``alpha = sin(pi t / 2)``, ``sigma = cos(pi t / 2)`` (the release's ``GVPCPlan``)."""

    name = "gvp"

    def alpha_sigma(self, t):
        t = _time(t)
        h = 0.5 * math.pi
        return jnp.sin(h * t), jnp.cos(h * t), h * jnp.cos(h * t), -h * jnp.sin(h * t)

    def d_log_alpha(self, t):
        return math.pi / (2.0 * jnp.tan(0.5 * math.pi * _time(t)))


@dataclasses.dataclass(frozen=True)
class VP(Path):
    """Variance preserving (the release's ``VPCPlan``): ``alpha = exp(m(t))``,
    ``sigma = sqrt(1 - alpha^2)``, ``beta(t) = b0 + (1 - t)(b1 - b0) = 2 d log alpha / dt``.

    ``a = var = beta(t) / 2``, computed in that stable form as the release does; time epsilons
    1e-5 (train) / 1e-3 (sample) whatever the prediction, and no interval starts above 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def _log_mean(self, t):
        b0, b1 = self.beta_min, self.beta_max
        return -0.25 * (1.0 - t) ** 2 * (b1 - b0) - 0.5 * (1.0 - t) * b0

    def beta(self, t):
        """VP ``beta(t) = b0 + (1 - t)(b1 - b0)``; equals ``2 d log alpha / dt``."""
        return self.beta_min + (1.0 - t) * (self.beta_max - self.beta_min)

    def alpha_sigma(self, t):
        t = _time(t)
        log_mean = self._log_mean(t)
        alpha = jnp.exp(log_mean)
        d_alpha = alpha * 0.5 * self.beta(t)
        alpha2 = jnp.exp(2.0 * log_mean)
        sigma = jnp.sqrt(1.0 - alpha2)
        d_sigma = alpha2 * self.beta(t) / (-2.0 * sigma)
        return alpha, sigma, d_alpha, d_sigma

    def d_log_alpha(self, t):
        return 0.5 * self.beta(_time(t))

    def drift_var(self, t):
        """``beta(t) / 2`` (the release's ``VPCPlan.compute_drift``)."""
        return 0.5 * self.beta(_time(t))

    def default_eps(self, prediction: str) -> tuple[float, float]:
        return 1e-5, 1e-3

    def train_interval(self, prediction: str, eps: float) -> tuple[float, float]:
        return 0.0, 1.0 - eps

    def sample_interval(
        self, prediction: str, eps: float, sde: bool, diffusion_form: str, last_step_size: float
    ) -> tuple[float, float]:
        t1_sde = 1.0 - eps if last_step_size == 0 else 1.0 - last_step_size
        return 0.0, (t1_sde if sde else 1.0 - eps)


def make_path(name: str, *, beta_min: float = 0.1, beta_max: float = 20.0) -> Path:
    """``"linear" | "gvp" | "vp"`` (case-insensitive) -> the path object."""
    key = str(name).lower()
    if key not in PATHS:
        raise ValueError(f"Transport path={name!r}; expected one of {PATHS}.")
    if key == "vp":
        return VP(beta_min=beta_min, beta_max=beta_max)
    return Linear() if key == "linear" else GVP()
