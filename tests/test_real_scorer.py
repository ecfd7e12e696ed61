"""RealImageScorer (nag_jax.evaluation.real_scorer) on a tiny IDX folder written here, with a
random-weight Inception at its smallest input (75 px): the metric keys, the scores of the test
reference against itself, the on-disk cache (no feature or classifier recomputation), and the
errors. Numbers from random weights are plumbing checks, not quality measures."""

import numpy as np
import pytest
from flax import traverse_util

from nag_jax.data import idx
from nag_jax.evaluation import classifier, inception, metrics
from nag_jax.evaluation.real_scorer import RealImageScorer

N_TRAIN, N_TEST, S, K = 12, 8, 12, 3
KEYS = {
    "fid",
    "kid",
    "kid_se",
    "fid_train",
    "kid_train",
    "precision",
    "recall",
    "class_accuracy",
    "hf_energy",
}


def _images(labels, rng):
    """Class c: a bright horizontal bar at row 2 + 3c, plus noise: learnable, not constant."""
    x = rng.integers(0, 60, (len(labels), S, S)).astype(np.uint8)
    for i, c in enumerate(labels):
        x[i, 2 + 3 * c : 4 + 3 * c, 1:-1] = 230
    return x


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = (np.arange(n) % K).astype(np.uint8)
        idx.write_idx(root / f"{prefix}-images-idx3-ubyte.gz", _images(labels, rng))
        idx.write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return str(root)


@pytest.fixture(scope="module")
def params():
    """Random FID-Inception params filled in numpy from the shapes (inception.param_shapes, no
    compilation; init_random_params compiles the init, about a minute here): He-scaled kernels,
    so the pool features of different images differ (their covariance has a trace of order 1)."""
    rng = np.random.default_rng(0)
    flat = {}
    for key, shape in traverse_util.flatten_dict(inception.param_shapes(75), sep="/").items():
        leaf, shape = key.rsplit("/", 1)[1], shape.shape
        if leaf == "kernel":
            flat[key] = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif leaf == "var":
            flat[key] = rng.uniform(0.5, 1.5, shape)
        elif leaf == "scale":
            flat[key] = np.ones(shape)
        else:  # BN mean and bias, fc bias
            flat[key] = 0.1 * rng.standard_normal(shape)
    return traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()}, sep="/")


def _data(data_dir):
    return dict(name="idx", data_dir=data_dir, image_size=S, channels=1, idx_fit="pad")


def _scorer(data_dir, params, cache_dir, **kw):
    kw = (
        dict(
            inception_params=params,
            num_test=N_TEST,
            num_train=6,
            classifier_settings=classifier.TrainSettings(num_steps=20, batch_size=8, seed=1),
            cache_dir=str(cache_dir),
            batch_size=5,  # 8 and 6 images: padded last batches
            input_size=75,
        )
        | kw
    )
    return RealImageScorer(_data(data_dir), **kw)


@pytest.fixture(scope="module")
def scorer(data_dir, params, tmp_path_factory):
    return _scorer(data_dir, params, tmp_path_factory.mktemp("cache"))


def _kid_of_a_set_with_itself(f):
    """Unbiased MMD^2 of a set against itself (one subset = the whole set, m = N): the
    within-set terms count off-diagonal pairs only, the cross term all pairs:
    2 (sum_{i != j} k_ij / (m (m - 1)) - sum_{i, j} k_ij / m^2), k = (x.y / d + 1)^3."""
    f = np.asarray(f, np.float64)
    m, d = f.shape
    kern = (f @ f.T / d + 1) ** 3
    return 2 * ((kern.sum() - np.trace(kern)) / (m * (m - 1)) - kern.sum() / m**2)


def test_references_and_info(scorer):
    assert scorer.test_features.shape == (N_TEST, 2048)
    assert scorer.train_features.shape == (6, 2048)
    np.testing.assert_array_equal(
        scorer.train_indices, np.sort(np.random.default_rng(0).choice(N_TRAIN, 6, replace=False))
    )
    assert scorer.test_images_uint8.shape == (N_TEST, S, S, 1)
    np.testing.assert_array_equal(scorer.test_labels, np.arange(N_TEST) % K)
    info = scorer.info()
    assert info["num_test"] == N_TEST and info["num_train"] == 6 and info["train_seed"] == 0
    assert info["classifier_test_size"] == N_TEST and info["num_classes"] == K
    assert 0.0 <= scorer.classifier_test_accuracy <= 1.0


