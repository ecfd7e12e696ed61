"""Transport (SiT) and Gaussian diffusion (DiT) against closed forms / independent numpy.

SiT time: t = 0 noise, t = 1 data. DiT: integer step, 0 = least noise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.diffusion import paths
from nag_jax.diffusion.gaussian import create_diffusion, space_timesteps
from nag_jax.diffusion.transport import Transport

PATHS = ["linear", "gvp", "vp"]
PREDS = ["velocity", "score", "noise"]
MU, S = 0.3, 0.7


def _gauss(tr, x, t, mu=MU, s=S):
    """Exact fields of the interpolant for N(mu, s^2) data (numpy float64 from alpha/sigma)."""
    a, sg, da, ds = (np.asarray(q, np.float64)[:, None, None, None] for q in tr.alpha_sigma(t))
    x = np.asarray(x, np.float64)
    v = a**2 * s**2 + sg**2
    r = x - a * mu
    return {
        "velocity": da * mu + (da * a * s**2 + ds * sg) / v * r,
        "score": -r / v,
        "noise": sg * r / v,
        "data": mu + a * s**2 / v * r,
    }


# ------------------------------------------------------------------------------- transport
def test_transport_release_defaults_and_intervals():
    lin_v, lin_n, gvp_s, vp_v = (
        Transport("Linear", "velocity"),
        Transport("linear", "noise"),
        Transport("GVP", "score"),
        Transport("VP", "velocity"),
    )
    assert (lin_v.train_eps, lin_v.sample_eps) == (0.0, 0.0)
    assert (lin_n.train_eps, lin_n.sample_eps) == (1e-3, 1e-3)
    assert (gvp_s.train_eps, gvp_s.sample_eps) == (1e-3, 1e-3)
    assert (vp_v.train_eps, vp_v.sample_eps) == (1e-5, 1e-3)
    assert lin_v.train_interval() == (0.0, 1.0) and lin_v.sample_interval(False) == (0.0, 1.0)
    assert lin_n.train_interval() == (1e-3, 1 - 1e-3)
    assert vp_v.train_interval() == (0.0, 1 - 1e-5)
    assert vp_v.sample_interval(False) == (0.0, 1 - 1e-3)
    # SDE with a 0.04 last step: t1 = 0.96; t0 = eps only for SBDM / non-velocity.
    assert lin_v.sample_interval(True, last_step_size=0.04) == (0.0, 0.96)
    assert lin_n.sample_interval(True, last_step_size=0.04) == (1e-3, 0.96)
    assert Transport("linear", "velocity", sample_eps=0.01).sample_interval(
        True, diffusion_form="SBDM", last_step_size=0.0
    ) == (0.01, 0.99)
    with pytest.raises(ValueError, match="path"):
        Transport("cosine")
    with pytest.raises(ValueError, match="prediction"):
        Transport("linear", "x0")
    t = lin_v.sample_t(jax.random.key(0), 4096)
    assert t.shape == (4096,) and float(t.min()) >= 0 and float(t.max()) <= 1
    t = lin_n.sample_t(jax.random.key(0), 4096)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1 - 1e-3
    assert abs(float(t.mean()) - 0.5) < 0.02
    np.testing.assert_allclose(lin_v.noise_level(jnp.array([0.0, 0.25, 1.0])), [1, 0.75, 0])


@pytest.mark.parametrize("path", PATHS)
def test_path_classes_stable_forms_match_the_coefficients(path):
    """Each path is its own class (SiT's path.py); its stable forms of ``a = alpha'/alpha`` and
    ``var = a sigma^2 - sigma sigma'`` (VP: beta(t) / 2 for both) agree with the coefficients,
    evaluated in float64 numpy; ``drift`` and the score <-> velocity maps are inverse."""
    tr = Transport(path.upper())
    cls = {"linear": paths.Linear, "gvp": paths.GVP, "vp": paths.VP}[path]
    assert type(tr.plan) is cls and tr.plan.name == tr.path == path
    t = jnp.linspace(0.05, 0.95, 7)
    a, s, da, ds = (np.asarray(q, np.float64) for q in tr.plan.alpha_sigma(t))
    np.testing.assert_allclose(tr.plan.d_log_alpha(t), da / a, rtol=1e-5)
    np.testing.assert_allclose(tr.plan.drift_var(t), da / a * s**2 - s * ds, rtol=1e-5)
    if path == "vp":
        beta = 0.1 + (1 - np.asarray(t, np.float64)) * 19.9
        np.testing.assert_allclose(tr.plan.drift_var(t), beta / 2, rtol=1e-6)
    np.testing.assert_allclose(tr.plan.diffusion(t, "SBDM"), tr.plan.drift_var(t), rtol=1e-6)
    np.testing.assert_allclose(tr.plan.diffusion(t, "sigma", 2.0), 2 * s, rtol=1e-6)
    x = jax.random.normal(jax.random.key(1), (7, 2, 2, 1))
    te, score = t[:, None, None, None], jax.random.normal(jax.random.key(2), x.shape)
    drift_mean, drift_var = tr.plan.drift(x, te)
    np.testing.assert_allclose(drift_mean, (da / a)[:, None, None, None] * x, rtol=1e-5)
    v = tr.plan.velocity_from_score(score, x, te)
    np.testing.assert_allclose(v, drift_mean + drift_var * score, rtol=1e-6)
    np.testing.assert_allclose(tr.plan.score_from_velocity(v, x, te), score, atol=2e-4)
    with pytest.raises(ValueError, match="expected one of"):
        paths.make_path("cosine")


@pytest.mark.parametrize("path", PATHS)
def test_schedule_derivatives_and_endpoints(path):
    tr = Transport(path)
    t = jnp.linspace(0.05, 0.95, 7)
    a, s, da, ds = tr.alpha_sigma(t)
    da_ad = jax.vmap(jax.grad(lambda u: tr.alpha_sigma(u)[0]))(t)
    ds_ad = jax.vmap(jax.grad(lambda u: tr.alpha_sigma(u)[1]))(t)
    np.testing.assert_allclose(da, da_ad, rtol=1e-4)
    np.testing.assert_allclose(ds, ds_ad, rtol=1e-4, atol=1e-6)
    a1, s1, _, _ = tr.alpha_sigma(jnp.float32(1.0))
    assert abs(float(a1) - 1) < 1e-6 and abs(float(s1)) < 1e-3
    if path != "vp":
        a0, s0, _, _ = tr.alpha_sigma(jnp.float32(0.0))
        assert abs(float(a0)) < 1e-7 and abs(float(s0) - 1) < 1e-7
    else:
        # VP: log alpha(t) = -1/2 int_t^1 beta(u) du, beta(u) = 0.1 + (1 - u) * 19.9, VP.
        tt = np.asarray(t, np.float64)
        integral = np.array(
            [
                np.trapezoid(0.1 + (1 - u) * 19.9, u)
                for u in (np.linspace(ti, 1.0, 20001) for ti in tt)
            ]
        )
        np.testing.assert_allclose(np.asarray(a), np.exp(-0.5 * integral), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(s) ** 2, 1.0, atol=1e-6)
    if path == "gvp":
        np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(s) ** 2, 1.0, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("pred", PREDS)
def test_conversions_match_exact_gaussian_fields(path, pred):
    """Given the exact prediction of one type, the conversions give the exact other fields."""
    tr = Transport(path, pred)
    t = jnp.array([0.02, 0.2, 0.5, 0.8, 0.97])
    x = jax.random.normal(jax.random.key(1), (5, 3, 3, 2)) * 1.3 + 0.2
    exact = _gauss(tr, x, t)
    p = jnp.asarray(exact[pred], jnp.float32)
    tol = {"rtol": 2e-4, "atol": 2e-4}
    np.testing.assert_allclose(tr.velocity_from(p, x, t), exact["velocity"], **tol)
    np.testing.assert_allclose(tr.score_from(p, x, t), exact["score"], **tol)
    np.testing.assert_allclose(tr.noise_from(p, x, t), exact["noise"], **tol)
    np.testing.assert_allclose(tr.data_from(p, x, t), exact["data"], **tol)
    # scalar t broadcasts like a constant vector
    np.testing.assert_allclose(
        tr.velocity_from(p[:1], x[:1], t[2]), tr.velocity_from(p[:1], x[:1], t[2:3]), rtol=1e-6
    )


def test_sde_drift_sigma_form_linear_matches_release_closed_form():
    """Linear + velocity, w = 1 - t: drift = v + w * score = (1 + t) v - x."""
    tr = Transport("linear", "velocity")
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    v = jax.random.normal(jax.random.key(1), (4, 2, 2, 1))
    for t in [0.0, 0.3, 0.96]:
        drift, w = tr.sde_drift(v, x, jnp.float32(t), "sigma")
        np.testing.assert_allclose(drift, (1 + t) * v - x, rtol=1e-5, atol=1e-6)
        assert abs(float(w) - (1 - t)) < 1e-7
    np.testing.assert_allclose(tr.diffusion_coefficient(0.25, "SBDM"), 1 / 0.25 * 0.75**2 + 0.75)
    np.testing.assert_allclose(tr.diffusion_coefficient(0.25, "constant", 2.0), 2.0)
    with pytest.raises(ValueError, match="diffusion_form"):
        tr.diffusion_coefficient(0.5, "cubic")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("pred", PREDS)
def test_transport_loss_zero_for_exact_target(path, pred):
    tr = Transport(path, pred)
    k0, k1, k2 = jax.random.split(jax.random.key(2), 3)
    x1 = jax.random.normal(k0, (6, 4, 4, 3))
    x0 = jax.random.normal(k1, (6, 4, 4, 3))
    t = tr.sample_t(k2, 6)
    xt, ut = tr.interpolate(x0, x1, t)
    a, s, da, ds = (q[:, None, None, None] for q in tr.alpha_sigma(t))
    np.testing.assert_allclose(xt, a * x1 + s * x0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ut, da * x1 + ds * x0, rtol=1e-6, atol=1e-6)
    target = {"velocity": ut, "noise": x0, "score": -x0 / s}[pred]
    np.testing.assert_allclose(tr.target(x0, x1, t), target, rtol=1e-6, atol=1e-6)
    loss = tr.loss(target, x0, x1, t, xt)
    assert loss.shape == (6,)
    np.testing.assert_allclose(loss, 0.0, atol=1e-10)
    bumped = tr.loss(target + 0.1, x0, x1, t, xt)
    scale = 1.0 if pred != "score" else np.asarray(s).reshape(-1) ** 2
    np.testing.assert_allclose(bumped, 0.01 * scale, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction shape"):
        tr.loss(jnp.concatenate([target, target], -1), x0, x1, t)


# ------------------------------------------------------------------------------- gaussian
def _reference_schedule(keep=None, T=1000):
    """Plain numpy from the DDPM definitions (float64), independent of the module."""
    betas = np.linspace(1e-4, 0.02, T)
    ac = np.ones(T)
    acc = 1.0
    for k in range(T):
        acc *= 1.0 - betas[k]
        ac[k] = acc
    if keep is not None:
        ac = ac[list(keep)]
        betas = np.array([1 - ac[0]] + [1 - ac[j] / ac[j - 1] for j in range(1, len(ac))])
    return betas, ac


def test_space_timesteps_match_release_definition():
    keep = space_timesteps(1000, "250")
    assert len(keep) == 250
    assert keep[:3] == (0, 4, 8) and keep[-3:] == (991, 995, 999)
    # Definition: round(k * 999 / 249), equal strides of the single 1000-step section.
    assert keep == tuple(int(v) for v in np.round(np.arange(250) * 999 / 249))
    assert space_timesteps(1000, "ddim50") == tuple(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == tuple(range(0, 1000, 4))
    assert space_timesteps(1000, "") == tuple(range(1000))
    # release docstring example: 300 steps as [10, 15, 20]
    three = space_timesteps(300, "10,15,20")
    assert len(three) == 45 and three[0] == 0 and three[9] == 99 and three[10] == 100
    assert three[-1] == 299
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim300")


def test_betas_and_derived_arrays_match_definition():
    d = create_diffusion("")
    betas, ac = _reference_schedule()
    np.testing.assert_allclose(d.betas, betas, rtol=1e-12)
    assert d.betas.dtype == np.float64 and d.num_timesteps == 1000
    np.testing.assert_allclose(d.alphas_cumprod, ac, rtol=1e-12)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    np.testing.assert_allclose(d.posterior_variance, post_var, rtol=1e-10, atol=1e-30)
    assert d.posterior_variance[0] == 0.0
    np.testing.assert_allclose(
        d.posterior_log_variance_clipped,
        np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        d.posterior_mean_coef1, betas * np.sqrt(ac_prev) / (1 - ac), rtol=1e-10
    )
    np.testing.assert_allclose(
        d.posterior_mean_coef2, (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac), rtol=1e-10
    )
    np.testing.assert_array_equal(d.timestep_map, np.arange(1000))
    np.testing.assert_allclose(d.noise_level(jnp.array([0, 499, 999])), [0.001, 0.5, 1.0])


@pytest.mark.parametrize("respacing", ["250", "ddim50", "10,15,20"])
def test_respaced_betas_and_timestep_map(respacing):
    d = create_diffusion(respacing)
    keep = space_timesteps(1000, respacing)
    betas, ac = _reference_schedule(keep)
    np.testing.assert_array_equal(d.timestep_map, np.array(keep))
    np.testing.assert_allclose(d.betas, betas, rtol=1e-10)
    # the defining property: the respaced process has the original marginals at kept steps
    np.testing.assert_allclose(d.alphas_cumprod, ac, rtol=1e-10)
    i = jnp.array([0, 1, d.num_timesteps - 1])
    np.testing.assert_array_equal(d.model_t(i), np.array(keep)[[0, 1, -1]].astype(np.float32))
    assert d.model_t(i).dtype == jnp.float32


def test_posterior_matches_bayes_closed_form():
    """q(x_{i-1} | x_i, x_0) from Bayes' rule on the two Gaussian factors (respaced)."""
    d = create_diffusion("50")
    betas, ac = _reference_schedule(space_timesteps(1000, "50"))
    i = np.array([1, 7, 25, 49])
    x0 = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
    xt = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
    ap = ac[i - 1][:, None, None, None]
    b = betas[i][:, None, None, None]
    prec = 1 / (1 - ap) + (1 - b) / b
    var = 1 / prec
    mean = var * (np.sqrt(ap) * np.asarray(x0) / (1 - ap) + np.sqrt(1 - b) * np.asarray(xt) / b)
    m, v, logv = d.q_posterior_mean_variance(x0, xt, jnp.asarray(i))
    np.testing.assert_allclose(m, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v)[:, 0, 0, 0], var[:, 0, 0, 0], rtol=1e-4)
    np.testing.assert_allclose(np.exp(np.asarray(logv))[:, 0, 0, 0], var[:, 0, 0, 0], rtol=1e-4)
    # q_sample
    noise = jax.random.normal(jax.random.key(2), x0.shape)
    xs = d.q_sample(x0, jnp.asarray(i), noise)
    a_i = ac[i][:, None, None, None]
    np.testing.assert_allclose(xs, np.sqrt(a_i) * x0 + np.sqrt(1 - a_i) * noise, rtol=1e-5)


