"""Numerical parity with the PyTorch releases (reference: tests/torch_reference.py, torch CPU).

Weights are random (release init re-randomised so every output is nonzero), converted with
nag_jax.convert (so these tests also pin the converter's layout changes), and run through the
project's Flax model, guidance and samplers. Relative error = max|jax - torch| / max|torch|.

Time conventions: SiT float t in [0, 1] (0 = noise, 1 = data); DiT integer step 0..999 (0 = least
noise), fed as float. PyTorch tensors are NCHW, JAX NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as R

from nag_jax import sampling
from nag_jax.convert import create_model_from_metadata
from nag_jax.convert import to_orbax as T
from nag_jax.diffusion import gaussian
from nag_jax.guidance import GuidanceConfig, guided_prediction

TINY = dict(input_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10)
FWD_TOL = 1e-5  # forward pass, float32, highest matmul precision
SAMPLER_TOL = 1e-5  # every state of the trajectory (measured ~2e-7 SiT, ~2e-6 DiT)


def relerr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def pair(family, seed=0, null_token=True, **kw):
    """(torch model, flax module, params) with the same random weights."""
    m = R.rerandomize(
        R.create(f"{family}-S/2", null_noise_token=null_token, **dict(TINY, **kw)), seed
    )
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    params, arch, _ = T.state_dict_to_params(sd, family, num_heads=TINY["num_heads"])
    return m.eval(), create_model_from_metadata(arch.metadata()), params


def net_fn_for(model, params, family):
    """Raw network call in the guidance's signature; SiT keeps the first C channels."""
    c = model.in_channels

    def net_fn(x, t, y, drop_class, drop_noise):
        out = model.apply({"params": params}, x, t, y, drop_class=drop_class, drop_noise=drop_noise)
        return out[..., :c] if family == "SiT" else out

    return net_fn


