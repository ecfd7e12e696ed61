"""Samplers against closed forms for Gaussian data (no networks).

SiT time: t = 0 noise, t = 1 data. DiT: integer step, 0 = least noise.

For data x1 ~ N(mu, s^2 I) and an interpolant x_t = alpha x1 + sigma x0, x_t ~ N(alpha mu, v_t I)
with v_t = alpha^2 s^2 + sigma^2, and (with r = x - alpha mu)

    velocity u(x, t) = alpha' mu + (alpha' alpha s^2 + sigma' sigma) / v_t * r
    score            = -r / v_t
    noise E[x0|x]    = sigma r / v_t

The probability-flow ODE maps x(t0) to x(t) = alpha(t) mu + sqrt(v_t) (x(t0) - alpha0 mu)/sqrt(v0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.diffusion.gaussian import create_diffusion, space_timesteps
from nag_jax.diffusion.transport import Transport
from nag_jax.sampling import sample_ddim, sample_ddpm, sample_ode, sample_sde, sde_grid
from tests.helpers import linear_em_reference

MU, S = 0.5, 0.6


def gaussian_fields(transport, x, t, mu=MU, s=S):
    """Exact velocity / score / noise of the interpolant for N(mu, s^2) data."""
    a, sg, da, ds = transport.alpha_sigma(t)
    v = a**2 * s**2 + sg**2
    r = x - a * mu
    return {
        "velocity": da * mu + (da * a * s**2 + ds * sg) / v * r,
        "score": -r / v,
        "noise": sg * r / v,
    }


def exact_pred_fn(transport, mu=MU, s=S):
    def pred_fn(x, t, y):
        del y
        return gaussian_fields(transport, x, t, mu, s)[transport.prediction]

    return pred_fn


def ode_exact_endpoint(transport, x_init, mu, s):
    t0, t1 = transport.sample_interval(sde=False)
    a0, s0, _, _ = (float(q) for q in transport.alpha_sigma(t0))
    a1, s1, _, _ = (float(q) for q in transport.alpha_sigma(t1))
    v0, v1 = a0**2 * s**2 + s0**2, a1**2 * s**2 + s1**2
    return a1 * mu + np.sqrt(v1) * (np.asarray(x_init, np.float64) - a0 * mu) / np.sqrt(v0)


def _ode_errors(transport, method, steps, mu=0.5, s=0.2):
    x_init = jax.random.normal(jax.random.key(0), (64, 2, 2, 1))
    exact = ode_exact_endpoint(transport, x_init, mu, s)
    pf = exact_pred_fn(transport, mu, s)
    errs = []
    for n in steps:
        fn = jax.jit(
            lambda x, n=n: sample_ode(pf, x, None, transport=transport, num_steps=n, method=method)
        )
        errs.append(float(np.max(np.abs(np.asarray(fn(x_init), np.float64) - exact))))
    return np.array(errs)


@pytest.mark.parametrize("path", ["linear", "gvp"])
@pytest.mark.parametrize("method,order", [("euler", 1.0), ("heun", 2.0)])
def test_ode_converges_to_exact_transport_map_with_expected_order(path, method, order):
    """Doubling the steps divides the endpoint error by ~2 (Euler) / ~4 (Heun)."""
    tr = Transport(path, "velocity")
    assert tr.sample_interval(sde=False) == (0.0, 1.0)
    errs = _ode_errors(tr, method, [16, 32, 64])
    measured = np.log2(errs[:-1] / errs[1:])
    assert np.all(np.abs(measured - order) < 0.25), (errs, measured)
    assert errs[-1] < (0.03 if method == "euler" else 2e-3)


def test_ode_with_score_and_noise_predictions_matches_velocity():
    """Converted predictions drive the same ODE (interval [eps, 1 - eps] for score/noise)."""
    x_init = jax.random.normal(jax.random.key(3), (8, 2, 2, 1))
    for pred in ["score", "noise"]:
        tr = Transport("linear", pred)
        assert tr.sample_interval(sde=False) == pytest.approx((1e-3, 1 - 1e-3))
        out = sample_ode(exact_pred_fn(tr), x_init, None, transport=tr, num_steps=64, method="heun")
        exact = ode_exact_endpoint(tr, x_init, MU, S)
        np.testing.assert_allclose(np.asarray(out), exact, atol=2e-3)


def test_ode_trajectory_shapes_and_endpoints():
    tr = Transport("linear", "velocity")
    x_init = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
    x, traj = sample_ode(
        exact_pred_fn(tr), x_init, None, transport=tr, num_steps=5, return_trajectory=True
    )
    assert traj["x"].shape == (6, 3, 4, 4, 2) and traj["t"].shape == (6,)
    np.testing.assert_array_equal(traj["x"][0], x_init)
    np.testing.assert_array_equal(traj["x"][-1], x)
    np.testing.assert_allclose(traj["t"], np.linspace(0, 1, 6), atol=1e-7)


def _sde_expected_after_mean_step(tr, mu, s, h=0.04):
    """Exact law after the deterministic 'Mean' last step from the exact marginal at 1 - h."""
    t1 = 1.0 - h
    a, sg, da, ds = (float(q) for q in tr.alpha_sigma(t1))
    v = a * a * s * s + sg * sg
    c = (da * a * s * s + ds * sg) / v  # velocity slope in r
    w = float(tr.diffusion_coefficient(t1, "sigma"))
    slope = 1.0 + h * (c - w / v)  # x_f = x + h (da mu + (c - w/v) r)
    return a * mu + h * da * mu, slope**2 * v


@pytest.mark.parametrize(
    "path,pred,method,steps",
    [
        ("linear", "velocity", "euler", 100),
        ("gvp", "velocity", "heun", 40),
        ("vp", "noise", "euler", 100),
    ],
)
def test_sde_endpoint_matches_data_distribution(path, pred, method, steps):
    tr = Transport(path, pred)
    x_init = jax.random.normal(jax.random.key(0), (4000, 2, 2, 1))
    fn = jax.jit(
        lambda k, x: sample_sde(
            exact_pred_fn(tr), k, x, None, transport=tr, num_steps=steps, method=method
        )
    )
    out = np.asarray(fn(jax.random.key(1), x_init), np.float64)
    assert np.all(np.isfinite(out))
    exp_mean, exp_var = _sde_expected_after_mean_step(tr, MU, S)
    # The exact law is N(mu, s^2) up to the deterministic last step (~1% on the variance).
    assert abs(exp_mean - MU) < 0.01 and abs(exp_var - S**2) < 0.03
    n = out.size
    se_mean, se_var = np.sqrt(exp_var / n), exp_var * np.sqrt(2.0 / n)
    assert abs(out.mean() - exp_mean) < 5 * se_mean + 0.005, (out.mean(), exp_mean)
    assert abs(out.var() - exp_var) < 5 * se_var + 0.01, (out.var(), exp_var)


def test_sde_grid_matches_release_layout():
    """linspace(0, 0.96, 250): 249 stochastic steps then a 0.04 'Mean' step."""
    tr = Transport("linear", "velocity")
    ts, lss = sde_grid(tr, 250)
    assert ts.shape == (250,) and lss == 0.04
    np.testing.assert_allclose(ts, np.linspace(0.0, 0.96, 250), atol=1e-7)
    vp = Transport("vp", "velocity")
    assert sde_grid(vp, 10, last_step=None)[0][-1] == np.float32(1 - 1e-3)
    with pytest.raises(ValueError, match="SBDM"):
        sde_grid(tr, 10, diffusion_form="SBDM")


def linear_gaussian_velocity(x, t, mu=MU, s=S):
    """The exact velocity of the Linear path (alpha = t, sigma = 1 - t) for N(mu, s^2) data,
    numpy: mu + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x - t mu)."""
    return mu + (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2) * (x - t * mu)


def test_sde_one_prediction_call_per_euler_step_and_injected_noise():
    """Euler-Maruyama traces pred_fn once per scan step (+1 last step); injected noise
    reproduces a hand-rolled loop of the release's definition."""
    tr = Transport("linear", "velocity")
    calls = []

    def pf(x, t, y):
        calls.append(1)
        return 0.3 * x - 0.1 * y[:, None, None, None] + t

    n_steps, shape = 6, (2, 3, 3, 1)
    y = jnp.array([1.0, -2.0])
    x_init = jax.random.normal(jax.random.key(0), shape)
    noise = jax.random.normal(jax.random.key(1), (n_steps - 1,) + shape)
    fn = jax.jit(
        lambda x, y, z: sample_sde(
            pf, None, x, y, transport=tr, num_steps=n_steps, noise=z, return_trajectory=True
        )
    )
    out, traj = fn(x_init, y, noise)
    assert len(calls) == 2  # one in the scanned step body, one for the last step
    yy = np.asarray(y, np.float64)[:, None, None, None]
    x = linear_em_reference(lambda x, t: 0.3 * x - 0.1 * yy + t, x_init, noise, n_steps)
    np.testing.assert_allclose(np.asarray(out), x, rtol=1e-4, atol=1e-5)
    assert traj["x"].shape == (n_steps + 1,) + shape
    np.testing.assert_allclose(traj["x"][-1], out)
    np.testing.assert_allclose(traj["t"][-1], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="noise has shape"):
        sample_sde(pf, None, x_init, y, transport=tr, num_steps=n_steps, noise=noise[:-1])


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_key_determines_the_samples_as_documented(kind):
    """The samples of a key equal a float64 numpy loop fed with the draws the key stands for:
    the start noise normal(key), and for the SDE step k's noise normal(split(key_sde, S)[k])
    (S = num_steps - 1 stochastic steps, as nag_jax.sampling documents). Another key differs."""
    tr = Transport("linear", "velocity")
    pf = exact_pred_fn(tr)
    shape, n_steps = (4, 4, 4, 2), 10

    def run(key):
        x_init = jax.random.normal(key, shape)
        if kind == "ode":
            return sample_ode(pf, x_init, None, transport=tr, num_steps=n_steps, method="heun")
        return sample_sde(
            pf, jax.random.fold_in(key, 1), x_init, None, transport=tr, num_steps=n_steps
        )

    fn = jax.jit(run)
    key = jax.random.key(7)
    x_init = np.asarray(jax.random.normal(key, shape), np.float64)
    if kind == "ode":  # Heun on linspace(0, 1, n_steps + 1)
        ts = np.linspace(0.0, 1.0, n_steps + 1)
        x = x_init
        for t, t_next in zip(ts[:-1], ts[1:]):
            dt = t_next - t
            k1 = linear_gaussian_velocity(x, t)
            x = x + 0.5 * dt * (k1 + linear_gaussian_velocity(x + dt * k1, t_next))
    else:
        step_keys = jax.random.split(jax.random.fold_in(key, 1), n_steps - 1)
        noise = [np.asarray(jax.random.normal(k, shape)) for k in step_keys]
        x = linear_em_reference(linear_gaussian_velocity, x_init, noise, n_steps)
    np.testing.assert_allclose(np.asarray(fn(key)), x, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(fn(key)), np.asarray(fn(jax.random.key(8))))