def test_learned_range_variance_and_eps_mean():
    d = create_diffusion("")
    x = jax.random.normal(jax.random.key(0), (3, 2, 2, 4))
    eps = jax.random.normal(jax.random.key(1), (3, 2, 2, 4))
    i = jnp.array([0, 10, 999])
    ii = np.asarray(i)
    for v, expect in [(1.0, np.log(d.betas[ii])), (-1.0, d.posterior_log_variance_clipped[ii])]:
        out = jnp.concatenate([eps, jnp.full_like(eps, v)], -1)
        p = d.p_mean_variance(out, x, i)
        np.testing.assert_allclose(np.asarray(p["log_variance"])[:, 0, 0, 0], expect, rtol=1e-5)
    out = jnp.concatenate([eps, jnp.zeros_like(eps)], -1)
    p = d.p_mean_variance(out, x, i)
    mid = 0.5 * (np.log(d.betas[ii]) + d.posterior_log_variance_clipped[ii])
    np.testing.assert_allclose(np.asarray(p["log_variance"])[:, 0, 0, 0], mid, rtol=1e-5)
    # eps parameterisation of the mean (DDPM eq. 11)
    a = d.alphas_cumprod[ii][:, None, None, None]
    b = d.betas[ii][:, None, None, None]
    mean = (np.asarray(x) - b / np.sqrt(1 - a) * np.asarray(eps)) / np.sqrt(1 - b)
    np.testing.assert_allclose(p["mean"], mean, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        d.p_mean_variance(eps, x, i)


def test_vb_term_nonnegative_zero_at_truth_and_stop_gradient():
    d = create_diffusion("")
    n = 8
    k = jax.random.split(jax.random.key(3), 4)
    x0 = jnp.clip(jax.random.normal(k[0], (n, 4, 4, 2)) * 0.5, -1, 1)
    noise = jax.random.normal(k[1], x0.shape)
    i = jnp.array([0, 1, 2, 50, 300, 600, 998, 999])
    xt = d.q_sample(x0, i, noise)
    rand_out = jax.random.normal(k[2], (n, 4, 4, 4))
    vb_fn = jax.jit(d.vb_terms_bpd)
    vb = vb_fn(rand_out, x0, xt, i)
    assert vb.shape == (n,) and bool(jnp.all(vb >= 0)) and bool(jnp.all(vb[1:] > 0))
    # exact eps + posterior variance (v = -1): the KL terms vanish (i > 0)
    exact = jnp.concatenate([noise, -jnp.ones_like(noise)], -1)
    vb0 = vb_fn(exact, x0, xt, i)
    np.testing.assert_allclose(vb0[1:], 0.0, atol=2e-4)
    # i = 0: decoder NLL in bits of a 2/255 bin, >= 0
    assert float(vb0[0]) >= 0
    terms = jax.jit(d.training_losses)(rand_out, x0, xt, i, noise)
    np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["vb"], rtol=1e-6)
    np.testing.assert_allclose(
        terms["mse"],
        np.mean((np.asarray(noise) - np.asarray(rand_out[..., :2])) ** 2, (1, 2, 3)),
        rtol=1e-5,
    )
    # vb does not reach the eps half: d vb / d out[..., :C] == 0, d vb / d v != 0
    g = jax.jit(jax.grad(lambda o: d.training_losses(o, x0, xt, i, noise)["vb"].sum()))(rand_out)
    assert float(jnp.abs(g[..., :2]).max()) == 0.0
    assert float(jnp.abs(g[..., 2:]).max()) > 0.0
    # rescale_learned_sigmas: vb * T'/1000 (here 250/1000)
    d250 = create_diffusion("250", rescale_learned_sigmas=True)
    d250_plain = create_diffusion("250")
    ii = jnp.array([0, 3, 100, 249, 5, 6, 7, 8])
    a = jax.jit(d250.training_losses)(rand_out, x0, xt, ii, noise)["vb"]
    b = jax.jit(d250_plain.training_losses)(rand_out, x0, xt, ii, noise)["vb"]
    np.testing.assert_allclose(a, 0.25 * b, rtol=1e-6)


