"""Closed forms of the GMM lab against Monte-Carlo estimates and finite differences.

Linear path throughout: alpha = t = 1 - lambda, sigma = 1 - t = lambda (lambda = noise level).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.analysis import gmm as G


@pytest.fixture(scope="module")
def mix():
    return G.make_gmm(jax.random.PRNGKey(0), num_classes=3, num_components=3, dim=2)


def _mc_marginal(mix, key, y, alpha, sigma, n):
    """Forward samples alpha x1 + sigma x0 drawn by brute force (independent of the closed form)."""
    k1, k2 = jax.random.split(key)
    ys = jnp.full((n,), y, jnp.int32)
    x1 = G.sample_data(mix, k1, ys)
    return x1, alpha * x1 + sigma * jax.random.normal(k2, x1.shape)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_marginal_density_matches_monte_carlo(mix, lam):
    """p_t(x|y) = E_{x1~p(.|y)} N(x; alpha x1, sigma^2 I), estimated with 200k data draws."""
    alpha, sigma = 1.0 - lam, lam
    key = jax.random.PRNGKey(1)
    x1, xt = _mc_marginal(mix, key, 1, alpha, sigma, 200_000)
    pts = xt[:5]
    d = pts[:, None, :] - alpha * x1[None]
    mc = jnp.mean(jnp.exp(-0.5 * jnp.sum(d**2, -1) / sigma**2), axis=1) / (2 * np.pi * sigma**2)
    exact = jnp.exp(G.log_prob(mix, pts, jnp.ones(5, jnp.int32), alpha, sigma))
    np.testing.assert_allclose(exact, mc, rtol=0.05)


def test_marginal_moments_match_forward_samples(mix):
    alpha, sigma = 0.6, 0.4
    _, xt = _mc_marginal(mix, jax.random.PRNGKey(2), 2, alpha, sigma, 400_000)
    w = jnp.exp(mix.log_weights[2])
    mean = jnp.sum(w[:, None] * alpha * mix.means[2], 0)
    second = jnp.sum(w[:, None] * (alpha**2 * (mix.variances[2] + mix.means[2] ** 2) + sigma**2), 0)
    np.testing.assert_allclose(xt.mean(0), mean, atol=0.01)
    np.testing.assert_allclose((xt**2).mean(0), second, atol=0.01)


@pytest.mark.parametrize("y", [jnp.array([0, 1, 2, 1]), None])
def test_score_matches_finite_differences(mix, y):
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2)) * 0.7
    alpha, sigma = 0.7, 0.3
    s = G.score(mix, x, y, alpha, sigma)
    h = 1e-3
    fd = []
    for i in range(2):
        e = jnp.zeros(2).at[i].set(h)
        fd.append(
            (G.log_prob(mix, x + e, y, alpha, sigma) - G.log_prob(mix, x - e, y, alpha, sigma))
            / (2 * h)
        )
    np.testing.assert_allclose(s, jnp.stack(fd, -1), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_velocity_matches_importance_weighted_monte_carlo(mix, t):
    """v(x,t) = E[x1 - x0 | x_t = x]: self-normalised importance weights over data draws."""
    alpha, sigma = t, 1.0 - t
    key = jax.random.PRNGKey(4)
    x1, xt = _mc_marginal(mix, key, 0, alpha, sigma, 400_000)
    pts = xt[:4]
    logw = -0.5 * jnp.sum((pts[:, None] - alpha * x1[None]) ** 2, -1) / sigma**2  # (4, n)
    w = jax.nn.softmax(logw, axis=1)
    x0 = (pts[:, None] - alpha * x1[None]) / sigma
    mc = jnp.einsum("pn,pnd->pd", w, x1[None] - x0)
    y = jnp.zeros(4, jnp.int32)
    v = G.velocity(mix, pts, y, alpha, sigma, 1.0, -1.0)
    np.testing.assert_allclose(v, mc, atol=0.05 * max(1.0, float(jnp.abs(mc).max())))
    # SiT's score <-> velocity relation for the linear path: s = (t v - x) / (1 - t).
    s = G.score(mix, pts, y, alpha, sigma)
    np.testing.assert_allclose(s, (t * v - pts) / (1 - t), rtol=1e-3, atol=1e-3)


def test_noise_posterior_is_a_calibrated_bayes_posterior():
    """Draw lambda from the grid prior and x | lambda exactly: the posterior must satisfy
    E[p(lambda_j | x)] = 1/L and E[lambda f(x)] = E[E[lambda | x] f(x)] for any f."""
    mix = G.make_gmm(jax.random.PRNGKey(5), num_classes=2, num_components=2, dim=8)
    grid = G.level_grid(100)
    n = 8_000
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(6), 4)
    lam = grid[jax.random.randint(k1, (n,), 0, 100)]
    y = G.sample_labels(mix, k2, n)
    x = (1 - lam)[:, None] * G.sample_data(mix, k3, y) + lam[:, None] * jax.random.normal(
        k4, (n, 8)
    )
    lp = G.noise_log_posterior(mix, x, y, 1 - grid, grid)
    post = jnp.exp(lp)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(post.mean(0).reshape(10, 10).sum(-1), 0.1, atol=0.01)
    pmean = jnp.sum(post * grid, -1)
    f = jnp.sum(x**2, -1)
    np.testing.assert_allclose(jnp.mean(lam * f), jnp.mean(pmean * f), rtol=0.03)
    np.testing.assert_allclose(jnp.mean(lam), jnp.mean(pmean), atol=0.005)
    # and it is informative: its error is well below the prior's variance (1/12) in d = 8
    assert float(jnp.mean((pmean - lam) ** 2)) < 0.25 / 12


def test_posterior_concentrates_on_true_level_in_high_dim():
    mix = G.make_gmm(jax.random.PRNGKey(7), num_classes=2, num_components=2, dim=64)
    grid = G.level_grid(200)
    y = jnp.zeros(512, jnp.int32)
    for lam in (0.2, 0.5, 0.8):
        k1, k2 = jax.random.split(jax.random.PRNGKey(int(lam * 10)))
        x = (1 - lam) * G.sample_data(mix, k1, y) + lam * jax.random.normal(k2, (512, 64))
        pm = jnp.sum(jnp.exp(G.noise_log_posterior(mix, x, y, 1 - grid, grid)) * grid, -1)
        assert abs(float(pm.mean()) - lam) < 0.01