# --------------------------------------------------------------------------------------- DiT
def _ref_respaced(respacing):
    """Independent numpy float64: base alphabar, kept steps, respaced arrays (definitions)."""
    base_ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    keep = np.array(space_timesteps(1000, respacing))
    ac = base_ac[keep]
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    betas = 1.0 - ac / ac_prev
    post_var = betas * (1 - ac_prev) / (1 - ac)
    return {
        "base_ac": base_ac,
        "keep": keep,
        "ac": ac,
        "ac_prev": ac_prev,
        "betas": betas,
        "post_var": post_var,
        "min_log": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "max_log": np.log(betas),
        "coef1": betas * np.sqrt(ac_prev) / (1 - ac),
        "coef2": (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac),
    }


def ddpm_exact_pred_fn(respacing, mu=MU, s=S):
    """Exact eps for N(mu, s^2) data at the ORIGINAL step t, and the variance value v that
    makes the learned-range kernel the exact reverse kernel of the respaced chain."""
    r = {k: jnp.asarray(v) for k, v in _ref_respaced(respacing).items()}

    def pred_fn(x, t, y):
        del y
        ti = t.astype(jnp.int32)
        ab = r["base_ac"][ti].astype(jnp.float32)
        j = jnp.searchsorted(r["keep"], ti)
        denom = ab * s**2 + 1 - ab
        eps = jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / denom
        var_x0 = s**2 * (1 - ab) / denom
        opt = r["post_var"][j] + r["coef1"][j] ** 2 * var_x0
        f = (jnp.log(opt) - r["min_log"][j]) / (r["max_log"][j] - r["min_log"][j])
        v = jnp.where(j == 0, 0.0, 2 * f - 1).astype(jnp.float32)
        return jnp.concatenate([eps, jnp.broadcast_to(v, x.shape)], -1)

    return pred_fn


