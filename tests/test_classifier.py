"""The small CNN classifier (nag_jax.evaluation.classifier): training on arrays learns a trivially
separable task, the .npz cache round-trips, bad labels are refused."""

import jax
import numpy as np
import pytest

from nag_jax.evaluation import classifier


def _data(n, seed):
    """Class 0: left half bright; class 1: right half bright (grey, 8x8), plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(-0.5, 0.1, (n, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, :, 4 * c : 4 * c + 4] += 1.0
    return np.clip(x, -1, 1), labels


def test_train_on_arrays_learns_and_is_deterministic():
    x, y = _data(64, 0)
    settings = classifier.TrainSettings(num_steps=30, batch_size=16, lr=3e-3, seed=2)
    params, loss = classifier.train_on_arrays(x, y, 2, settings)
    xt, yt = _data(64, 1)
    assert classifier.accuracy(params, 2, xt, yt) == 1.0
    assert np.isfinite(loss)
    again, _ = classifier.train_on_arrays(x, y, 2, settings)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert classifier.features(params, 2, xt).shape == (64, classifier.FEATURE_DIM)


def test_npz_round_trip(tmp_path):
    x, y = _data(8, 0)
    params, _ = classifier.train_on_arrays(x, y, 2, classifier.TrainSettings(num_steps=1))
    path = classifier.save_npz(tmp_path / "c.npz", params, accuracy=0.75)
    loaded, scalars = classifier.load_npz(path)
    assert scalars == {"accuracy": 0.75}
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_labels_and_settings_are_refused():
    x, y = _data(8, 0)
    with pytest.raises(ValueError, match=r"labels span \[0, 2\] but num_classes=2"):
        classifier.train_on_arrays(x, np.where(y == 1, 2, 0), 2)
    with pytest.raises(ValueError, match="num_steps=0"):
        classifier.TrainSettings(num_steps=0)
