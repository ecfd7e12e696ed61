"""The noise-shift instrument: exact sampling, Statement 1, calibration, estimator, networks.

SiT linear transport: t = 0 noise, t = 1 data; noise level lambda = 1 - t = sigma.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.analysis import gmm as G
from nag_jax.analysis import shift as S
from nag_jax.analysis.estimator import (
    Estimator,
    bin_log_posterior,
    posterior_gap,
    train_estimator,
)
from nag_jax.analysis.networks import MLPDenoiser, NoiseLevelEstimator
from nag_jax.diffusion.transport import Transport
from nag_jax.guidance import GuidanceConfig, guided_prediction
from nag_jax.guidance.classifier import score_to_velocity_correction
from nag_jax.sampling import sample_ode, sample_sde

T = Transport(path="linear", prediction="velocity")
D = 8
N = 2000


@pytest.fixture(scope="module")
def mix():
    return G.make_gmm(jax.random.PRNGKey(0), num_classes=2, num_components=2, dim=D, radius=2.0)


@pytest.fixture(scope="module")
def grid():
    return G.level_grid(100)


def _exact_pred(mix, scale=1.0):
    def pred_fn(x, t, y):
        a, s, da, ds = T.alpha_sigma(t)
        return scale * G.velocity(mix, x, y, a, s, da, ds)

    return pred_fn


def _shift(mix, grid, pred_fn, steps, method="heun", seed=0, sampler=None):
    """Samples N states from the exact mixture's labels and measures the calibrated shift."""
    k = jax.random.PRNGKey(seed)
    ky, kx, kr, kf = jax.random.split(k, 4)
    y = G.sample_labels(mix, ky, N)
    x_init = jax.random.normal(kx, (N, D))
    if sampler is None:
        run = jax.jit(
            lambda x0: sample_ode(
                pred_fn,
                x0,
                y,
                transport=T,
                num_steps=steps,
                method=method,
                return_trajectory=True,
            )
        )
    else:
        run = jax.jit(lambda x0: sampler(pred_fn, x0, y))
    x, traj = run(x_init)
    idx = np.unique(np.linspace(0, traj["x"].shape[0] - 1, 11).round().astype(int))
    levels = T.noise_level(traj["t"][idx])
    fwd = S.forward_states(T, kf, G.sample_data(mix, kr, y), levels)
    a, s = T.alpha_sigma(T.time_from_noise_level(grid))[:2]
    res = S.measure_shift(
        lambda z: G.noise_log_posterior(mix, z, y, a, s), traj["x"][idx], fwd, levels, grid
    )
    return x, y, res


def test_exact_velocity_transports_noise_to_the_data(mix):
    """Heun ODE (40 steps) with the closed-form velocity from N(0, I): the samples' mean exact
    log-likelihood, class means and spreads match exact data (10k reference draws)."""
    ky, kx = jax.random.split(jax.random.PRNGKey(11))
    y = G.sample_labels(mix, ky, 1000)
    run = jax.jit(
        lambda x0: sample_ode(_exact_pred(mix), x0, y, transport=T, num_steps=40, method="heun")
    )
    x = run(jax.random.normal(kx, (1000, D)))
    y_ref = jnp.tile(y, 10)
    ref = G.sample_data(mix, jax.random.PRNGKey(9), y_ref)
    ll_x, ll_ref = G.log_prob(mix, x, y).mean(), G.log_prob(mix, ref, y_ref).mean()
    assert abs(float(ll_x - ll_ref)) < 0.3, (ll_x, ll_ref)
    for c in range(2):
        m, mr = y == c, y_ref == c
        np.testing.assert_allclose(x[m].mean(0), ref[mr].mean(0), atol=0.1)
        np.testing.assert_allclose(x[m].std(0), ref[mr].std(0), rtol=0.1, atol=0.03)


def test_instrument_reads_zero_for_the_exact_model_on_a_fine_grid(mix, grid):
    _, _, res = _shift(mix, grid, _exact_pred(mix), steps=40)
    summ = S.summarize_shift(res)
    assert abs(summ["all"]) < 0.004 and abs(summ["late"]) < 0.004, summ
    np.testing.assert_allclose(res.density_traj.sum(-1), 1.0, rtol=1e-4)


def test_instrument_reads_positive_shift_for_an_under_denoising_model(mix, grid):
    """A model whose velocity is 5% too small leaves extra noise in every state."""
    _, _, res0 = _shift(mix, grid, _exact_pred(mix), steps=40)
    _, _, res = _shift(mix, grid, _exact_pred(mix, 0.95), steps=40)
    summ, summ0 = S.summarize_shift(res), S.summarize_shift(res0)
    assert summ["all"] > 0.008 and summ["all"] > summ0["all"] + 0.006, (summ, summ0)
    assert summ["late"] > 0.008, summ


