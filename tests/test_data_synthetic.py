"""Tests for the built-in coloured-shapes dataset (nag_jax.data.synthetic)."""

import numpy as np
import pytest

from nag_jax.data.synthetic import (
    COLOUR_VALUES,
    COLOURS,
    SHAPES,
    ShapesDataset,
    hash_uniform,
    render_shapes,
)


def test_deterministic_and_order_independent():
    ds = ShapesDataset(image_size=16, num_classes=16, seed=3)
    idx = np.array([0, 7, 123, 4096, 99])
    a = ds.render_batch(idx)
    b = ShapesDataset(image_size=16, num_classes=16, seed=3).render_batch(idx[::-1])
    np.testing.assert_array_equal(a["image"], b["image"][::-1])
    # __getitem__ equals the vectorised path, element by element.
    for j, i in enumerate(idx):
        ex = ds[int(i)]
        np.testing.assert_array_equal(ex["image"], a["image"][j])
        assert ex["label"] == a["label"][j] == i % 16
        assert ex["label"].dtype == np.int32
    # Another seed gives other pixels.
    c = ShapesDataset(image_size=16, num_classes=16, seed=4).render_batch(idx)
    assert np.abs(a["image"] - c["image"]).mean() > 0.05


def test_shapes_dtypes_range_and_names():
    ds = ShapesDataset(image_size=32, seed=0, size=100)
    b = ds.render_batch(np.arange(64))
    assert b["image"].shape == (64, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (64,) and b["label"].dtype == np.int32
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    assert len(ds) == 100 and len(ds.class_names) == 16
    assert ds.class_names[0] == "red disk" and ds.class_names[15] == "yellow cross"
    with pytest.raises(IndexError, match="out of range"):
        ds[100]


def test_hash_uniform_is_uniform_and_independent():
    u = hash_uniform(0, np.arange(20000), 13)
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_allclose(u.mean(0), 0.5, atol=0.01)
    corr = np.corrcoef(u.T)
    assert np.abs(corr - np.eye(13)).max() < 0.05


def test_class_colour_is_the_dominant_colour():
    """Per class, the mean colour of the shape pixels is close to the class colour."""
    ds = ShapesDataset(image_size=32, num_classes=16, seed=0)
    b = ds.render_batch(np.arange(16 * 20))
    means = []
    for c in range(16):
        imgs = b["image"][b["label"] == c]
        sat = imgs.max(-1) - imgs.min(-1)  # shape pixels are saturated, background is grey
        pix = imgs[sat > 1.0]
        assert pix.shape[0] > 20 * 20  # the shape occupies a good number of pixels
        mean = pix.mean(0)
        np.testing.assert_allclose(mean, COLOUR_VALUES[c % 4], atol=0.15)
        means.append(mean)
    means = np.array(means)
    # Classes of different colours have mean colours far apart.
    for i in range(16):
        for j in range(16):
            if i % 4 != j % 4:
                assert np.linalg.norm(means[i] - means[j]) > 1.0


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_shape_area_matches_closed_form(shape):
    """Covered area (sum of anti-aliased coverage) vs the closed-form area of each shape."""
    n, size = 16, 64
    u = np.full((n, 13), 0.5)
    u[:, 0] = np.linspace(0, 1, n)  # radius from 0.22 to 0.36 x size
    labels = np.full(n, shape * len(COLOURS))  # red
    img = render_shapes(labels, u, size)
    # Background is exactly grey-level 0 with these uniforms (no tint, no gradient), red is
    # (0.9, -0.8, -0.8) with zero jitter, so the red channel is 0.9 * coverage.
    coverage = img[..., 0] / np.float32(0.9)
    area = coverage.sum((1, 2))
    r = size * (0.22 + 0.14 * u[:, 0])
    expected = {
        "disk": np.pi * r**2,
        "square": (1.64 * r) ** 2,
        "triangle": 3 * np.sqrt(3) / 4 * (1.15 * r) ** 2,
        "cross": 2 * (2 * r) * (0.64 * r) - (0.64 * r) ** 2,
        "ring": np.pi * (r**2 - (0.44 * r) ** 2),
    }[SHAPES[shape]]
    np.testing.assert_allclose(area, expected, rtol=0.03)


def test_same_jitter_different_shapes_differ():
    ds = ShapesDataset(image_size=16, num_classes=20, seed=1)
    idx = np.full(5, 11)
    imgs = ds.render_batch(idx, labels=np.arange(5) * 4)["image"]  # red: disk..ring
    masks = imgs[..., 0] - imgs[..., 1] > 0.8
    for i in range(5):
        for j in range(i + 1, 5):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.85, (SHAPES[i], SHAPES[j], iou)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes=21"):
        ShapesDataset(num_classes=21)
    ds = ShapesDataset(num_classes=4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        ds.render_batch([0, 1], labels=[0, 5])


def test_recoloured_variant_keeps_geometry_and_background_and_changes_only_the_colour():
    """Same index -> same background and shape mask; inside the shape the colour is the new
    table's (+- the 0.12 jitter) where the shape covers the pixel fully."""
    from nag_jax.data.synthetic import VARIANTS, ShapesDataset

    idx = np.arange(32)
    base = ShapesDataset(16, 16).render_batch(idx)["image"]
    new_ds = ShapesDataset(16, 16, variant="recoloured")
    new = new_ds.render_batch(idx)["image"]
    changed = np.abs(new - base).sum(-1) > 1e-6  # (N, H, W) the shape's pixels
    assert changed.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(new[~changed], base[~changed])
    colours = VARIANTS["recoloured"][1]
    for i in range(len(idx)):
        strength = np.abs(new[i] - base[i]).sum(-1)
        y, x = np.unravel_index(np.argmax(strength), strength.shape)
        expected = np.clip(colours[idx[i] % 4], -1, 1)
        assert np.abs(new[i, y, x] - expected).max() <= 0.12 + 1e-5
    assert new_ds.class_names[:2] == ["orange disk", "purple disk"]
    with pytest.raises(ValueError, match="synthetic_variant"):
        ShapesDataset(16, 16, variant="sepia")
