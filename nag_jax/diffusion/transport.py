"""SiT stochastic-interpolant transport: a path (Linear / GVP / VP) and a prediction type, in jnp.

Time convention (SiT family, the release's): float ``t`` in [0, 1], ``t = 0`` is NOISE and
``t = 1`` is DATA. The paper / analysis "noise level" is ``lambda = 1 - t`` (`noise_level`).

The interpolant is ``x_t = alpha(t) * x1 + sigma(t) * x0`` with ``x0 ~ N(0, I)`` the noise and
``x1`` the data; its velocity target is ``u_t = alpha'(t) x1 + sigma'(t) x0``.

| path   | alpha(t)                          | sigma(t)                      |
|--------|-----------------------------------|-------------------------------|
| linear | t                                 | 1 - t                         |
| gvp    | sin(pi t / 2)                     | cos(pi t / 2)                 |
| vp     | exp(m(t)), m(t) = -1/4 (1-t)^2 (b1-b0) - 1/2 (1-t) b0 | sqrt(1 - alpha^2) |

with ``b0 = beta_min = 0.1`` and ``b1 = beta_max = 20`` (VP). Each path is its own class in
`nag_jax.diffusion.paths` (the release's ``path.py``: ICPlan / GVPCPlan / VPCPlan) and `Transport`
delegates every path-dependent coefficient, conversion and interval to it (``transport.plan``);
the transport adds the prediction type. The network predicts one of
``velocity`` (u), ``score`` (grad log p_t) or ``noise`` (E[x0 | x_t]); the conversions between
them are exact for any ``(x, t)`` (they are the same affine maps the release uses):

    score = -noise / sigma
    velocity = a(t) x + var(t) score,   a = alpha'/alpha,   var = a sigma^2 - sigma sigma'

(``var`` is also the "SBDM" diffusion coefficient; for VP ``a = var = beta(t)/2`` with
``beta(t) = b0 + (1 - t)(b1 - b0)``, computed in that stable form as the release does.)

Release defaults for the epsilons (``train_eps`` / ``sample_eps``, `Path.default_eps`), resolved
when left ``None``: Linear/GVP + velocity: 0 / 0; Linear/GVP + score|noise: 1e-3 / 1e-3; VP:
1e-5 / 1e-3.
(The release's `create_transport` leaves ``sample_eps = None`` when only ``train_eps`` is given,
a quirk we do not reproduce: each ``None`` here gets its own default.)

Shapes: ``t`` is either a scalar (shape ``()``) or a per-example vector ``(N,)``; arrays ``x`` are
``(N, H, W, C)`` (any rank >= 1 works). A vector ``t`` is broadcast over the non-batch dims.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nag_jax.diffusion.gaussian import mean_flat
from nag_jax.diffusion.paths import DIFFUSION_FORMS, PATHS, make_path

__all__ = [
    "PATHS",
    "PREDICTIONS",
    "DIFFUSION_FORMS",
    "Transport",
    "create_transport",
    "mean_flat",
]

PREDICTIONS = ("velocity", "score", "noise")


def _expand(t, x: jax.Array) -> jax.Array:
    """Broadcasts a scalar or ``(N,)`` time against ``x`` of shape ``(N, ...)``."""
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"time has shape {t.shape}; expected a scalar or ({x.shape[0]},) matching x of "
            f"shape {x.shape}. Pass one time per example or a single scalar."
        )
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Transport:
    """SiT transport: path, prediction type and the release's time epsilons.

    Args:
      path: "linear" | "gvp" | "vp" (case-insensitive; "Linear"/"GVP"/"VP" accepted).
      prediction: what the network outputs: "velocity" | "score" | "noise".
      train_eps, sample_eps: interval clipping; ``None`` = the release default (module doc).
      beta_min, beta_max: VP schedule (release: 0.1, 20).

    ``plan`` (an attribute, not a field) is the path object of `nag_jax.diffusion.paths`
    (``Linear()``, ``GVP()`` or ``VP(beta_min, beta_max)``); ``path`` stays its lower-case name.
    All methods are pure jnp functions of their array arguments; the dataclass is hashable and
    can be closed over (or passed as a static argument) in jitted code.
    """

    path: str = "linear"
    prediction: str = "velocity"
    train_eps: float | None = None
    sample_eps: float | None = None
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        plan = make_path(self.path, beta_min=self.beta_min, beta_max=self.beta_max)
        pred = str(self.prediction).lower()
        if pred not in PREDICTIONS:
            raise ValueError(
                f"Transport prediction={self.prediction!r}; expected one of {PREDICTIONS}."
            )
        default_train, default_sample = plan.default_eps(pred)
        train_eps = default_train if self.train_eps is None else float(self.train_eps)
        sample_eps = default_sample if self.sample_eps is None else float(self.sample_eps)
        for name, v in (("train_eps", train_eps), ("sample_eps", sample_eps)):
            if not 0.0 <= v < 0.5:
                raise ValueError(f"Transport {name}={v}; expected a value in [0, 0.5).")
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "path", plan.name)
        object.__setattr__(self, "prediction", pred)
        object.__setattr__(self, "train_eps", train_eps)
        object.__setattr__(self, "sample_eps", sample_eps)

    # ------------------------------------------------------------------ schedule (the path's)
    def alpha_sigma(self, t):
        """Schedule coefficients at time ``t`` (any shape).

        Returns ``(alpha, sigma, d_alpha, d_sigma)``, each with ``t``'s shape; ``x_t = alpha x1 +
        sigma x0``, ``d_*`` are time derivatives.
        """
        return self.plan.alpha_sigma(t)

    def d_log_alpha(self, t):
        """``alpha'(t) / alpha(t)`` in a stable form (infinite at ``t = 0`` for Linear/GVP)."""
        return self.plan.d_log_alpha(t)

    def drift_var(self, t):
        """``var(t) = a sigma^2 - sigma sigma'`` with ``a = alpha'/alpha`` (the "SBDM" coefficient).

        ``velocity = a x + var * score``. For VP it is ``beta(t) / 2``.
        """
        return self.plan.drift_var(t)

    # ------------------------------------------------------------------ training
    def interpolate(self, x0: jax.Array, x1: jax.Array, t):
        """Point on the path and its velocity target.

        Args:
          x0: noise ``(N, ...)``; x1: data ``(N, ...)``; t: ``(N,)`` or scalar SiT time.
        Returns:
          ``(xt, ut)``, both ``(N, ...)``: ``xt = alpha x1 + sigma x0``, ``ut = alpha' x1 +
          sigma' x0``.
        """
        alpha, sigma, d_alpha, d_sigma = self.alpha_sigma(_expand(t, x1))
        return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0

    def target(self, x0: jax.Array, x1: jax.Array, t) -> jax.Array:
        """The regression target of the network for this prediction type, ``(N, ...)``.

        velocity: ``u_t``; noise: ``x0``; score: ``-x0 / sigma(t)``.
        """
        if self.prediction == "velocity":
            return self.interpolate(x0, x1, t)[1]
        if self.prediction == "noise":
            return x0
        _, sigma, _, _ = self.alpha_sigma(_expand(t, x0))
        return -x0 / sigma

    def loss(self, pred: jax.Array, x0: jax.Array, x1: jax.Array, t, xt=None) -> jax.Array:
        """Per-example training loss ``(N,)`` (release, unweighted): mean over non-batch dims.

        velocity: ``|pred - u_t|^2``; noise: ``|pred - x0|^2``; score: ``|pred sigma + x0|^2``.
        ``pred`` has ``x1``'s shape (for SiT the first C channels of the network output). ``xt``
        is accepted for API symmetry and unused (all targets depend on x0, x1, t only).
        """
        del xt
        if pred.shape != x1.shape:
            raise ValueError(
                f"prediction shape {pred.shape} != data shape {x1.shape}; slice the network "
                "output to the data channels (out[..., :C]) first."
            )
        if self.prediction == "velocity":
            _, ut = self.interpolate(x0, x1, t)
            return mean_flat((pred - ut) ** 2)
        if self.prediction == "noise":
            return mean_flat((pred - x0) ** 2)
        _, sigma, _, _ = self.alpha_sigma(_expand(t, x0))
        return mean_flat((pred * sigma + x0) ** 2)

    def train_interval(self) -> tuple[float, float]:
        """``(t0, t1)`` for training times (release `check_interval`, training mode)."""
        return self.plan.train_interval(self.prediction, self.train_eps)

    def sample_t(self, key: jax.Array, n: int) -> jax.Array:
        """Training times ``(n,)`` float32, uniform on `train_interval`."""
        t0, t1 = self.train_interval()
        return jax.random.uniform(key, (n,), jnp.float32) * (t1 - t0) + t0

    # ------------------------------------------------------------------ sampling
    def sample_interval(
        self, sde: bool = False, *, diffusion_form: str = "sigma", last_step_size: float = 0.0
    ) -> tuple[float, float]:
        """``(t0, t1)`` of the sampler grid (release `check_interval`, eval mode).

        ODE: Linear/GVP velocity ``[0, 1]``; Linear/GVP score|noise ``[eps, 1 - eps]``; VP
        ``[0, 1 - eps]`` (``eps = sample_eps``). SDE: ``t1 = 1 - last_step_size`` when a last
        step is taken (``last_step_size > 0``), else ``1 - eps``; for Linear/GVP ``t0 = eps`` if
        the form is "SBDM" or the prediction is not velocity, else 0.
        """
        return self.plan.sample_interval(
            self.prediction, self.sample_eps, sde, diffusion_form, last_step_size
        )

    def velocity_from(self, pred: jax.Array, x: jax.Array, t) -> jax.Array:
        """Probability-flow velocity ``(N, ...)`` from the network prediction at ``(x, t)``."""
        if self.prediction == "velocity":
            return pred
        return self.plan.velocity_from_score(self.score_from(pred, x, t), x, _expand(t, x))

    def score_from(self, pred: jax.Array, x: jax.Array, t) -> jax.Array:
        """Score ``grad_x log p_t(x)`` ``(N, ...)`` from the network prediction."""
        if self.prediction == "score":
            return pred
        te = _expand(t, x)
        if self.prediction == "noise":
            return -pred / self.alpha_sigma(te)[1]
        return self.plan.score_from_velocity(pred, x, te)

    def noise_from(self, pred: jax.Array, x: jax.Array, t) -> jax.Array:
        """Noise estimate ``E[x0 | x_t = x]`` ``(N, ...)`` from the network prediction."""
        if self.prediction == "noise":
            return pred
        te = _expand(t, x)
        if self.prediction == "score":
            return -self.alpha_sigma(te)[1] * pred
        return self.plan.noise_from_velocity(pred, x, te)

    def data_from(self, pred: jax.Array, x: jax.Array, t) -> jax.Array:
        """Data estimate ``E[x1 | x_t = x] = (x - sigma * noise) / alpha`` (Tweedie)."""
        te = _expand(t, x)
        alpha, sigma, _, _ = self.alpha_sigma(te)
        return (x - sigma * self.noise_from(pred, x, t)) / alpha

    def diffusion_coefficient(self, t, form: str = "sigma", norm: float = 1.0):
        """SDE diffusion coefficient ``w(t)`` (release `compute_diffusion`), ``t``'s shape.

        constant: ``norm``; SBDM: ``norm * var(t)``; sigma: ``norm * sigma(t)``; linear:
        ``norm (1 - t)``; decreasing: ``(norm cos(pi t) + 1)^2 / 4``; increasing-decreasing:
        ``norm sin(pi t)^2``. The SDE is ``dx = [v + w s] dt + sqrt(2 w) dW``.
        """
        return self.plan.diffusion(t, form, norm)

    def sde_drift(self, pred, x, t, form: str = "sigma", norm: float = 1.0):
        """SDE drift ``v + w(t) * score`` from ONE prediction; returns ``(drift, w)``.

        ``w`` is a scalar or ``(N, 1, ..., 1)`` broadcastable against ``x``.
        """
        w = self.diffusion_coefficient(_expand(t, x), form, norm)
        return self.velocity_from(pred, x, t) + w * self.score_from(pred, x, t), w

    @staticmethod
    def noise_level(t):
        """Paper noise level ``lambda = 1 - t`` (1 = pure noise)."""
        return 1.0 - jnp.asarray(t)

    @staticmethod
    def time_from_noise_level(lam):
        """Inverse of `noise_level`: ``t = 1 - lambda``."""
        return 1.0 - jnp.asarray(lam)


def create_transport(
    path_type: str = "Linear",
    prediction: str = "velocity",
    train_eps: float | None = None,
    sample_eps: float | None = None,
) -> Transport:
    """Release-style constructor (``create_transport("Linear", "velocity")``)."""
    return Transport(
        path=path_type, prediction=prediction, train_eps=train_eps, sample_eps=sample_eps
    )