def test_ddpm_exact_eps_reproduces_data_distribution():
    d = create_diffusion("50")
    x_init = jax.random.normal(jax.random.key(0), (4000, 2, 2, 1))
    fn = jax.jit(lambda k, x: sample_ddpm(ddpm_exact_pred_fn("50"), k, x, None, diffusion=d))
    out = np.asarray(fn(jax.random.key(1), x_init), np.float64)
    n = out.size
    se_mean, se_var = S / np.sqrt(n), S**2 * np.sqrt(2.0 / n)
    assert abs(out.mean() - MU) < 5 * se_mean + 2e-3, out.mean()
    assert abs(out.var() - S**2) < 5 * se_var + 2e-3, out.var()


def test_ddim_deterministic_converges_to_exact_flow_first_order():
    """eta = 0 DDIM is Euler on the probability-flow ODE in (x / sqrt(abar), sqrt(1/abar - 1)):
    for Gaussian data its endpoint tends to the exact flow map mu + s z at order 1."""
    x_init = jax.random.normal(jax.random.key(0), (256, 2, 2, 1))
    errs = []
    for r in ["ddim25", "ddim50", "ddim100"]:
        d = create_diffusion(r)
        out = jax.jit(lambda x, d=d, r=r: sample_ddim(ddpm_exact_pred_fn(r), x, None, diffusion=d))(
            x_init
        )
        ab_T = _ref_respaced(r)["ac"][-1]
        z = (np.asarray(x_init, np.float64) - np.sqrt(ab_T) * MU) / np.sqrt(ab_T * S**2 + 1 - ab_T)
        errs.append(np.abs(np.asarray(out, np.float64) - (MU + S * z)).max())
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), (errs, ratios)
    assert errs[-1] < 0.07