def test_test_reference_scored_against_itself(scorer):
    """The test reference's own images: FID 0 (the same features), KID the closed form of a set
    against itself, precision = recall = 1 (every point lies in its own ball), hf_energy 1,
    class accuracy = the classifier's test accuracy (the test split is all of the reference)."""
    images = scorer.test_images_uint8.astype(np.float32) / 127.5 - 1.0
    feats = scorer.features(images)
    np.testing.assert_array_equal(feats, scorer.test_features)
    out = scorer(images, scorer.test_labels, pool=feats)
    assert set(out) == KEYS and all(isinstance(v, float) for v in out.values())
    tr = np.trace(np.cov(scorer.test_features.astype(np.float64), rowvar=False))
    assert abs(out["fid"]) < 1e-6 * tr
    assert out["fid_train"] > 1e-3 * tr  # another set of images is not at distance 0
    assert out["kid"] == pytest.approx(_kid_of_a_set_with_itself(scorer.test_features), rel=1e-6)
    assert out["kid_se"] == 0.0  # one subset = the whole of both sets
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["hf_energy"] == pytest.approx(1.0, rel=1e-12)
    assert out["class_accuracy"] == scorer.classifier_test_accuracy
    # without pool= the features are computed: the same numbers
    assert scorer(images, scorer.test_labels)["fid"] == pytest.approx(out["fid"], abs=1e-9)


def test_scores_react_to_the_images(scorer):
    """Wrong labels lower class accuracy; flat grey images lose their high frequencies."""
    images = scorer.test_images_uint8.astype(np.float32) / 127.5 - 1.0
    flat = np.zeros_like(images)
    feats = scorer.features(flat)
    out = scorer(flat, scorer.test_labels, pool=feats)
    assert out["hf_energy"] == pytest.approx(0.0, abs=1e-12)
    assert out["fid"] > 1e-3 * np.trace(np.cov(scorer.test_features, rowvar=False))
    right = scorer(images, scorer.test_labels, pool=scorer.test_features)["class_accuracy"]
    wrong = scorer(images, (scorer.test_labels + 1) % K, pool=scorer.test_features)
    assert wrong["class_accuracy"] <= 1.0 - right + 1e-12  # right and wrong are disjoint


def test_cache_is_reused(data_dir, params, tmp_path, monkeypatch):
    calls = {"features": 0, "train": 0}
    extract, train = metrics.extract_features, classifier.train

    def counting_extract(*a, **kw):
        calls["features"] += 1
        return extract(*a, **kw)

    def counting_train(*a, **kw):
        calls["train"] += 1
        return train(*a, **kw)

    monkeypatch.setattr(metrics, "extract_features", counting_extract)
    monkeypatch.setattr(classifier, "train", counting_train)
    first = _scorer(data_dir, params, tmp_path)
    assert calls == {"features": 2, "train": 1}  # test and train references, one classifier
    second = _scorer(data_dir, params, tmp_path)
    assert calls == {"features": 2, "train": 1}  # all from the cache
    np.testing.assert_array_equal(second.test_features, first.test_features)
    assert second.classifier_test_accuracy == first.classifier_test_accuracy
    # another test reference size is another set of images: only its features are computed
    third = _scorer(data_dir, params, tmp_path, num_test=6)
    assert calls == {"features": 3, "train": 1}
    np.testing.assert_allclose(third.test_features, first.test_features[:6], rtol=1e-5, atol=1e-5)
    # other classifier settings: a new classifier, no new features
    _scorer(data_dir, params, tmp_path, classifier_settings=classifier.TrainSettings(num_steps=2))
    assert calls == {"features": 3, "train": 2}
    assert len(list(tmp_path.glob("*.npz"))) == 5


def test_errors_name_the_problem(data_dir, params, scorer, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        _scorer(str(tmp_path / "missing"), params, tmp_path)
    with pytest.raises(ValueError, match=r"num_test=9 .* has 8"):
        _scorer(data_dir, params, tmp_path, num_test=9)
    with pytest.raises(ValueError, match="data.name='idx'"):
        RealImageScorer(dict(name="synthetic"), inception_params=params, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one of inception_path"):
        RealImageScorer(_data(data_dir), cache_dir=str(tmp_path))
    rgb = np.zeros((5, S, S, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(N, 12, 12, 1\)"):
        scorer(rgb, np.zeros(5, int))
    with pytest.raises(ValueError, match="labels of shape"):
        scorer(np.zeros((5, S, S, 1), np.float32), np.zeros(4, int))
