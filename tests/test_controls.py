"""The trivial controls (nag_jax.evaluation.controls): the Laplacian energy on images whose value
is known by hand, the unsharp mask and the noise, and the bisection that matches their energy."""

import jax
import numpy as np
import pytest

from nag_jax.evaluation import controls


def test_laplacian_energy_of_constant_and_linear_ramp_is_zero():
    const = np.full((2, 6, 7, 3), 0.3, np.float32)
    yy, xx = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    ramp = (0.05 * yy - 0.1 * xx + 0.2)[None, :, :, None].astype(np.float32)
    assert controls.laplacian_energy(const) == pytest.approx(0.0, abs=1e-12)
    assert controls.laplacian_energy(ramp) == pytest.approx(0.0, abs=1e-12)


def test_laplacian_energy_of_one_bright_pixel_by_hand():
    """A 5x5 zero image with value 1 at the centre: the 3x3 interior holds L = -4 at the centre
    and 1 at its 4 neighbours, 0 at the 4 corners: energy (16 + 4) / 9. A pixel on the border
    (not interior) contributes only to its one interior neighbour: L = 1 there, energy 1 / 9."""
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    assert controls.laplacian_energy(x) == pytest.approx(20 / 9)
    edge = np.zeros((1, 5, 5, 1), np.float32)
    edge[0, 0, 2, 0] = 1.0
    assert controls.laplacian_energy(edge) == pytest.approx(1 / 9)
    # the mean runs over images and channels too: a second, blank channel halves it
    two = np.concatenate([x, np.zeros_like(x)], axis=-1)
    assert controls.laplacian_energy(two) == pytest.approx(10 / 9)
    np.testing.assert_allclose(
        controls.laplacian_energy_per_image(np.concatenate([x, edge])), [20 / 9, 1 / 9]
    )


def test_iid_noise_energy_is_twenty_sigma_squared():
    """Var(L) = (1 + 1 + 1 + 1 + 16) sigma^2 for i.i.d. noise; a constant at 0 with sigma 0.1
    stays inside [-1, 1] (10 sigma), so the clip does nothing. 64 x 30 x 30 x 1 = 57600 interior
    values (neighbouring L are correlated; the relative SE is still about 1%): 5% tolerance."""
    sigma = 0.1
    x = np.zeros((64, 32, 32, 1), np.float32)
    noisy = controls.add_noise(x, sigma, jax.random.key(0))
    assert np.abs(noisy).max() < 1.0  # no clipping happened
    assert controls.laplacian_energy(noisy) == pytest.approx(20 * sigma**2, rel=0.05)
    # same key, same noise; another key, other noise
    np.testing.assert_array_equal(noisy, controls.add_noise(x, sigma, jax.random.key(0)))
    assert not np.array_equal(noisy, controls.add_noise(x, sigma, jax.random.key(1)))


def test_add_noise_clips_to_the_image_range():
    x = np.full((2, 4, 4, 1), 0.95, np.float32)
    out = controls.add_noise(x, 1.0, jax.random.key(3))
    assert out.max() == 1.0 and out.min() >= -1.0


def test_unsharp_mask_identity_and_constant():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 8, 9, 2)).astype(np.float32)
    np.testing.assert_array_equal(controls.unsharp_mask(x, 0.0), x)
    const = np.full((2, 5, 5, 1), -0.4, np.float32)
    np.testing.assert_allclose(controls.unsharp_mask(const, 3.0), const, atol=1e-7)


def test_unsharp_mask_of_one_bright_pixel_by_hand():
    """Blur of a centred unit pixel: the outer product of [1, 2, 1] / 4, i.e. 1/4 at the centre,
    1/8 at the 4 neighbours, 1/16 at the corners. x + a (x - blur) with a = 0.4 at the centre:
    1 + 0.4 * 3/4 = 1.3 -> clipped to 1; a neighbour: -0.4 / 8 = -0.05."""
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    out = controls.unsharp_mask(x, 0.4)[0, :, :, 0]
    assert out[2, 2] == 1.0
    assert out[1, 2] == pytest.approx(-0.05) and out[2, 3] == pytest.approx(-0.05)
    assert out[1, 1] == pytest.approx(-0.4 / 16) and out[0, 0] == 0.0


def test_binomial_blur_replicates_the_edges():
    """A column ramp 0, 1, 2, 3 (x 0.1) along W: inside, the blur of a linear ramp is the ramp;
    at the edges the replicated pixel pulls it in: (3 * 0 + 1) / 4 and (3 * 3 + 2) / 4."""
    x = np.tile(0.1 * np.arange(4, dtype=np.float32), (1, 3, 1))[..., None]
    out = controls.binomial_blur(x)[0, 1, :, 0]
    np.testing.assert_allclose(out, 0.1 * np.array([0.25, 1.0, 2.0, 2.75]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["unsharp", "noise"])
def test_match_strength_hits_the_target(kind):
    rng = np.random.default_rng(1)
    x = np.clip(rng.normal(0, 0.2, size=(8, 12, 12, 1)), -1, 1).astype(np.float32)
    x = controls.binomial_blur(x)  # a smooth start, so both transforms have room to add energy
    key = jax.random.key(7)
    if kind == "unsharp":
        transform, hi = controls.unsharp_mask, 8.0
    else:
        transform, hi = (lambda im, s: controls.add_noise(im, s, key)), 0.5
    base = controls.laplacian_energy(x)
    target = 2.5 * base
    s = controls.match_strength(transform, x, target, lo=0.0, hi=hi, iters=40)
    assert 0.0 < s < hi
    assert controls.laplacian_energy(transform(x, s)) == pytest.approx(target, rel=1e-6)


def test_match_strength_out_of_range_names_the_values():
    x = controls.binomial_blur(np.random.default_rng(2).uniform(-0.5, 0.5, (4, 8, 8, 1)))
    e0 = controls.laplacian_energy(x)
    with pytest.raises(ValueError, match=r"outside the range .* \[lo=0.0, hi=0.5\]"):
        controls.match_strength(controls.unsharp_mask, x, 0.5 * e0, lo=0.0, hi=0.5)
    with pytest.raises(ValueError, match="widen"):
        controls.match_strength(controls.unsharp_mask, x, 1e6, lo=0.0, hi=0.5)


def test_hf_energy_ratio():
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    assert controls.hf_energy_ratio(0.5 * x, x) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="energy 0"):
        controls.hf_energy_ratio(x, np.zeros_like(x))


def test_blur_is_a_mix_of_the_image_and_its_binomial_blur():
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    np.testing.assert_array_equal(controls.blur(x, 0.0), x)
    full = controls.blur(x, 1.0)
    # [1, 2, 1] / 4 in each direction: the centre keeps 1/4, edge neighbours 1/8, corners 1/16
    assert full[0, 2, 2, 0] == pytest.approx(0.25)
    assert full[0, 1, 2, 0] == pytest.approx(0.125) and full[0, 1, 1, 0] == pytest.approx(0.0625)
    np.testing.assert_allclose(controls.blur(x, 0.5), 0.5 * x + 0.5 * full, atol=1e-7)
    assert controls.laplacian_energy(full) < controls.laplacian_energy(x)
    with pytest.raises(ValueError, match="0 <= amount <= 1"):
        controls.blur(x, 1.5)
    np.testing.assert_array_equal(controls.apply("blur", x, 1.0), full)
