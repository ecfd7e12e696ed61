"""DiT's DDPM and DDIM samplers against diffusers' DDPMScheduler / DDIMScheduler, an oracle this
project did not write (tests/torch_reference.py is the project's own reading of the releases).

Both sides are driven step by step with the SAME deterministic model (`model_output`, one
analytic function of (x, t) written once over an array namespace: jax.numpy here, torch there)
and the SAME Gaussian draws. DiT time: integer step, 0 = least noise; the model sees the ORIGINAL
step (nag_jax: ``diffusion.timestep_map[i]``; diffusers: the scheduler's ``timesteps``).

The diffusers schedulers are configured as DiT samples: linear betas ``linspace(1e-4, 0.02,
1000)``; ``prediction_type="epsilon"``; ``clip_sample=False`` (DiT samples latents unclipped,
``clip_denoised=False``); DDPM ``variance_type="learned_range"`` for DiT's learned sigma (the 2C
output split into eps | v, ``log_var = f log(beta) + (1 - f) log(posterior var)``,
``f = (v + 1) / 2``), ``"fixed_large"`` for ``learn_sigma=False`` (DiT's default fixed
variance: beta) and ``"fixed_small"`` for ``sigma_small=True`` (the posterior variance); DDIM
``set_alpha_to_one=True`` (DiT's ``alphas_cumprod_prev`` at respaced index 0 is 1),
``steps_offset=0``, eta 0 (DiT's DDIM default) and eta 1.

What matches, and what differs (so what is compared):
- Respacing. DiT's ``space_timesteps(1000, "N")`` (fractional stride ``999 / (N - 1)``, rounded)
  is diffusers' ``timestep_spacing="linspace"`` (``linspace(0, 999, N).round()``); DiT's
  ``"ddimN"`` (``range(0, 1000, 1000 // N)``) is diffusers' ``"leading"`` with
  ``steps_offset=0``. Both identities are asserted for N in (10, 25, 50, 100, 250).
- DDPM. diffusers' step over a respaced schedule uses ``beta' = 1 - abar_t / abar_prev`` with
  ``prev`` the previous timestep of the schedule: DiT's respaced process. Compared on "linspace"
  spacings (25, 50 and DiT's own 250).
- DDIM. diffusers' DDIMScheduler steps to ``t - 1000 // N`` (a uniform integer stride), so it is
  DiT's DDIM only on ``"ddimN"`` respacings. On DiT's plain "N" respacing (stride 999 / (N - 1),
  e.g. 0, 20, 41, 61, ...) diffusers would step from 41 to 21 where DiT steps to 20; DDIM is
  therefore compared on "ddimN" / "leading" only.
- The final step (respaced index 0). DiT's log-variance there is the clipped one (index 1's
  posterior variance), diffusers clamps the zero posterior variance to 1e-20; neither adds noise
  at that step, so samples agree and the variances are compared on the other steps.
- Precision. diffusers builds ``alphas_cumprod`` as a float32 torch cumprod; DiT in float64.
  `test_schedule_matches_diffusers` compares the two at float32 tolerance. The step algebra is
  then compared in float64: diffusers is given DiT's float64 ``alphas_cumprod`` (its step reads
  only ``alphas_cumprod``, ``one`` and ``final_alpha_cumprod``) and nag_jax runs with float64
  states under ``jax.enable_x64`` (its coefficient tables are float32, as the release's
  ``_extract_into_tensor``; that rounding is what the 1e-5 tolerances cover: measured final
  differences are ~1e-7 (DDPM) and up to ~2e-6 (DDIM eta 1) on samples of magnitude ~1.5, while
  a wrong choice, e.g. fixed_small for DiT's fixed_large or DDIM on "linspace", moves the
  samples by 0.3 / 0.02).
"""

from __future__ import annotations

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_ddpm

from nag_jax.diffusion.gaussian import create_diffusion, get_named_beta_schedule
from nag_jax.sampling import sample_ddim, sample_ddpm

N, H, W, C = 2, 4, 4, 3
MU = np.array([0.3, -0.5, 0.1])  # per-channel data mean of the analytic model
S2 = 0.25  # data variance
A = np.array([0.9, -0.6, 1.3])  # per-channel constants of its non-linear part
B = np.array([0.2, 1.1, -0.7])
ABAR = create_diffusion("").base_alphas_cumprod  # (1000,) float64, DiT's schedule
TOL = 1e-5


