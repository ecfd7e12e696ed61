"""FID / IS / precision-recall against closed forms and independent numpy computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.evaluation import metrics, reference_stats


def _fid_numpy(x, y):
    """Independent Frechet distance: covariance square roots via eigendecomposition,
    tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2) (a symmetric PSD matrix)."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = r1 @ s2 @ r1
    tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0, None)))
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_running_stats_match_numpy_in_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(501, 7)).astype(np.float32)
    rs = metrics.RunningStats()
    for i in range(0, 501, 64):  # uneven batches
        rs.update(x[i : i + 64])
    mu, sigma = rs.mean_cov()
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_frechet_distance_matches_independent_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(0.5, 1.3, size=(300, 16)) @ rng.normal(size=(16, 16))
    ours = metrics.fid_from_features(x, y)
    assert ours > 1.0
    assert ours == pytest.approx(_fid_numpy(x, y), rel=1e-8)


def test_frechet_distance_closed_form_gaussians():
    # N(m1, a^2 I) vs N(m2, b^2 I): |m1 - m2|^2 + d (a - b)^2
    d = 5
    mu1, mu2 = np.zeros(d), np.full(d, 2.0)
    fd = metrics.frechet_distance(mu1, 4.0 * np.eye(d), mu2, 9.0 * np.eye(d))
    assert fd == pytest.approx(d * 4.0 + d * (2.0 - 3.0) ** 2, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 32))
    assert abs(metrics.fid_from_features(x, x)) < 1e-8