def test_discretized_nll_matches_normal_cdf_bins():
    """Away from the edges, exp(log-lik) is the Gaussian mass of the 2/255 bin."""
    from nag_jax.diffusion.gaussian import discretized_gaussian_log_likelihood

    x = jnp.array([-0.5, 0.0, 0.3])
    mean = jnp.array([-0.45, 0.01, 0.2])
    log_scale = jnp.log(jnp.array([0.05, 0.02, 0.1]))
    lp = discretized_gaussian_log_likelihood(x, means=mean, log_scales=log_scale)
    phi = lambda z: 0.5 * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))
    sd = np.exp(np.asarray(log_scale))
    mass = phi((np.asarray(x - mean) + 1 / 255) / sd) - phi((np.asarray(x - mean) - 1 / 255) / sd)
    np.testing.assert_allclose(np.exp(np.asarray(lp)), mass, rtol=2e-3)


# ------------------------------------------------------------------------------- objective
def _recording_apply(record, out_channels_factor=1, junk=0.0):
    """Tiny linear 'model' out = w * x (+ junk channels), recording what it is called with."""

    def apply_fn(params, x, t, y, drop_class, drop_noise):
        record.append({"t": t, "y": y, "drop_class": drop_class, "drop_noise": drop_noise})
        out = params["w"] * x + params["b"]
        if out_channels_factor == 2:
            out = jnp.concatenate([out, jnp.full_like(out, junk)], -1)
        return out

    return apply_fn


