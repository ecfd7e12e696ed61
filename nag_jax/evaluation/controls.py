"""Trivial image transforms that guidance must beat, and the high-frequency energy that pairs them.

A guidance method that only sharpens images, or only adds grain, raises their high-frequency
content; a sharpening filter or added noise of the SAME high-frequency energy is the control it
has to beat. The energy is that of the 4-neighbour Laplacian:

    L[i, j] = x[i-1, j] + x[i+1, j] + x[i, j-1] + x[i, j+1] - 4 x[i, j]

over the interior pixels only (the "valid" region, no padding), per channel; the energy is the
mean of L^2 over images, channels and interior pixels. A constant or linear image has energy 0;
i.i.d. noise of standard deviation sigma has 20 sigma^2 (1 + 1 + 1 + 1 + 16).

Images are NHWC float in [-1, 1] (numpy or jax; the results are numpy float32 images and Python
floats, energies computed in float64). `match_strength` finds, by bisection, the strength of a
transform whose output has a target energy (e.g. that of guided samples).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np


def _check_images(images, name: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] < 3 or x.shape[2] < 3:
        raise ValueError(
            f"{name}: expected (N, H, W, C) images with H, W >= 3 (the Laplacian's valid region), "
            f"got shape {x.shape}"
        )
    return x


def laplacian_energy_per_image(images) -> np.ndarray:
    """(N,) float64: per image, the mean over channels and interior pixels ((H-2) x (W-2)) of the
    squared 4-neighbour Laplacian. images: (N, H, W, C) float."""
    x = _check_images(images).astype(np.float64)
    lap = (
        x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4.0 * x[:, 1:-1, 1:-1]
    )
    return np.mean(lap * lap, axis=(1, 2, 3))


def laplacian_energy(images) -> float:
    """Mean over images, channels and interior pixels of the squared 4-neighbour Laplacian
    (kernel [[0, 1, 0], [1, -4, 1], [0, 1, 0]], valid region). images: (N, H, W, C) float."""
    return float(np.mean(laplacian_energy_per_image(images)))


def hf_energy_ratio(images, real_images) -> float:
    """laplacian_energy(images) / laplacian_energy(real_images): 1 = as sharp as real images,
    > 1 sharper / noisier, < 1 smoother. Both (N, H, W, C) float in [-1, 1]."""
    ref = laplacian_energy(real_images)
    if not ref > 0:
        raise ValueError(
            f"real images have Laplacian energy {ref}: constant or linear images give no "
            "reference for a ratio"
        )
    return laplacian_energy(images) / ref


def binomial_blur(images) -> np.ndarray:
    """3x3 binomial blur ([1, 2, 1] / 4 along H, then along W), edge-replicate padding.
    (N, H, W, C) -> (N, H, W, C) float32."""
    x = _check_images(images).astype(np.float32)
    p = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    x = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]


def unsharp_mask(images, amount: float) -> np.ndarray:
    """clip(x + amount * (x - binomial_blur(x)), -1, 1): (N, H, W, C) float32. amount 0 is the
    identity (inside [-1, 1]); larger amounts sharpen more."""
    x = _check_images(images).astype(np.float32)
    if not amount >= 0:
        raise ValueError(f"unsharp_mask amount={amount!r}: expected >= 0 (0 = identity)")
    return np.clip(x + np.float32(amount) * (x - binomial_blur(x)), -1.0, 1.0)


def blur(images, amount: float) -> np.ndarray:
    """(1 - amount) x + amount binomial_blur(x): a partial 3x3 blur, amount in [0, 1] (0 is the
    identity, 1 the full blur); lowers the high-frequency energy. (N, H, W, C) float32."""
    x = _check_images(images).astype(np.float32)
    if not 0 <= amount <= 1:
        raise ValueError(f"blur amount={amount!r}: expected 0 <= amount <= 1 (0 = identity)")
    a = np.float32(amount)
    return (1 - a) * x + a * binomial_blur(x)


def add_noise(images, sigma: float, key) -> np.ndarray:
    """clip(x + sigma * eps, -1, 1) with eps ~ N(0, 1) i.i.d. per pixel and channel, drawn from
    ``key`` (the same key gives the same noise): (N, H, W, C) float32."""
    x = _check_images(images).astype(np.float32)
    if not sigma >= 0:
        raise ValueError(f"add_noise sigma={sigma!r}: expected >= 0 (0 = identity)")
    eps = np.asarray(jax.random.normal(key, x.shape, np.float32))
    return np.clip(x + np.float32(sigma) * eps, -1.0, 1.0)


def match_strength(
    transform: Callable[[np.ndarray, float], np.ndarray],
    images,
    target_energy: float,
    *,
    lo: float,
    hi: float,
    iters: int = 30,
) -> float:
    """The strength s in [lo, hi] with laplacian_energy(transform(images, s)) = target_energy,
    by ``iters`` bisection steps (the energy must increase with s; the interval shrinks to
    (hi - lo) / 2^iters). ``transform(images, s)`` must be deterministic: for the noise control
    close over a fixed key, ``lambda x, s: add_noise(x, s, key)``. Returns the midpoint of the
    final interval. Raises ValueError when the target lies outside [energy(lo), energy(hi)].
    images: (N, H, W, C) float in [-1, 1]."""
    if not lo < hi:
        raise ValueError(f"match_strength needs lo < hi, got lo={lo!r}, hi={hi!r}")

    def energy(s):
        return laplacian_energy(transform(images, s))

    e_lo, e_hi = energy(lo), energy(hi)
    if not e_lo <= target_energy <= e_hi:
        raise ValueError(
            f"target Laplacian energy {target_energy:.6g} is outside the range the transform "
            f"reaches on [lo={lo}, hi={hi}]: [{e_lo:.6g}, {e_hi:.6g}]; widen [lo, hi] (or check "
            "that the energy increases with the strength)"
        )
    for _ in range(int(iters)):
        mid = 0.5 * (lo + hi)
        if energy(mid) < target_energy:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


TRANSFORMS = ("unsharp", "noise", "blur")


def noise_key(seed: int):
    """The noise control's key for images of sampling seed ``seed`` (fixed: a rerun adds the
    same noise)."""
    return jax.random.fold_in(jax.random.key(int(seed)), 0x6E6F6973)


def apply(transform: str, images, strength: float, key=None) -> np.ndarray:
    """A control by name: ``"unsharp"`` (`unsharp_mask`, amount = strength), ``"blur"`` (`blur`,
    amount = strength) or ``"noise"`` (`add_noise`, sigma = strength, needs ``key``).
    (N, H, W, C) float in [-1, 1]."""
    if transform == "unsharp":
        return unsharp_mask(images, strength)
    if transform == "blur":
        return blur(images, strength)
    if transform == "noise":
        if key is None:
            raise ValueError("the noise control needs a key (controls.noise_key(seed))")
        return add_noise(images, strength, key)
    raise ValueError(f"control transform={transform!r}; expected one of {TRANSFORMS}")
