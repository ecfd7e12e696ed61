"""KID (nag_jax.evaluation.metrics.kid) against the formula written out here, against the
published implementations' formulas, and its unbiasedness."""

import numpy as np
import pytest

from nag_jax.evaluation import metrics


def _kid_by_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, term by term (Binkowski et al. 2018, eq. 3;
    sets of sizes m and n)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _clean_fid_kernel_distance(feats1, feats2, num_subsets, max_subset_size, rng):
    """clean-fid's `kernel_distance` (cleanfid/fid.py), restated with a passed RNG."""
    n = feats1.shape[1]
    m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
    t = 0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return t / num_subsets / m


def _torch_fidelity_mmd2(f1, f2):
    """torch-fidelity's `polynomial_mmd` -> `mmd2(..., mmd_est="unbiased")` (metric_kid.py)."""
    m = len(f1)
    k11 = (f1 @ f1.T / f1.shape[1] + 1) ** 3
    k22 = (f2 @ f2.T / f1.shape[1] + 1) ** 3
    k12 = (f1 @ f2.T / f1.shape[1] + 1) ** 3
    kt11 = (k11.sum(axis=1) - np.diagonal(k11)).sum()
    kt22 = (k22.sum(axis=1) - np.diagonal(k22)).sum()
    return (kt11 + kt22) / (m * (m - 1)) - 2 * k12.sum(axis=0).sum() / (m * m)


def _features(rng, n, d, shift=0.0):
    return np.maximum(rng.normal(size=(n, d)) + shift, 0.0)  # non-negative, like pool3


def test_full_sets_match_the_formula_term_by_term():
    rng = np.random.default_rng(0)
    x, y = _features(rng, 12, 5), _features(rng, 12, 5, shift=0.4)
    vals = metrics.kid_subsets(x, y, num_subsets=7, subset_size=100)
    assert vals.shape == (7,) and np.ptp(vals) == 0  # every subset is the whole of both sets
    assert vals[0] == pytest.approx(_kid_by_loops(x, y), rel=1e-12)
    assert vals[0] == pytest.approx(_torch_fidelity_mmd2(x, y), rel=1e-12)
    rng_c = np.random.default_rng(1)
    assert vals[0] == pytest.approx(_clean_fid_kernel_distance(x, y, 3, 1000, rng_c), rel=1e-12)
    mean, se = metrics.kid(x, y, num_subsets=7, subset_size=100)
    assert mean == pytest.approx(vals[0]) and se == 0.0


def test_subsets_average_to_the_full_estimate_and_se_is_their_spread():
    rng = np.random.default_rng(2)
    x, y = _features(rng, 60, 6), _features(rng, 80, 6, shift=0.3)
    vals = metrics.kid_subsets(x, y, num_subsets=400, subset_size=20, seed=3)
    assert vals.shape == (400,) and np.ptp(vals) > 0
    # averaged over random subsets, each term is its average over all pairs of the full sets:
    # the subset mean estimates the full-set (60 + 80) unbiased value
    full = _kid_by_loops(x, y)
    assert abs(vals.mean() - full) < 4 * vals.std(ddof=1) / np.sqrt(400)
    mean, se = metrics.kid(x, y, num_subsets=400, subset_size=20, seed=3)
    assert mean == pytest.approx(vals.mean())
    assert se == pytest.approx(vals.std(ddof=1) / np.sqrt(400))
    # the seed picks the subsets: same seed, same values; another seed, other values
    np.testing.assert_array_equal(
        vals, metrics.kid_subsets(x, y, num_subsets=400, subset_size=20, seed=3)
    )
    assert not np.array_equal(
        vals, metrics.kid_subsets(x, y, num_subsets=400, subset_size=20, seed=4)
    )


def test_each_subset_value_is_the_formula_on_some_rows():
    """With one subset drawn, the value equals the term-by-term MMD^2 on the rows that
    default_rng(seed) picks (a first draw from `x`, then one from `y`)."""
    rng = np.random.default_rng(5)
    x, y = _features(rng, 15, 4), _features(rng, 11, 4, shift=0.2)
    (val,) = metrics.kid_subsets(x, y, num_subsets=1, subset_size=6, seed=9)
    pick = np.random.default_rng(9)
    ix, iy = pick.choice(15, 6, replace=False), pick.choice(11, 6, replace=False)
    assert val == pytest.approx(_kid_by_loops(x[ix], y[iy]), rel=1e-12)


def test_kid_of_two_draws_of_one_distribution_is_zero_on_average():
    """Unbiased: over 300 pairs of independent 30-point sets from one distribution the mean KID
    is within 3 SE of 0, while the biased (V-statistic) version is clearly positive."""
    rng = np.random.default_rng(6)
    kids, biased = [], []
    for _ in range(300):
        x, y = _features(rng, 30, 8), _features(rng, 30, 8)
        kids.append(metrics.kid(x, y, num_subsets=1, subset_size=30)[0])
        kxx, kyy, kxy = ((a @ b.T / 8 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    kids, biased = np.asarray(kids), np.asarray(biased)
    se = kids.std(ddof=1) / np.sqrt(len(kids))
    assert abs(kids.mean()) < 3 * se
    assert biased.mean() > 10 * biased.std(ddof=1) / np.sqrt(len(biased))
    # and a shifted distribution is detected
    x, y = _features(rng, 200, 8), _features(rng, 200, 8, shift=0.5)
    assert metrics.kid(x, y)[0] > 20 * se


def test_kid_errors():
    with pytest.raises(ValueError, match="different sizes"):
        metrics.kid(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(np.zeros((1, 3)), np.zeros((4, 3)))


def test_compute_metrics_reports_kid_with_reference_features_only():
    from nag_jax.evaluation.reference_stats import ReferenceStats

    rng = np.random.default_rng(8)
    ref_f, smp = _features(rng, 40, 6), _features(rng, 40, 6, shift=0.3)
    ref = ReferenceStats.from_features({"pool": ref_f})
    out = metrics.compute_metrics({"pool": smp}, ref, num_splits=4)
    # the reference keeps its features in float32
    assert out["kid"] == pytest.approx(_kid_by_loops(ref_f.astype(np.float32), smp), rel=1e-10)
    assert out["kid_se"] == 0.0  # N = 40 < 1000: one subset is all of both sets
    mu, sigma = metrics.mean_cov(ref_f)
    pre = ReferenceStats(mu=mu, sigma=sigma)
    assert "kid" not in metrics.compute_metrics({"pool": smp}, pre, num_splits=4)