def test_nag_loss_dropout_rates_independent_and_deterministic():
    from nag_jax.diffusion.objective import nag_loss

    n, p_c, p_n = 40000, 0.1, 0.2
    x1 = jnp.full((n, 1, 1, 1), 0.5)
    y = jnp.arange(n, dtype=jnp.int32) % 10
    params = {"w": jnp.float32(0.3), "b": jnp.float32(0.0)}
    tr = Transport("linear", "velocity")
    rec = []

    def run(key, p_c=p_c, p_n=p_n, rec=None, n=n):
        return nag_loss(
            _recording_apply([] if rec is None else rec),
            params,
            x1[:n],
            y[:n],
            key,
            process=tr,
            p_class_drop=p_c,
            p_noise_drop=p_n,
        )

    loss, aux = run(jax.random.key(0), rec=rec)  # eager, to see the masks
    dc = np.asarray(rec[0]["drop_class"])
    dn = np.asarray(rec[0]["drop_noise"])
    assert dc.shape == dn.shape == (n,) and dc.dtype == bool
    se = lambda p: np.sqrt(p * (1 - p) / n)
    assert abs(dc.mean() - p_c) < 4 * se(p_c)
    assert abs(dn.mean() - p_n) < 4 * se(p_n)
    assert abs((dc & dn).mean() - p_c * p_n) < 4 * se(p_c * p_n)  # independent
    assert abs(np.corrcoef(dc, dn)[0, 1]) < 4 / np.sqrt(n)
    np.testing.assert_allclose(aux["frac_drop_class"], dc.mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["frac_drop_noise"], dn.mean(), rtol=1e-6)
    t = np.asarray(rec[0]["t"])
    assert t.shape == (n,) and t.min() >= 0 and t.max() <= 1 and abs(t.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(rec[0]["y"], y)  # labels untouched; dropout via the mask
    # v-target for Linear: x1 - x0; with out = 0.3 x_t the expected loss is analytic:
    # E[(0.3 (t c + (1-t) z) - (c - z))^2], c = 0.5, z ~ N(0,1), t ~ U[0,1]
    tt = np.linspace(0, 1, 20001)
    expected = np.trapezoid((0.3 * tt * 0.5 - 0.5) ** 2 + (0.3 * (1 - tt) + 1) ** 2, tt)
    assert abs(float(loss) - expected) < 0.03 * expected
    # same key -> same loss (jitted == eager too); another key -> another loss
    jrun = jax.jit(lambda k: run(k)[0])
    assert float(jrun(jax.random.key(0))) == pytest.approx(float(loss), rel=1e-6)
    assert float(jrun(jax.random.key(0))) == float(jrun(jax.random.key(0)))
    assert float(jrun(jax.random.key(1))) != float(jrun(jax.random.key(0)))
    # edge probabilities and bad input
    _, aux01 = jax.jit(lambda k: run(k, 0.0, 1.0, n=64))(jax.random.key(2))
    assert float(aux01["frac_drop_class"]) == 0.0 and float(aux01["frac_drop_noise"]) == 1.0
    with pytest.raises(ValueError, match="p_noise_drop"):
        run(jax.random.key(2), p_n=1.5, n=8)


def test_nag_loss_sit_uses_first_c_channels_and_dit_full_output():
    from nag_jax.diffusion.objective import nag_loss

    x1 = jax.random.normal(jax.random.key(0), (16, 4, 4, 2)) * 0.5
    y = jnp.zeros((16,), jnp.int32)
    params = {"w": jnp.float32(0.1), "b": jnp.float32(0.2)}
    tr = Transport("linear", "velocity")
    d = create_diffusion("")
    key = jax.random.key(3)

    def loss_fn(p, process, factor=1, junk=0.0, rec=None):
        apply = _recording_apply([] if rec is None else rec, factor, junk)
        return nag_loss(apply, p, x1, y, key, process=process)

    l1 = jax.jit(lambda p: loss_fn(p, tr)[0])(params)
    l2 = jax.jit(lambda p: loss_fn(p, tr, 2, 1e6)[0])(params)
    assert float(l1) == float(l2)  # SiT ignores the learned-sigma half

    rec = []
    loss, aux = loss_fn(params, d, 2, rec=rec)  # eager, to see t
    t = np.asarray(rec[0]["t"])
    assert t.dtype == np.float32 and np.all(t == np.round(t)) and t.min() >= 0 and t.max() <= 999
    assert set(aux) >= {"mse", "vb", "frac_drop_class", "frac_drop_noise", "loss_noise_dropped"}
    np.testing.assert_allclose(float(loss), float(aux["mse"] + aux["vb"]), rtol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(lambda p: loss_fn(p, d), params)
    # differentiable in params (vb's stop-gradient is pinned in the vb test above)
    g = jax.jit(jax.grad(lambda p: loss_fn(p, d, 2)[0]))(params)
    assert np.isfinite(float(g["w"])) and float(jnp.abs(g["w"])) > 0
    with pytest.raises(TypeError, match="Transport"):
        loss_fn(params, "linear")