def test_frechet_reference_matches_scipy_sqrtm_and_closed_form():
    """The eigenvalue form (FrechetReference) against frechet_distance's scipy sqrtm on
    full-rank covariances, and against N(m1, a^2 I) vs N(m2, b^2 I) = |m1 - m2|^2 + d (a - b)^2."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    y = rng.normal(0.3, 1.2, size=(250, 12)) @ rng.normal(size=(12, 12))
    want = metrics.fid_from_features(y, x)
    ref = metrics.FrechetReference.from_features(x)
    assert ref.distance_to_features(y) == pytest.approx(want, rel=1e-9)
    assert ref.distance(*metrics.mean_cov(y)) == pytest.approx(want, rel=1e-9)
    d = 5
    ref = metrics.FrechetReference.from_stats(np.zeros(d), 4.0 * np.eye(d))
    assert ref.distance(np.full(d, 2.0), 9.0 * np.eye(d)) == pytest.approx(25.0, rel=1e-12)
    with pytest.raises(ValueError, match="same feature extractor"):
        ref.distance(np.zeros(3), np.eye(3))


@pytest.mark.parametrize("n_ref, n", [(6, 9), (9, 6), (60, 7), (7, 60)])
def test_frechet_reference_with_fewer_vectors_than_dimensions(n_ref, n):
    """Singular covariances (N <= D = 40) on the reference's side, the samples' or both: the
    low-rank factor paths against the independent eigendecomposition computation, to 1e-6 only:
    that one takes square roots of rounding-level eigenvalues of the singular covariances, which
    costs it ~sqrt(float64 eps) (measured at 2e-8 of a 50-digit mpmath value on (6, 9); the
    factor path was within 2e-10). A set against itself is 0."""
    rng = np.random.default_rng(n_ref * 100 + n)
    x = rng.normal(size=(n_ref, 40)) @ rng.normal(size=(40, 40))
    y = rng.normal(0.2, 1.5, size=(n, 40)) @ rng.normal(size=(40, 40))
    ref = metrics.FrechetReference.from_features(x)
    want = _fid_numpy(y, x)
    assert ref.distance_to_features(y) == pytest.approx(want, rel=1e-6)
    assert ref.distance(*metrics.mean_cov(y)) == pytest.approx(want, rel=1e-6)
    assert abs(ref.distance_to_features(x)) < 1e-9 * ref.trace_sigma


def test_fid_rejects_mismatched_feature_sizes():
    with pytest.raises(ValueError, match="same feature extractor"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_closed_forms():
    # uniform predictions: p(y|x) = p(y) -> IS = 1
    assert metrics.inception_score(np.zeros((100, 10)), 10) == pytest.approx(1.0, abs=1e-12)
    # confident, evenly spread over K classes in every split -> IS = K
    k = 8
    logits = np.full((80, k), -1e4)
    logits[np.arange(80), np.arange(80) % k] = 0.0
    assert metrics.inception_score(logits, num_splits=10) == pytest.approx(k, rel=1e-9)
    # confident but all the same class -> IS = 1
    same = np.full((50, k), -1e4)
    same[:, 3] = 0.0
    assert metrics.inception_score(same, num_splits=5) == pytest.approx(1.0, abs=1e-9)


def test_inception_score_matches_adm_formula_on_random_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1000, 20)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = []
    for part in np.split(p, 10):  # ADM: consecutive parts, log of softmax
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        ref.append(np.exp(kl.sum(1).mean()))
    assert metrics.inception_score(logits, 10) == pytest.approx(np.mean(ref), rel=1e-10)


def _pr_bruteforce(ref, sam, k=3):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    d = ((ref[:, None] - sam[None]) ** 2).sum(-1)  # (R, S)
    rr, rs = radii(ref), radii(sam)
    precision = np.mean(np.any(d <= rr[:, None], axis=0))
    recall = np.mean(np.any(d <= rs[None, :], axis=1))
    return precision, recall


def test_precision_recall_known_answers():
    grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
    # identical sets: everything inside
    assert metrics.precision_recall(grid, grid, block_size=7) == (1.0, 1.0)
    # half of the samples far away: precision 1/2; the far half's own k-NN radius is tiny and
    # does not reach the grid, while the near half covers the grid -> recall 1
    far = grid[:18] + 100.0
    sam = np.concatenate([grid[::2], far])
    p, r = metrics.precision_recall(grid, sam, block_size=5)
    assert p == pytest.approx(0.5)
    assert r == pytest.approx(1.0)
    # disjoint sets: 0 / 0
    assert metrics.precision_recall(grid, grid + 1000.0, block_size=8) == (0.0, 0.0)


def test_precision_recall_matches_bruteforce_with_uneven_blocks():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(37, 5)).astype(np.float32)
    sam = (np.random.default_rng(5).normal(size=(23, 5)) * 0.8 + 1.5).astype(np.float32)
    ours = metrics.precision_recall(ref, sam, k=3, block_size=8)
    want = _pr_bruteforce(ref.astype(np.float64), sam.astype(np.float64))
    assert 0.0 < ours[0] < 1.0 and 0.0 < ours[1] < 1.0
    assert ours == pytest.approx(want)
    radii = metrics.manifold_radii(ref, k=3, block_size=6)
    d = ((ref[:, None].astype(np.float64) - ref[None]) ** 2).sum(-1)
    np.testing.assert_allclose(radii, np.sort(d, 1)[:, 3], rtol=1e-5, atol=1e-5)


def _toy_extractor():
    """Feature fn of uint8 images: mean colour (pool), 2x2 average pool (spatial), 'logits'."""

    def fn(x):
        x = x.astype(jnp.float32) / 255.0
        pool = jnp.concatenate([x.mean((1, 2)), x.std((1, 2))], -1)
        spatial = x.reshape(x.shape[0], 2, x.shape[1] // 2, 2, x.shape[2] // 2, -1).mean((2, 4))
        return {"pool": pool, "spatial": spatial.reshape(x.shape[0], -1), "logits": 5 * pool}

    return metrics.FeatureExtractor("toy-colour", fn)


def test_extract_features_batches_and_pads_consistently():
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, size=(21, 8, 8, 3), dtype=np.uint8)
    ex = _toy_extractor()
    a = metrics.extract_features(ex, imgs, batch_size=8)  # 8 virtual devices, last batch padded
    b = metrics.extract_features(ex, [imgs[:5], imgs[5:6], imgs[6:]], batch_size=16)
    direct = {k: np.asarray(v) for k, v in ex.fn(jnp.asarray(imgs)).items()}
    for k in ("pool", "spatial", "logits"):
        assert a[k].shape[0] == 21
        np.testing.assert_allclose(a[k], direct[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b[k], direct[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="to_uint8"):
        metrics.extract_features(ex, imgs.astype(np.float32))


def test_reference_from_adm_npz_is_cached_and_metrics_of_same_set(tmp_path):
    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    ref_path = tmp_path / "ref.npz"
    np.savez(ref_path, arr_0=imgs)
    ex = _toy_extractor()
    cache = tmp_path / "cache"
    ref = reference_stats.load_reference(str(ref_path), ex, cache_dir=str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("ref-toy-colour-")
    again = reference_stats.load_reference(str(ref_path), ex, cache_dir=str(cache))
    assert again.meta["cache_path"] == str(files[0])
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    # a different extractor -> a different cache entry
    other = metrics.FeatureExtractor("toy-other", ex.fn)
    reference_stats.load_reference(str(ref_path), other, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 2
    feats = metrics.extract_features(ex, imgs)
    m = metrics.compute_metrics(feats, ref, num_splits=4)
    assert abs(m["fid"]) < 1e-6 and abs(m["sfid"]) < 1e-6
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["inception_score"] >= 1.0
    # precomputed-only statistics (ADM style mu/sigma keys) are used as they are
    pre = tmp_path / "pre.npz"
    np.savez(pre, mu=ref.mu, sigma=ref.sigma, mu_s=ref.mu_s, sigma_s=ref.sigma_s)
    stats = reference_stats.load_reference(str(pre), ex)
    assert stats.meta["precomputed"] and stats.pool_features is None
    assert "precision" not in metrics.compute_metrics(feats, stats, num_splits=4)


def test_adm_protocol_uses_stored_statistics_for_fid_and_images_for_pr(tmp_path):
    """reference_stats='precomputed': FID/sFID against the file's mu/sigma (ADM computed them on
    the full train set), precision/recall against features of its arr_0 images."""
    rng = np.random.default_rng(7)
    imgs = rng.integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    ex = _toy_extractor()
    feats = metrics.extract_features(ex, imgs)
    d, ds = feats["pool"].shape[1], feats["spatial"].shape[1]
    mu, sigma = np.full(d, 0.25), 0.5 * np.eye(d)
    path = tmp_path / "adm_ref.npz"
    np.savez(path, arr_0=imgs, mu=mu, sigma=sigma, mu_s=np.zeros(ds), sigma_s=np.eye(ds))
    ref = reference_stats.load_reference(str(path), ex, precomputed=True)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma_s, np.eye(ds))
    np.testing.assert_allclose(ref.pool_features, feats["pool"])
    m = metrics.compute_metrics(feats, ref, num_splits=4)
    assert m["fid"] == pytest.approx(
        metrics.frechet_distance(*metrics.mean_cov(feats["pool"]), mu, sigma)
    )
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    np.savez(tmp_path / "no_stats.npz", arr_0=imgs)
    with pytest.raises(ValueError, match="reference_stats='images'"):
        reference_stats.load_reference(str(tmp_path / "no_stats.npz"), ex, precomputed=True)