def inputs(n=4, seed=0, family="SiT"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    if family == "SiT":
        t = torch.rand(n, generator=g)
    else:
        t = torch.randint(0, 1000, (n,), generator=g).float()
    y = torch.randint(0, TINY["num_classes"], (n,), generator=g)
    return x, t, y


# ---------------------------------------------------------------------------------------------
# Forward pass


@pytest.mark.parametrize("family", ["SiT", "DiT"])
def test_forward_matches_release(family):
    tm, fm, params = pair(family, seed=1)
    x, t, y = inputs(family=family)
    null = torch.tensor([False, True, False, True])
    y_t = torch.where(null, TINY["num_classes"], y)  # release: null class = label row 1000
    ref = tm(x, t, y_t).detach().numpy()
    out = fm.apply(
        {"params": params},
        nhwc(x),
        jnp.asarray(t.numpy()),
        jnp.asarray(y.numpy()),
        drop_class=jnp.asarray(null.numpy()),
    )
    out = nchw(out)
    if family == "SiT":
        assert ref.shape[1] == 4 and out.shape[1] == 8  # SiT release returns the first C only
        out = out[:, :4]
    else:
        assert ref.shape[1] == out.shape[1] == 8  # DiT: eps 0-3, variance value 4-7
    err = relerr(out, ref)
    print(f"PARITY forward {family}: relerr={err:.2e}")
    assert np.max(np.abs(ref)) > 0.1 and err <= FWD_TOL


def test_forward_null_noise_token_matches():
    tm, fm, params = pair("SiT", seed=2)
    x, t, y = inputs(seed=3)
    dn = torch.tensor([True, False, True, False])
    ref = tm(x, t, y, drop_noise=dn).detach().numpy()
    out = nchw(
        fm.apply(
            {"params": params},
            nhwc(x),
            jnp.asarray(t.numpy()),
            jnp.asarray(y.numpy()),
            drop_noise=jnp.asarray(dn.numpy()),
        )
    )[:, :4]
    err = relerr(out, ref)
    print(f"PARITY forward null-noise token: relerr={err:.2e}")
    assert err <= FWD_TOL
    # And the token really removes the dependence on t.
    ref2 = tm(x, torch.rand(4), y, drop_noise=dn).detach().numpy()
    np.testing.assert_allclose(ref2[dn.numpy()], ref[dn.numpy()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["SiT", "DiT"])
def test_release_three_channel_cfg_matches(family):
    """The releases' forward_with_cfg (channels 0-2 guided) == guidance with cfg_channels=3."""
    tm, fm, params = pair(family, seed=4)
    x, t, y = inputs(seed=5, family=family)
    tt = float(t[0])
    null = torch.full_like(y, TINY["num_classes"])
    ref = (
        tm.forward_with_cfg(torch.cat([x, x]), torch.full((8,), tt), torch.cat([y, null]), 4.0)[:4]
        .detach()
        .numpy()
    )
    g = GuidanceConfig(cfg_scale=4.0, cfg_channels=3)
    noise_level = (lambda s: 1.0 - s) if family == "SiT" else (lambda s: (s + 1.0) / 1000.0)
    pred_fn = guided_prediction(
        net_fn_for(fm, params, family),
        g,
        noise_level_fn=noise_level,
        guided_channels=4 if family == "DiT" else None,
    )
    out = nchw(pred_fn(nhwc(x), jnp.float32(tt), jnp.asarray(y.numpy())))
    err = relerr(out, ref)
    print(f"PARITY 3-channel CFG {family}: relerr={err:.2e}")
    assert err <= FWD_TOL
    # Channel 3 (and DiT's variance channels) are the conditional output, unguided.
    cond = nchw(
        net_fn_for(fm, params, family)(
            nhwc(x), jnp.full((4,), tt), jnp.asarray(y.numpy()), None, None
        )
    )
    np.testing.assert_allclose(out[:, 3:], cond[:, 3:], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Samplers, step by step


def _sit_pred_fn(fm, params, guidance):
    from nag_jax.diffusion.transport import Transport

    return guided_prediction(
        net_fn_for(fm, params, "SiT"), guidance, noise_level_fn=Transport.noise_level
    )


GUIDANCE_CASES = {
    "none": ({}, GuidanceConfig()),
    "cfg3": (dict(cfg_scale=4.0, cfg_channels=3), GuidanceConfig(cfg_scale=4.0, cfg_channels=3)),
    "cfg+nag": (
        dict(cfg_scale=1.5, nag_scale=0.5),
        GuidanceConfig(cfg_scale=1.5, nag_scale=0.5),
    ),
}


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_sit_euler_ode_trajectory_matches(case):
    from nag_jax.diffusion.transport import Transport
    from nag_jax.sampling import sample_ode

    tg, jg = GUIDANCE_CASES[case]
    tm, fm, params = pair("SiT", seed=6)
    x0, _, y = inputs(seed=7)
    steps = 8
    # Release grid: linspace(0, 1, K) points -> K - 1 Euler steps == ours with num_steps = K - 1.
    ref = R.sit_euler_ode(tm, x0, y, steps + 1, return_trajectory=True, **tg).numpy()
    pred_fn = _sit_pred_fn(fm, params, jg)
    _, traj = jax.jit(
        lambda x, y: sample_ode(
            pred_fn, x, y, transport=Transport(), num_steps=steps, return_trajectory=True
        )
    )(nhwc(x0), jnp.asarray(y.numpy()))
    errs = [relerr(nchw(traj["x"][k]), ref[k]) for k in range(steps + 1)]
    print(f"PARITY SiT Euler ODE [{case}]: per-step relerr max={max(errs):.2e}")
    assert traj["x"].shape[0] == ref.shape[0] == steps + 1
    assert max(errs) <= SAMPLER_TOL


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_sit_euler_maruyama_with_injected_noise_matches(case):
    from nag_jax.diffusion.transport import Transport
    from nag_jax.sampling import sample_sde

    tg, jg = GUIDANCE_CASES[case]
    tm, fm, params = pair("SiT", seed=8)
    x0, _, y = inputs(seed=9)
    grid_points = 10  # release num_steps: 9 stochastic steps + the "Mean" last step
    noise = torch.randn((grid_points - 1, 4, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ref = R.sit_euler_maruyama(tm, x0, y, grid_points, noise, return_trajectory=True, **tg).numpy()
    pred_fn = _sit_pred_fn(fm, params, jg)
    noise_j = jnp.asarray(noise.numpy().transpose(0, 1, 3, 4, 2))
    _, traj = jax.jit(
        lambda x, y, z: sample_sde(
            pred_fn,
            None,
            x,
            y,
            transport=Transport(),
            num_steps=grid_points,
            diffusion_form="sigma",
            last_step="Mean",
            last_step_size=0.04,
            noise=z,
            return_trajectory=True,
        )
    )(nhwc(x0), jnp.asarray(y.numpy()), noise_j)
    assert traj["x"].shape[0] == ref.shape[0] == grid_points + 1
    errs = [relerr(nchw(traj["x"][k]), ref[k]) for k in range(grid_points + 1)]
    print(f"PARITY SiT Euler-Maruyama [{case}]: per-step relerr max={max(errs):.2e}")
    assert max(errs) <= SAMPLER_TOL


@pytest.mark.parametrize("case", ["none", "cfg3"])
def test_dit_ddpm_with_injected_noise_matches(case):
    tg, jg = GUIDANCE_CASES[case]
    tm, fm, params = pair("DiT", seed=10)
    x0, _, y = inputs(seed=11, family="DiT")
    steps = 10
    noise = torch.randn((steps, 4, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    ref = R.dit_ddpm(tm, x0, y, noise, steps, return_trajectory=True, **tg).numpy()
    diffusion = gaussian.create_diffusion(timestep_respacing=str(steps), learn_sigma=True)
    np.testing.assert_array_equal(
        np.asarray(diffusion.timestep_map), R.RespacedDDPM(steps).timestep_map
    )
    pred_fn = guided_prediction(
        net_fn_for(fm, params, "DiT"),
        jg,
        noise_level_fn=diffusion.noise_level,
        guided_channels=4,
    )
    noise_j = jnp.asarray(noise.numpy().transpose(0, 1, 3, 4, 2))
    _, traj = jax.jit(
        lambda x, y, z: sampling.sample_ddpm(
            pred_fn, None, x, y, diffusion=diffusion, noise=z, return_trajectory=True
        )
    )(nhwc(x0), jnp.asarray(y.numpy()), noise_j)
    assert traj["x"].shape[0] == ref.shape[0] == steps + 1
    errs = [relerr(nchw(traj["x"][k]), ref[k]) for k in range(steps + 1)]
    print(f"PARITY DiT DDPM [{case}]: per-step relerr max={max(errs):.2e}")
    assert max(errs) <= SAMPLER_TOL