def test_instrument_reads_positive_shift_for_a_coarse_sde_grid(mix, grid):
    """Exact velocity, Euler-Maruyama SDE: 10 steps leave states noisier than nominal (each step
    injects sqrt(2 w dt) noise that the coarse drift step does not remove); 100 steps read ~0.
    (The Euler ODE with the exact velocity reads |shift| < 0.01 of either sign even at 5 steps
    here: its discretisation error is not extra noise.)"""

    def sde(steps):
        return lambda pred_fn, x0, y: sample_sde(
            pred_fn,
            jax.random.PRNGKey(3),
            x0,
            y,
            transport=T,
            num_steps=steps,
            return_trajectory=True,
        )

    _, _, coarse = _shift(mix, grid, _exact_pred(mix), steps=10, sampler=sde(10))
    _, _, fine = _shift(mix, grid, _exact_pred(mix), steps=100, sampler=sde(100))
    c, f = S.summarize_shift(coarse), S.summarize_shift(fine)
    assert c["all"] > 0.02 and c["late"] > 0.03, c
    assert abs(f["all"]) < 0.004, f


def _statement1_shifts(mixh, lam, noise_stds, n=1000):
    grid = G.level_grid(400)
    a, s = T.alpha_sigma(T.time_from_noise_level(grid))[:2]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    y = G.sample_labels(mixh, k1, n)
    x = S.forward_states(T, k2, G.sample_data(mixh, k3, y), jnp.array([lam]))[0]
    e = jax.random.normal(jax.random.PRNGKey(7), x.shape)
    base = S.posterior_mean(G.noise_log_posterior(mixh, x, y, a, s), grid).mean()
    # antithetic pairs x + s_e e and x - s_e e cancel the first-order (mean-zero) term of the
    # perturbation, leaving the O(s_e^2) variance effect Statement 1 is about
    pm = lambda z: S.posterior_mean(G.noise_log_posterior(mixh, z, y, a, s), grid).mean()
    return [float(0.5 * (pm(x + se * e) + pm(x - se * e)) - base) for se in noise_stds]


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.6])
def test_statement1_extra_noise_shifts_posterior_towards_noisier_levels(lam):
    """Adding N(0, s_e^2 I) to exact samples at level lambda moves the exact posterior mean by
    ~ sqrt(lambda^2 + s_e^2) - lambda (linear path: sigma = lambda), positive and increasing."""
    mixh = G.make_gmm(jax.random.PRNGKey(4), num_classes=2, num_components=2, dim=32, radius=1.0)
    stds = (0.02, 0.05, 0.1)
    shifts = _statement1_shifts(mixh, lam, stds)
    for se, got in zip(stds[:2], shifts[:2]):
        assert got == pytest.approx(np.sqrt(lam**2 + se**2) - lam, rel=0.2)
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def test_score_correction_matches_the_transports_score_to_velocity_conversion():
    ts = Transport(path="linear", prediction="score")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    s0 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    ds = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    t = 0.3
    dv = score_to_velocity_correction(T, ds, x, t)
    ref = ts.velocity_from(s0 + ds, x, t) - ts.velocity_from(s0, x, t)
    np.testing.assert_allclose(dv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dv, (1 - t) / t * ds, rtol=1e-5)  # linear: sigma^2/alpha + sigma