def toy_ddpm_pred_fn(x, t, y):
    """eps = 0.2 x + 1e-3 t and a variance value v = tanh(0.5 x - 2e-3 t): depends on t, so a
    wrong (respaced instead of original) step is caught."""
    del y
    return jnp.concatenate([0.2 * x + 1e-3 * t, jnp.tanh(0.5 * x - 2e-3 * t)], -1)


def toy_ddpm_reference(r, x_init, noise, sampler, eta=0.0):
    """The release's DDPM ("ddpm") or DDIM ("ddim_eta") loop over the 10 respaced steps of
    ``r = _ref_respaced("10")`` with ``toy_ddpm_pred_fn``, float64 numpy; ``noise[k]`` is used
    at the k-th step of the loop (respaced index 9 - k)."""
    x = np.asarray(x_init, np.float64)
    for k, i in enumerate(range(9, -1, -1)):
        t = float(r["keep"][i])
        eps = 0.2 * x + 1e-3 * t
        v = np.tanh(0.5 * x - 2e-3 * t)
        x0 = np.sqrt(1 / r["ac"][i]) * x - np.sqrt(1 / r["ac"][i] - 1) * eps
        z = np.asarray(noise[k], np.float64)
        if sampler == "ddpm":
            mean = r["coef1"][i] * x0 + r["coef2"][i] * x
            f = (v + 1) / 2
            logvar = f * r["max_log"][i] + (1 - f) * r["min_log"][i]
            x = mean + (i != 0) * np.exp(0.5 * logvar) * z
        else:
            a, ap = r["ac"][i], r["ac_prev"][i]
            sig = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
            x = x0 * np.sqrt(ap) + np.sqrt(1 - ap - sig**2) * eps + (i != 0) * sig * z
    return x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta"])
