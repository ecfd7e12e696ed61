"""DiT's discrete Gaussian diffusion (DDPM, eps prediction, learned-range variance), in jnp.

Time convention (DiT family): integer step ``0 .. 999``, ``0`` = LEAST noise; the network is fed
the ORIGINAL step index as a float. A respaced process (``timestep_respacing="250"``) keeps a
subset ``use_timesteps`` of the original steps; its own indices ``i = 0 .. T'-1`` ("respaced
index") map to original steps through ``timestep_map[i]``. All methods below take RESPACED
indices ``i``; `model_t` converts them to what the network sees. Paper noise level:
``lambda = (step + 1) / 1000`` of the ORIGINAL step (`noise_level`).

Everything follows the release (facebookresearch/DiT, diffusion/):
- betas: ``linspace(1e-4, 0.02, 1000)`` in float64 ("linear", scaled by ``1000 / T`` for other T).
- respacing: ``beta'_i = 1 - alphabar[s_i] / alphabar[s_{i-1}]`` over the kept steps ``s_i``.
- derived arrays (alphas_cumprod, posterior variance / clipped log-variance / mean coefficients,
  ...) computed in float64 numpy and cast to float32 where used (as the release's
  ``_extract_into_tensor`` does).
- learned range: ``log_var = f log(beta_i) + (1 - f) posterior_log_var_clipped_i``,
  ``f = (v + 1) / 2`` with ``v`` the second half of the 2C-channel output.
- loss: ``mse(eps) + vb`` where ``vb`` (in bits, mean over dims) is the KL between the true and
  the model posterior, or the discretised decoder NLL at ``i = 0``; vb sees a stop-gradient of the
  eps half (it only trains the variance). ``vb *= T'/1000`` only when ``rescale_learned_sigmas``
  (the release's RESCALED_MSE; DiT trains with plain MSE, i.e. no factor).

Shapes: ``x`` (N, H, W, C) NHWC; the model output ``out`` (N, H, W, 2C) when ``learn_sigma``
(eps = out[..., :C], v = out[..., C:]) else (N, H, W, C); ``i`` a scalar or (N,) int array.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GaussianDiffusion",
    "create_diffusion",
    "space_timesteps",
    "get_named_beta_schedule",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
]


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over all non-batch dims: ``(N, ...) -> (N,)`` (its one home; transport imports it)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


# ----------------------------------------------------------------------------- schedules
def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas ``(T,)`` float64. "linear": ``linspace(1e-4 s, 0.02 s, T)``, ``s = 1000 / T``;
    "squaredcos_cap_v2": the cosine schedule (betas capped at 0.999)."""
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "squaredcos_cap_v2":

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999)
                for i in range(num_timesteps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"beta_schedule={name!r}; expected 'linear' (DiT) or 'squaredcos_cap_v2'.")


