"""Small shared helpers: image conversion and grids.

Images are NHWC with pixel values in [-1, 1]. The uint8 conversion used everywhere in the project
(PNG grids, ADM-format .npz samples, evaluation) is

    to_uint8(x) = clip(round(127.5 * x + 127.5), 0, 255)

which maps -1 -> 0, 1 -> 255 and 0 -> 128 (round half to even at 127.5 -> 128).
"""

from __future__ import annotations

import numpy as np


def to_uint8(images) -> np.ndarray:
    """Converts images in [-1, 1] (any float array, NHWC) to uint8 with the project's rule."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.round(127.5 * x + 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tiles uint8 images (N, H, W, C) into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) image."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (N, H, W, C) images, got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full(
        (nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=images.dtype
    )
    for i in range(n):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    return grid


def save_png(path, image: np.ndarray) -> None:
    """Writes a uint8 (H, W, C) image with C in {1, 3} as PNG at ``path`` (local or gs:// /
    s3://, nag_jax.storage.paths), atomically (write + rename), creating its folder."""
    from PIL import Image

    from nag_jax.storage.paths import atomic_write

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def import_tensorflow(what: str):
    """TensorFlow for data (tfds) or TensorBoard, with its GPUs hidden so it never takes
    accelerator memory from JAX (as the Flax examples do). The one place the project imports TF;
    call it before ``import tensorflow_datasets``. Raises MissingDependencyError naming the
    ``[data]`` extra when TF is not installed (Colab's preinstalled TF works as it is)."""
    import contextlib
    import os

    from nag_jax.errors import require

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines (oneDNN, CPU flags)
    tf = require("tensorflow", what=what, extra="data")
    # RuntimeError: TF's runtime already started (its devices are fixed); nothing left to do.
    with contextlib.suppress(RuntimeError):
        tf.config.experimental.set_visible_devices([], "GPU")
    return tf


def progress_bar(
    iterable=None, total: int | None = None, *, desc: str, unit: str = "img", **kwargs
):
    """A tqdm bar (count, rate, ETA) on stderr: iterate over it (``iterable`` given), or
    ``bar.update(n)`` per batch and ``bar.close()`` at the end (or use it as a context manager).
    Silent on processes other than 0 and when ``NAG_JAX_NO_PROGRESS=1``; in a log file (stderr
    not a terminal) it redraws at most every 30 s so the file stays short. ``tqdm.auto`` draws a
    widget in notebooks."""
    import os
    import sys

    from tqdm.auto import tqdm

    jax = sys.modules.get("jax")  # never import JAX here (converters run without starting it)
    disable = os.environ.get("NAG_JAX_NO_PROGRESS") == "1" or (
        jax is not None and jax.process_index() > 0
    )
    tty = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        disable=disable,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=True,
        file=sys.stderr,
        **kwargs,
    )


def sha256_file(path, *, progress: bool = False, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file (local or remote): ``nag_jax.storage.manifest.sha256_file``, with
    ``progress``: a tqdm bar in bytes (large weight files)."""
    from nag_jax.storage.manifest import sha256_file as sha256
    from nag_jax.storage.paths import as_path

    if not progress:
        return sha256(path, chunk=chunk)
    size = as_path(path).stat().length
    with progress_bar(total=size, desc="sha256", unit="B") as bar:
        return sha256(path, bar=bar, chunk=chunk)


def moved_names(module: str, moved: dict[str, str]):
    """A module ``__getattr__`` for names that moved: ``module.name`` raises an AttributeError
    naming the new home (``moved[name]``), e.g. ``__getattr__ = moved_names(__name__, {...})``."""

    def __getattr__(name: str):
        if name in moved:
            raise AttributeError(f"{module}.{name} moved: use {moved[name]}")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