def test_posterior_gap_and_binning():
    fine = jnp.log(jnp.full((2, 40), 1.0 / 40))
    b = bin_log_posterior(fine, 10)
    np.testing.assert_allclose(jnp.exp(b), 0.1, rtol=1e-6)
    gap = posterior_gap(b, b)
    assert gap["kl"] == pytest.approx(0.0, abs=1e-6) and gap["w1"] == pytest.approx(0.0, abs=1e-6)
    # all mass on the first vs the last bin: W1 = (B - 1) / B
    p = jnp.log(jnp.eye(10)[0] + 1e-12)[None]
    q = jnp.log(jnp.eye(10)[-1] + 1e-12)[None]
    assert posterior_gap(p, q)["w1"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.slow
def test_estimator_learns_the_exact_posterior_on_a_2d_mixture():
    mix = G.make_gmm(jax.random.PRNGKey(3), num_classes=2, num_components=2, dim=2)

    def sample_x1(k, n):
        ky, kx = jax.random.split(k)
        return G.sample_data(mix, kx, G.sample_labels(mix, ky, n))

    est, losses = train_estimator(
        jax.random.PRNGKey(4),
        sample_x1,
        T,
        num_bins=20,
        hidden=64,
        depth=2,
        num_steps=400,
        batch_size=256,
        lr=3e-3,
    )
    assert losses[-50:].mean() < losses[:50].mean()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    lam = jax.random.uniform(k1, (1000,))
    x = T.interpolate(jax.random.normal(k2, (1000, 2)), sample_x1(k3, 1000), 1 - lam)[0]
    fine = G.level_grid(160)
    a, s = T.alpha_sigma(T.time_from_noise_level(fine))[:2]
    exact = bin_log_posterior(G.noise_log_posterior(mix, x, None, a, s), 20)
    gap = posterior_gap(exact, est.log_posterior(x))
    prior = posterior_gap(exact, jnp.full_like(exact, -jnp.log(20.0)))
    assert gap["kl"] < 0.25 * prior["kl"], (gap, prior)
    # the density interpolation at bin centres equals the bin log-probability times B
    lp = est.log_prob_level(x[:5], 0.525)
    np.testing.assert_allclose(lp, est.log_posterior(x[:5])[:, 10] + jnp.log(20.0), rtol=1e-5)


def test_mlp_denoiser_conditioning_interface_and_fused_guidance():
    m = MLPDenoiser(dim=3, num_classes=4, hidden=32, depth=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    y = jnp.arange(5) % 4
    p = m.init(jax.random.PRNGKey(1), x, jnp.zeros(5), y)["params"]
    p = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), p
    )
    assert "null_noise_token" in p
    f = lambda t, dc=None, dn=None: m.apply({"params": p}, x, t, y, dc, dn)
    on = jnp.ones(5, bool)
    # drop_noise: output independent of t; drop_class: same as label row num_classes
    np.testing.assert_allclose(f(jnp.full(5, 0.1), dn=on), f(jnp.full(5, 0.9), dn=on), atol=1e-6)
    assert not np.allclose(f(jnp.full(5, 0.1)), f(jnp.full(5, 0.9)))
    null_y = m.apply({"params": p}, x, jnp.full(5, 0.3), jnp.full(5, 4))
    np.testing.assert_allclose(f(jnp.full(5, 0.3), dc=on), null_y, atol=1e-6)
    # the lead's fused guidance works on (N, d) vectors: pred = c + w (c - u_t)
    net = lambda x, t, y, dc, dn: m.apply({"params": p}, x, t, y, dc, dn)
    pred = guided_prediction(net, GuidanceConfig(nag_scale=2.0), noise_level_fn=T.noise_level)
    c = f(jnp.full(5, 0.3))
    u = f(jnp.full(5, 0.3), dn=on)
    np.testing.assert_allclose(pred(x, jnp.float32(0.3), y), c + 2.0 * (c - u), atol=1e-5)


def test_estimator_accepts_images_and_vectors():
    e = NoiseLevelEstimator(num_bins=8, hidden=16, depth=1, conv=True)
    img = jnp.zeros((2, 8, 8, 3))
    p = e.init(jax.random.PRNGKey(0), img)["params"]
    est = Estimator(e, p)
    assert est.log_posterior(img).shape == (2, 8)
    np.testing.assert_allclose(jnp.exp(est.log_posterior(img)).sum(-1), 1.0, rtol=1e-5)


def test_classifier_nag_adds_the_converted_estimator_gradient_inside_its_interval():
    from nag_jax.guidance.classifier import classifier_nag_prediction

    e = NoiseLevelEstimator(num_bins=10, hidden=16, depth=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    est = Estimator(e, e.init(jax.random.PRNGKey(1), x)["params"])
    base = lambda x, t, y: -x * t  # any velocity
    y = jnp.zeros(4, jnp.int32)
    guided = classifier_nag_prediction(base, est, 2.0, transport=T, interval=(0.0, 0.6))
    t_in = jnp.float32(0.7)  # level 0.3: inside
    grad = jax.grad(lambda z: est.log_prob_level(z, 0.3).sum())(x)
    expected = base(x, t_in, y) + 2.0 * (1 - 0.7) / 0.7 * grad
    np.testing.assert_allclose(guided(x, t_in, y), expected, rtol=1e-4, atol=1e-5)
    t_out = jnp.float32(0.2)  # level 0.8: outside, unchanged
    np.testing.assert_allclose(guided(x, t_out, y), base(x, t_out, y), atol=1e-6)
    # usable inside the project's sampler (t = 0 is pure noise: outside, no inf/nan)
    out = jax.jit(lambda x0: sample_ode(guided, x0, y, transport=T, num_steps=4))(x)
    assert bool(jnp.all(jnp.isfinite(out)))