def space_timesteps(num_timesteps: int, section_counts) -> tuple[int, ...]:
    """Original steps kept by a respacing (sorted tuple), as the release computes them.

    ``section_counts``: an int, a list of ints, a comma-separated string ("250", "10,15,20")
    splitting ``[0, T)`` into equal sections each strided to its count (fractional stride
    ``(size - 1) / (count - 1)``, Python ``round`` of the running sum), or "ddimN": the integer
    stride ``k`` with ``len(range(0, T, k)) == N``. ``"" / None`` = all steps.
    E.g. ``space_timesteps(1000, "250") == (0, 4, 8, ..., 991, 995, 999)``.
    """
    if section_counts is None or section_counts == "":
        return tuple(range(num_timesteps))
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return tuple(range(0, num_timesteps, stride))
            raise ValueError(
                f"timestep_respacing={section_counts!r}: cannot take exactly {desired} steps "
                f"of {num_timesteps} with an integer stride; use a plain count like "
                f"'{desired}' instead."
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for k, count in enumerate(section_counts):
        size = size_per + (1 if k < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot divide a section of {size} steps into {count}; use at most {size}."
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return tuple(sorted(set(steps)))


# ----------------------------------------------------------------------------- likelihoods
def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (broadcasting)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    """The release's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats, elementwise) of ``x`` in [-1, 1] under a Gaussian discretised to
    256 bins of width 2/255 (edge bins open), as in the release."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


# ----------------------------------------------------------------------------- process
_ARRAYS = (
    "betas",
    "log_betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
    """A (possibly respaced) DDPM of the DiT release. Build it with `create_diffusion`.

    Fields (hashable; usable as a static argument): ``use_timesteps`` the kept original steps
    (sorted), ``original_num_steps`` (1000), ``beta_schedule``, ``learn_sigma`` (learned-range
    variance from a 2C output), ``sigma_small`` (fixed variance choice when not learned:
    posterior (small) or beta (large, the default)), ``rescale_learned_sigmas``.

    Arrays (float64 numpy, length ``num_timesteps`` = T' respaced steps): betas, log_betas,
    alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next, sqrt_alphas_cumprod,
    sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod,
    sqrt_recipm1_alphas_cumprod, posterior_variance, posterior_log_variance_clipped,
    posterior_mean_coef1, posterior_mean_coef2; ``timestep_map`` (T',) int32 respaced index ->
    original step; ``base_alphas_cumprod`` (original_num_steps,) of the un-respaced process.
    """

    use_timesteps: tuple[int, ...] = tuple(range(1000))
    original_num_steps: int = 1000
    beta_schedule: str = "linear"
    learn_sigma: bool = True
    sigma_small: bool = False
    rescale_learned_sigmas: bool = False

    def __post_init__(self):
        keep = tuple(sorted({int(s) for s in self.use_timesteps}))
        if len(keep) < 2 or keep[0] < 0 or keep[-1] >= self.original_num_steps:
            raise ValueError(
                f"use_timesteps has {len(keep)} steps in [{keep[0] if keep else None}, "
                f"{keep[-1] if keep else None}]; expected >= 2 distinct steps within "
                f"[0, {self.original_num_steps})."
            )
        object.__setattr__(self, "use_timesteps", keep)
        base_betas = get_named_beta_schedule(self.beta_schedule, self.original_num_steps)
        base_ac = np.cumprod(1.0 - base_betas)
        # Respacing: beta'_i = 1 - abar[s_i] / abar[s_{i-1}] (abar before the first kept = 1).
        ac_kept = base_ac[np.asarray(keep)]
        betas = 1.0 - ac_kept / np.append(1.0, ac_kept[:-1])
        self._set_arrays(betas)
        object.__setattr__(self, "timestep_map", np.asarray(keep, dtype=np.int32))
        object.__setattr__(self, "base_alphas_cumprod", base_ac)

    def _set_arrays(self, betas: np.ndarray) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        arrays = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "alphas_cumprod_next": np.append(ac[1:], 0.0),
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            "posterior_variance": post_var,
            # log clipped: the posterior variance is 0 at i = 0; use the value at i = 1 there.
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        }
        for name in _ARRAYS:
            a = arrays[name]
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    # ------------------------------------------------------------------ helpers
    @property
    def num_timesteps(self) -> int:
        """Number of (respaced) steps T'."""
        return len(self.use_timesteps)

    def coef(self, name: str, i, x: jax.Array) -> jax.Array:
        """``array[i]`` as float32, broadcast against ``x`` (N, ...)."""
        arr = jnp.asarray(getattr(self, name), dtype=jnp.float32)
        v = arr[jnp.asarray(i, jnp.int32)]
        if v.ndim == 0:
            return v
        return v.reshape((-1,) + (1,) * (x.ndim - 1))

    def model_t(self, i) -> jax.Array:
        """Network time input: ORIGINAL step ``timestep_map[i]`` as float32 (``i``'s shape)."""
        return jnp.asarray(self.timestep_map)[jnp.asarray(i, jnp.int32)].astype(jnp.float32)

    def noise_level(self, step):
        """Paper noise level ``(step + 1) / original_num_steps`` of an ORIGINAL step."""
        return (jnp.asarray(step, jnp.float32) + 1.0) / self.original_num_steps

    def sample_t(self, key: jax.Array, n: int) -> jax.Array:
        """Training indices ``(n,)`` int32, uniform over the T' respaced steps."""
        return jax.random.randint(key, (n,), 0, self.num_timesteps, dtype=jnp.int32)

    def split_output(self, out: jax.Array, x: jax.Array):
        """``(eps, v_or_None)`` from the raw output; checks the channel count."""
        c = x.shape[-1]
        want = 2 * c if self.learn_sigma else c
        if out.shape[:-1] != x.shape[:-1] or out.shape[-1] != want:
            raise ValueError(
                f"model output shape {out.shape} does not match x {x.shape}: expected "
                f"{want} channels (learn_sigma={self.learn_sigma}). DiT needs the full output "
                "(eps and the variance value v), not only the first C channels."
            )
        if self.learn_sigma:
            return out[..., :c], out[..., c:]
        return out, None

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start, i):
        """``q(x_i | x_0)``: ``(mean, variance, log_variance)``."""
        mean = self.coef("sqrt_alphas_cumprod", i, x_start) * x_start
        var = self.coef("alphas_cumprod", i, x_start)
        return mean, 1.0 - var, self.coef("log_one_minus_alphas_cumprod", i, x_start)

    def q_sample(self, x_start: jax.Array, i, noise: jax.Array) -> jax.Array:
        """``x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) noise``, (N, H, W, C)."""
        return (
            self.coef("sqrt_alphas_cumprod", i, x_start) * x_start
            + self.coef("sqrt_one_minus_alphas_cumprod", i, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, i):
        """``q(x_{i-1} | x_i, x_0)``: ``(mean, variance, log_variance_clipped)``."""
        mean = (
            self.coef("posterior_mean_coef1", i, x_t) * x_start
            + self.coef("posterior_mean_coef2", i, x_t) * x_t
        )
        return (
            mean,
            self.coef("posterior_variance", i, x_t),
            self.coef("posterior_log_variance_clipped", i, x_t),
        )

    def predict_xstart_from_eps(self, x_t, i, eps):
        return (
            self.coef("sqrt_recip_alphas_cumprod", i, x_t) * x_t
            - self.coef("sqrt_recipm1_alphas_cumprod", i, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t, i, pred_xstart):
        return (self.coef("sqrt_recip_alphas_cumprod", i, x_t) * x_t - pred_xstart) / self.coef(
            "sqrt_recipm1_alphas_cumprod", i, x_t
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(self, out: jax.Array, x_t: jax.Array, i, clip_denoised: bool = False):
        """``p(x_{i-1} | x_i)`` from the raw network output at respaced index ``i``.

        Returns a dict with ``mean``, ``variance``, ``log_variance`` (broadcastable to x),
        ``pred_xstart`` and ``eps`` (N, H, W, C). ``clip_denoised`` clips ``pred_xstart`` to
        [-1, 1] (DiT samples latents WITHOUT clipping).
        """
        eps, v = self.split_output(out, x_t)
        if self.learn_sigma:
            min_log = self.coef("posterior_log_variance_clipped", i, x_t)
            max_log = self.coef("log_betas", i, x_t)
            frac = (v + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = jnp.exp(log_var)
        elif self.sigma_small:
            var = self.coef("posterior_variance", i, x_t)
            log_var = self.coef("posterior_log_variance_clipped", i, x_t)
        else:
            # fixed large: beta_i, with the posterior variance at i = 0 (better decoder NLL).
            large = np.append(self.posterior_variance[1], self.betas[1:])
            idx = jnp.asarray(i, jnp.int32)
            var = jnp.asarray(large, jnp.float32)[idx]
            log_var = jnp.asarray(np.log(large), jnp.float32)[idx]
            if var.ndim:
                shape = (-1,) + (1,) * (x_t.ndim - 1)
                var, log_var = var.reshape(shape), log_var.reshape(shape)
        pred_xstart = self.predict_xstart_from_eps(x_t, i, eps)
        if clip_denoised:
            pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, i)
        return {
            "mean": mean,
            "variance": var,
            "log_variance": log_var,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # ------------------------------------------------------------------ losses
    def vb_terms_bpd(self, out: jax.Array, x_start: jax.Array, x_t: jax.Array, i) -> jax.Array:
        """Variational-bound term (N,) in bits per dim: ``KL(q(x_{i-1}|x_i,x_0) || p)`` for
        ``i > 0``, the discretised decoder NLL of ``x_0`` at ``i == 0``."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, i)
        p = self.p_mean_variance(out, x_t, i, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]))
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=p["mean"], log_scales=0.5 * p["log_variance"]
        )
        nll = mean_flat(jnp.broadcast_to(nll, x_start.shape))
        kl = kl / math.log(2.0)
        nll = nll / math.log(2.0)
        i = jnp.broadcast_to(jnp.asarray(i), kl.shape)
        return jnp.where(i == 0, nll, kl)

    def training_losses(
        self, out: jax.Array, x_start: jax.Array, x_t: jax.Array, i, noise: jax.Array
    ) -> dict:
        """Per-example DiT losses (each (N,)): ``mse`` = mean (noise - eps)^2, ``vb`` (learned
        variance only; the eps half is stop-gradiented) and ``loss = mse + vb``.

        Args: out (N,H,W,2C) raw output at ``(x_t, model_t(i))``; x_start (N,H,W,C) data;
        x_t = ``q_sample(x_start, i, noise)``; i (N,) respaced indices; noise (N,H,W,C).
        """
        eps, v = self.split_output(out, x_start)
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if self.learn_sigma:
            frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, i)
            if self.rescale_learned_sigmas:
                vb = vb * (self.num_timesteps / 1000.0)
            terms["vb"] = vb
            terms["loss"] = terms["mse"] + vb
        else:
            terms["loss"] = terms["mse"]
        return terms


def create_diffusion(
    timestep_respacing="",
    num_timesteps: int = 1000,
    learn_sigma: bool = True,
    *,
    beta_schedule: str = "linear",
    sigma_small: bool = False,
    rescale_learned_sigmas: bool = False,
) -> GaussianDiffusion:
    """The release's `create_diffusion`: ``""`` for training (all 1000 steps), ``"250"`` for
    DiT's sampling, ``"ddim50"`` for DDIM. ``num_timesteps`` = original (un-respaced) steps."""
    return GaussianDiffusion(
        use_timesteps=space_timesteps(num_timesteps, timestep_respacing),
        original_num_steps=num_timesteps,
        beta_schedule=beta_schedule,
        learn_sigma=learn_sigma,
        sigma_small=sigma_small,
        rescale_learned_sigmas=rescale_learned_sigmas,
    )
