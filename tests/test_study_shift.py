"""The study's noise shift on any image data: the real images of ``config.data``
(``data.pipeline.real_images``), the study estimator saved in and reused from the workdir, and
the classifier-NAG sampler that uses it, on a tiny IDX dataset (1 channel) and a tiny SiT (CPU).

Time conventions: SiT float t (0 = noise, 1 = data); reported levels are noise levels (1 = pure
noise).
"""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nag_jax.analysis import sampler_shift
from nag_jax.config import schema
from nag_jax.data.idx import write_idx
from nag_jax.data.pipeline import real_images
from nag_jax.evaluation.guidance_rows import Row
from nag_jax.sampling import build, generate
from tests.fixtures import tiny_config

N_TRAIN, SIDE, K = 20, 6, 4  # 6x6 records padded to the model's 8x8


def _write_data(root) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8)
    labels = (np.arange(N_TRAIN) * 3 % K).astype(np.uint8)  # every class, not in blocks
    os.makedirs(root, exist_ok=True)
    write_idx(os.path.join(root, "train-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"), labels)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"), images[:4])
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"), labels[:4])
    return images, labels


def _expected(images: np.ndarray, channels: int) -> np.ndarray:
    """Records as the model sees them, by hand: 1-pixel zero border (6 -> 8), x / 127.5 - 1."""
    out = np.full((len(images), SIDE + 2, SIDE + 2, channels), -1.0, np.float32)
    out[:, 1:-1, 1:-1, :] = (images.astype(np.float32) / 127.5 - 1.0)[..., None]
    return out


def _config(root, channels: int = 1):
    c = tiny_config()
    c.model.update(in_channels=channels, num_classes=K)
    c.data.update(name="idx", data_dir=str(root), image_size=8, channels=channels, num_classes=K)
    schema.validate(c)
    return c