def model_output(xp, x, t, abar, channel_shape, learn_sigma: bool):
    """The deterministic "network" for any array namespace ``xp``: at original step ``t`` (with
    ``abar = ABAR[t]``), the exact eps of Gaussian data N(MU, S2) plus a non-linear term, and
    (learned sigma) DiT's variance value v in (-1, 1), stacked on the channel axis.

    ``channel_shape`` broadcasts the per-channel constants against x's layout ((1, 1, 1, C)
    NHWC for nag_jax, (1, C, 1, 1) NCHW for diffusers). The Gaussian part keeps the samples O(1)
    over the whole loop (a denoiser, not an arbitrary field), so tolerances are absolute.
    """
    mu, a, b = (xp.asarray(v.reshape(channel_shape)) for v in (MU, A, B))
    gauss = (1.0 - abar) ** 0.5 * (x - abar**0.5 * mu) / (abar * S2 + 1.0 - abar)
    eps = gauss + 0.1 * xp.tanh(a * x + 0.5 * xp.sin(t / 150.0 + b))
    if not learn_sigma:
        return eps
    v = xp.tanh(0.3 * x - xp.cos(t / 300.0 + b))
    axis = channel_shape.index(C)
    return xp.concatenate([eps, v], axis) if xp is jnp else xp.cat([eps, v], dim=axis)


def jax_pred_fn(learn_sigma):
    def pred_fn(x, t, y):
        del y
        abar = jnp.asarray(ABAR)[jnp.asarray(t, jnp.int32)]
        return model_output(jnp, x, t, abar, (1, 1, 1, C), learn_sigma)

    return pred_fn


def torch_model(x, t, learn_sigma):
    return model_output(torch, x, float(t), float(ABAR[int(t)]), (1, C, 1, 1), learn_sigma)


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, -3)))


def nhwc(a: torch.Tensor) -> np.ndarray:
    return np.moveaxis(a.numpy(), -3, -1)


def draws(num_steps: int, seed: int):
    """x_init (N, H, W, C) and per-step normals (T', N, H, W, C), float64."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, H, W, C)), rng.standard_normal((num_steps, N, H, W, C))


def float64_alphas_cumprod(diffusion) -> torch.Tensor:
    return torch.from_numpy(np.array(diffusion.base_alphas_cumprod, dtype=np.float64))


def ddpm_scheduler(diffusion, variance_type: str):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type=variance_type,
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="linspace",
    )
    sched.set_timesteps(diffusion.num_timesteps)
    sched.alphas_cumprod = float64_alphas_cumprod(diffusion)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def ddim_scheduler(diffusion):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    sched.set_timesteps(diffusion.num_timesteps)
    sched.alphas_cumprod = float64_alphas_cumprod(diffusion)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def test_schedule_matches_diffusers():
    """diffusers' own float32 betas and alphas_cumprod are DiT's float64 ones to float32
    rounding (the cumprod of 1000 float32 factors drifts by ~1e-6 relative)."""
    sched = diffusers.DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    betas = get_named_beta_schedule("linear", 1000)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-6, atol=0)
    abar = create_diffusion("").base_alphas_cumprod
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), abar, rtol=2e-5, atol=0)


@pytest.mark.parametrize("n", [10, 25, 50, 100, 250])
def test_respaced_timesteps_match_diffusers_spacings(n):
    """DiT "N" == diffusers "linspace", DiT "ddimN" == diffusers "leading" (loop order: high
    noise first, as diffusers' ``timesteps``)."""
    for respacing, scheduler, spacing in (
        (str(n), diffusers.DDPMScheduler, "linspace"),
        (f"ddim{n}", diffusers.DDIMScheduler, "leading"),
    ):
        sched = scheduler(timestep_spacing=spacing, steps_offset=0)
        sched.set_timesteps(n)
        dit = create_diffusion(respacing).timestep_map[::-1]
        np.testing.assert_array_equal(sched.timesteps.numpy(), dit, err_msg=respacing)


DDPM_CASES = [
    # (respacing, learn_sigma, sigma_small, diffusers variance_type)
    ("25", True, False, "learned_range"),
    ("50", True, False, "learned_range"),
    ("250", True, False, "learned_range"),  # DiT's sampling setting
    ("50", False, False, "fixed_large"),
    ("50", False, True, "fixed_small"),
]


@pytest.mark.parametrize("respacing,learn_sigma,sigma_small,variance_type", DDPM_CASES)
def test_ddpm_matches_diffusers(monkeypatch, respacing, learn_sigma, sigma_small, variance_type):
    """Per step: the posterior mean, the noise scale and the predicted x0 of
    ``p_mean_variance`` at diffusers' states; over the loop: every state of `sample_ddpm` with
    the same noise as diffusers' ``DDPMScheduler.step``."""
    diffusion = create_diffusion(respacing, learn_sigma=learn_sigma, sigma_small=sigma_small)
    sched = ddpm_scheduler(diffusion, variance_type)
    t_loop = diffusion.timestep_map[::-1]
    np.testing.assert_array_equal(sched.timesteps.numpy(), t_loop)
    x_init, noise = draws(diffusion.num_timesteps, seed=len(respacing) + 3 * learn_sigma)

    # diffusers draws its step noise with randn_tensor (only when t > 0): hand it ours.
    current = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: current["z"])

    def step(out, t, x, z):
        current["z"] = z
        return sched.step(out, int(t), x)

    x = nchw(x_init)
    states = []
    with jax.enable_x64(True):
        for k, t in enumerate(t_loop):
            i = diffusion.num_timesteps - 1 - k
            out = torch_model(x, t, learn_sigma)
            mean_ref = step(out, t, x, torch.zeros_like(x))
            std_ref = step(out, t, x, torch.ones_like(x)).prev_sample - mean_ref.prev_sample
            p = diffusion.p_mean_variance(
                jnp.asarray(nhwc(out)), jnp.asarray(nhwc(x)), i, clip_denoised=False
            )
            np.testing.assert_allclose(p["mean"], nhwc(mean_ref.prev_sample), rtol=0, atol=TOL)
            np.testing.assert_allclose(
                p["pred_xstart"], nhwc(mean_ref.pred_original_sample), rtol=TOL, atol=TOL
            )
            if i > 0:
                std = np.broadcast_to(np.exp(0.5 * np.asarray(p["log_variance"])), x_init.shape)
                np.testing.assert_allclose(std, nhwc(std_ref), rtol=TOL, atol=0)
            else:  # neither adds noise at the last step
                assert float(std_ref.abs().max()) == 0.0
            x = step(out, t, x, nchw(noise[k])).prev_sample
            states.append(nhwc(x))

        x_last, traj = sample_ddpm(
            jax_pred_fn(learn_sigma),
            None,
            jnp.asarray(x_init),
            None,
            diffusion=diffusion,
            noise=jnp.asarray(noise),
            return_trajectory=True,
        )
        assert x_last.dtype == jnp.float64
    np.testing.assert_allclose(traj["x"][1:], np.stack(states), rtol=0, atol=TOL)
    np.testing.assert_allclose(x_last, states[-1], rtol=0, atol=TOL)
    np.testing.assert_array_equal(traj["t"][:-1], t_loop.astype(np.float32))