def test_ddpm_ddim_hand_rolled_reference_with_injected_noise(sampler):
    """One step of the release's loop in float64 numpy, with the same injected noise; the
    pred_fn depends on t, so a wrong (respaced instead of original) step is caught."""
    respacing, eta = "10", 0.7
    d = create_diffusion(respacing)
    r = _ref_respaced(respacing)
    shape = (2, 3, 3, 2)
    x_init = jax.random.normal(jax.random.key(0), shape)
    noise = jax.random.normal(jax.random.key(1), (10,) + shape)
    seen = []

    def pf(x, t, y):
        seen.append(t.shape)
        return toy_ddpm_pred_fn(x, t, y)

    if sampler == "ddpm":
        fn = lambda x, z: sample_ddpm(
            pf, None, x, None, diffusion=d, noise=z, return_trajectory=True
        )
    else:
        fn = lambda x, z: sample_ddim(
            pf, x, None, diffusion=d, eta=eta, noise=z, return_trajectory=True
        )
    out, traj = jax.jit(fn)(x_init, noise)
    assert seen == [()]  # scalar t, traced once in the scan body
    x = toy_ddpm_reference(r, x_init, noise, sampler, eta)
    np.testing.assert_allclose(np.asarray(out), x, rtol=1e-4, atol=1e-4)
    assert traj["x"].shape == (11,) + shape
    np.testing.assert_array_equal(traj["t"], np.append(r["keep"][::-1], -1.0).astype(np.float32))


def test_ddpm_key_determines_the_samples_as_documented():
    """sample_ddpm with a key equals the numpy loop fed normal(split(key, T')[k]) at step k (as
    nag_jax.sampling documents); another key differs; injected noise of a wrong shape is named."""
    d = create_diffusion("10")
    shape = (2, 4, 4, 1)
    fn = jax.jit(
        lambda k: sample_ddpm(toy_ddpm_pred_fn, k, jax.random.normal(k, shape), None, diffusion=d)
    )
    key = jax.random.key(3)
    noise = [np.asarray(jax.random.normal(k, shape)) for k in jax.random.split(key, 10)]
    expected = toy_ddpm_reference(_ref_respaced("10"), jax.random.normal(key, shape), noise, "ddpm")
    np.testing.assert_allclose(np.asarray(fn(key)), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(fn(key)), np.asarray(fn(jax.random.key(4))))
    with pytest.raises(ValueError, match="noise has shape"):
        sample_ddpm(
            toy_ddpm_pred_fn,
            None,
            jnp.zeros(shape),
            None,
            diffusion=d,
            noise=jnp.zeros((9,) + shape),
        )


@pytest.mark.parametrize("kind", ["sde", "ddpm"])
def test_per_image_keys_make_noise_independent_of_batch_layout(kind):
    """With (N,) per-image keys, image i's sample depends on its own key only."""
    keys = jax.random.split(jax.random.key(5), 4)
    x_init = jax.random.normal(jax.random.key(6), (4, 2, 2, 1))
    if kind == "sde":
        tr = Transport("linear", "velocity")
        fn = lambda k, x: sample_sde(exact_pred_fn(tr), k, x, None, transport=tr, num_steps=8)
    else:
        d = create_diffusion("10")
        fn = lambda k, x: sample_ddpm(ddpm_exact_pred_fn("10"), k, x, None, diffusion=d)
    full = np.asarray(jax.jit(fn)(keys, x_init))
    head = np.asarray(jax.jit(fn)(keys[:2], x_init[:2]))
    tail = np.asarray(jax.jit(fn)(keys[2:][::-1], x_init[2:][::-1]))
    np.testing.assert_allclose(full[:2], head, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(full[2:][::-1], tail, rtol=1e-6, atol=1e-6)
    assert not np.allclose(full[0], full[1])