def _which_records(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The record index of each returned image (each must equal exactly one record)."""
    eq = np.all(got[:, None] == expected[None], axis=(2, 3, 4))  # (N, N_TRAIN)
    assert np.all(eq.sum(1) == 1), "every real image is exactly one record of the data"
    return eq.argmax(1)


def test_real_images_are_records_of_the_idx_data(tmp_path):
    images, labels = _write_data(tmp_path)
    c = _config(tmp_path)
    keys = 2**42 + np.arange(N_TRAIN)
    out = real_images(c.data, keys)
    assert out["image"].shape == (N_TRAIN, 8, 8, 1) and out["image"].dtype == np.float32
    assert out["image"].min() >= -1.0 and out["image"].max() <= 1.0
    rec = _which_records(out["image"], _expected(images, 1))
    assert sorted(rec) == list(range(N_TRAIN))  # N consecutive keys: every record once
    np.testing.assert_array_equal(out["label"], labels[rec])
    again = real_images(c.data, keys)  # deterministic: the same images for the same keys
    np.testing.assert_array_equal(again["image"], out["image"])
    # class-matched: example n is a record of class wanted[n]; keys fewer than the class's
    # count (5) apart are distinct records
    wanted = np.array([3, 0, 3, 1, 3, 2])
    out = real_images(c.data, 2**43 + np.arange(6), wanted)
    rec = _which_records(out["image"], _expected(images, 1))
    np.testing.assert_array_equal(labels[rec], wanted)
    np.testing.assert_array_equal(out["label"], wanted)
    assert len(set(rec[wanted == 3])) == 3
    # three channels: the grey record repeated
    c3 = _config(tmp_path, channels=3)
    out3 = real_images(c3.data, keys)
    assert out3["image"].shape == (N_TRAIN, 8, 8, 3)
    _which_records(out3["image"], _expected(images, 3))
    with pytest.raises(ValueError, match="no record of class 7"):
        real_images(c.data, [0], [7])


def test_real_images_of_shapes_are_the_rendered_shapes():
    # the demo study's real images (its numbers must not change): ShapesDataset(size, K,
    # seed=synthetic_seed).render_batch(indices, labels)
    from nag_jax.data.synthetic import ShapesDataset

    c = tiny_config()
    keys, labels = 2**43 + np.arange(5), np.array([0, 3, 1, 1, 2])
    ds = ShapesDataset(8, 4, seed=int(c.data.synthetic_seed))
    out = real_images(c.data, keys, labels)
    np.testing.assert_array_equal(out["image"], ds.render_batch(keys, labels)["image"])
    assert out["image"].shape == (5, 8, 8, 3)


def _random_params(c, model):
    """Re-randomised weights (a fresh SiT outputs zero)."""
    x = jnp.zeros((1, 8, 8, c.model.in_channels))
    params = model.init(jax.random.key(0), x, jnp.zeros(1), jnp.zeros(1, jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, p.shape) * 0.1 for k, p in zip(keys, leaves)]
    )


def _study():
    return ml_collections.ConfigDict(
        dict(
            estimator=dict(num_bins=10, hidden=16, depth=1, num_steps=12, batch_size=8, lr=1e-3),
            estimator_pool=16,
            estimator_seed=0,
            max_states=3,
            late=0.25,
        )
    )


ROWS = (
    Row("none"),
    Row("NAG", 1.0, 1.0, (0.0, 1.0)),
    types.SimpleNamespace(  # a row object with nag_mode (Row has none: getattr default)
        name="cls-NAG", cfg_scale=1.0, nag_scale=1.0, nag_interval=(0.0, 0.6), nag_mode="classifier"
    ),
)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    _write_data(root)
    c = _config(root)
    model = build.build_model(c.model)
    params = _random_params(c, model)
    workdir = str(tmp_path_factory.mktemp("study"))
    out = sampler_shift.rows_shift(c, model, params, ROWS, (0, 1), 4, _study(), workdir=workdir)
    return types.SimpleNamespace(c=c, model=model, params=params, workdir=workdir, out=out)


@pytest.mark.slow  # ~1 min on the loaded 2-core machine (estimator + 3 sampler compiles)
def test_rows_shift_on_idx_saves_the_estimator_and_reuses_it(study_run):
    r = study_run
    assert set(r.out["rows"]) == {"none", "NAG", "cls-NAG"}
    for row in r.out["rows"].values():
        assert set(row) == {"levels", "delta_mean", "delta_se", "late", "all"}
        # ODE of 4 steps: states at t = 0, 0.5, 1 kept -> noise levels 1, 0.5, 0
        np.testing.assert_allclose(row["levels"], [1.0, 0.5, 0.0], atol=1e-6)
        assert len(row["delta_mean"]) == len(row["delta_se"]) == 3
        assert np.all(np.isfinite(row["delta_mean"])) and np.all(np.isfinite(row["delta_se"]))
    # the classifier row is guided (its trajectory, hence its shift, differs from none's)
    assert r.out["rows"]["cls-NAG"]["delta_mean"][-1] != pytest.approx(
        r.out["rows"]["none"]["delta_mean"][-1]
    )
    info = r.out["estimator"]
    path = os.path.join(r.workdir, "estimator")
    assert info["trained_here"] is True and info["path"] == path and os.path.isdir(path)
    assert 0.0 <= info["mean_abs_err"] <= 1.0
    stamps = {f: os.path.getmtime(f) for f in _files(path)}
    again = sampler_shift.rows_shift(
        r.c, r.model, r.params, ROWS[:1], (0, 1), 4, _study(), workdir=r.workdir
    )
    assert again["estimator"]["trained_here"] is False
    assert {f: os.path.getmtime(f) for f in _files(path)} == stamps  # not rewritten
    assert again["estimator"]["final_loss"] == info["final_loss"]
    assert again["rows"]["none"] == r.out["rows"]["none"]  # the same g measures the same shift
    # a saved estimator of other settings is refused, not silently used
    other = _study()
    other.estimator.num_bins = 12
    with pytest.raises(ValueError, match="delete it to train a new one"):
        sampler_shift.study_estimator(r.c, other, r.workdir)


def _files(path):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.slow  # ~30 s (two sampler compiles)
def test_saved_study_estimator_guides_the_classifier_sampler(study_run):
    r = study_run
    est, path, info = sampler_shift.study_estimator(r.c, _study(), r.workdir)
    assert info["trained_here"] is False and path == os.path.join(r.workdir, "estimator")
    idx = np.arange(3)
    keys, labels = generate.image_keys(5, idx), jnp.asarray(idx % K, jnp.int32)
    c = r.c.copy_and_resolve_references()
    c.sample.update(nag_mode="classifier", estimator=path, nag_scale=2.0, nag_interval=(0, 0.6))
    schema.validate(c)
    guided = np.asarray(jax.jit(build.build_sampler(c, r.model))(r.params, keys, labels))
    c.sample.update(nag_scale=0.0)
    plain = np.asarray(jax.jit(build.build_sampler(c, r.model))(r.params, keys, labels))
    assert guided.shape == plain.shape == (3, 8, 8, 1)
    assert np.all(np.isfinite(guided))
    assert np.abs(guided - plain).max() > 1e-3