@pytest.mark.parametrize("respacing", ["ddim25", "ddim50"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(respacing, eta):
    """`sample_ddim` (DiT: eps re-derived from x0, eta 0 by default) against diffusers'
    ``DDIMScheduler.step`` (eps as predicted; equal without clipping) with the same
    ``variance_noise``; diffusers sees only the eps half of the learned-sigma output."""
    diffusion = create_diffusion(respacing, learn_sigma=True)
    sched = ddim_scheduler(diffusion)
    t_loop = diffusion.timestep_map[::-1]
    np.testing.assert_array_equal(sched.timesteps.numpy(), t_loop)
    x_init, noise = draws(diffusion.num_timesteps, seed=int(respacing[4:]) + int(eta))

    x = nchw(x_init)
    states = []
    for k, t in enumerate(t_loop):
        eps = torch_model(x, t, learn_sigma=True)[:, :C]
        x = sched.step(eps, int(t), x, eta=eta, variance_noise=nchw(noise[k])).prev_sample
        states.append(nhwc(x))

    with jax.enable_x64(True):
        x_last, traj = sample_ddim(
            jax_pred_fn(True),
            jnp.asarray(x_init),
            None,
            diffusion=diffusion,
            eta=eta,
            noise=jnp.asarray(noise) if eta else None,
            return_trajectory=True,
        )
        assert x_last.dtype == jnp.float64
    np.testing.assert_allclose(traj["x"][1:], np.stack(states), rtol=0, atol=TOL)
    np.testing.assert_allclose(x_last, states[-1], rtol=0, atol=TOL)


def test_diffusers_ddim_assumes_a_uniform_stride():
    """Why DDIM is compared on "ddimN" only: on DiT's plain "50" respacing (0, 20, 41, 61, ...)
    diffusers' DDIM steps from t to t - 1000 // 50 (41 -> 21), DiT's to the previous kept step
    (41 -> 20); on "ddim50" the two rules agree at every step."""
    for respacing, agree in (("50", False), ("ddim50", True)):
        kept = create_diffusion(respacing).timestep_map
        diffusers_prev = kept[1:] - 1000 // len(kept)
        assert np.array_equal(diffusers_prev, kept[:-1]) == agree, respacing
