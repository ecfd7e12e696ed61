"""Image preprocessing shared by every image source: ADM centre crop, flips, [-1, 1] scaling.

Images are HWC uint8 on input (any size), HWC float32 in [-1, 1] on output (NHWC when batched).
No time convention here (data only).

- ``center_crop_arr(image, size)``: the ADM / DiT-release centre crop. While the shorter side is
  >= 2 * size, downsample by 2 with a BOX filter (each side ``//= 2``); then resize with BICUBIC so
  that the shorter side equals ``size`` (the other side ``round(side * size / short)``); then take
  the central ``size x size`` crop (offset ``(side - size) // 2``).
- ``flip_decisions(seed, epoch, indices)``: deterministic horizontal-flip coin per
  (seed, epoch, record index), independent of batch size, worker count and process layout.
- ``to_float(uint8)`` = ``x / 127.5 - 1`` (the inverse of ``nag_jax.utils.to_uint8`` on the
  uint8 grid).
"""

from __future__ import annotations

import numpy as np

from nag_jax.data.synthetic import hash_uniform

_FLIP_SALT = 0x5F1B_C0DE


def center_crop_arr(image, image_size: int) -> np.ndarray:
    """ADM centre crop of an RGB image (PIL image or HWC uint8 array) -> (S, S, 3) uint8."""
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    while min(*pil.size) >= 2 * image_size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = image_size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def to_float(image_uint8) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (x / 127.5 - 1), any shape."""
    return np.asarray(image_uint8, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def flip_decisions(seed: int, epoch, indices) -> np.ndarray:
    """(N,) bool: flip record `indices[n]` in `epoch[n]` (broadcast) for this seed (p = 0.5)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    epoch = np.broadcast_to(np.asarray(epoch, dtype=np.int64), indices.shape)
    # Mix the epoch into the counter; records < 2**40 and epochs < 2**23 never collide.
    counter = indices + (epoch << np.int64(40))
    return hash_uniform(int(seed) ^ _FLIP_SALT, counter, 1)[:, 0] < 0.5
