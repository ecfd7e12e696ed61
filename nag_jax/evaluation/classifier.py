"""A small CNN image classifier: one network and one training loop for every dataset.

Used for "class accuracy" (the fraction of generated images that the classifier assigns to the
class they were generated for; its accuracy on held-out REAL images is the ceiling) by the demo's
shapes proxy (``nag_jax.evaluation.proxy``, batches rendered on the fly) and by the real-image
scorer (``nag_jax.evaluation.real_scorer``, batches drawn from arrays).

Images are NHWC float32 in [-1, 1], any size >= 4 and any channel count (1 = grey, 3 = RGB);
labels are int (N,) in [0, num_classes). Training is deterministic given the batches and the seed
(no dropout, no augmentation). Params are cached as an .npz of '/'-joined keys plus scalar
entries ``__name__`` (``save_npz`` / ``load_npz``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from nag_jax.storage.paths import as_path, atomic_write

FEATURE_DIM = 128
ARCH = "cnn4-800"  # part of cache names: bump when the architecture or its training changes


class SmallCNN(nn.Module):
    """(N, H, W, C) images in [-1, 1] -> (features (N, 128), logits (N, num_classes)).

    Four 3x3 convs (widths 32, 64, 64, 128; strides 2, 1, 2, 1; GELU), a global mean pool, a
    128-d dense layer (the features) and a linear head after a GELU."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        for width, stride in ((32, 2), (64, 1), (64, 2), (128, 1)):
            x = nn.gelu(nn.Conv(width, (3, 3), strides=(stride, stride))(x))
        feats = nn.Dense(FEATURE_DIM)(jnp.mean(x, axis=(1, 2)))
        logits = nn.Dense(self.num_classes)(nn.gelu(feats))
        return feats, logits


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How the classifier is trained (every field changes the weights, so every field is part of
    a cache key): AdamW with cosine-decayed ``lr`` over ``num_steps`` batches of ``batch_size``;
    ``seed`` initialises the weights and, for `train_on_arrays`, draws the batches."""

    num_steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        for name in ("num_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"classifier {name}={getattr(self, name)!r}: expected >= 1")
        if not float(self.lr) > 0:
            raise ValueError(f"classifier lr={self.lr!r}: expected > 0")


def train(
    num_classes: int,
    batch_at: Callable[[int], tuple],
    image_shape: tuple[int, int, int],
    settings: TrainSettings = TrainSettings(),
    *,
    name: str = "classifier",
) -> tuple[dict, float]:
    """The training loop: ``settings.num_steps`` AdamW steps of softmax cross-entropy on
    ``batch_at(step)`` -> (images (B, H, W, C) float32 in [-1, 1], labels (B,) int) for step =
    0, 1, ...; weights initialised from ``jax.random.key(settings.seed)`` at ``image_shape``
    (H, W, C). Returns (params, final batch loss)."""
    model = SmallCNN(num_classes)
    params = model.init(jax.random.key(settings.seed), jnp.zeros((1, *image_shape)))["params"]
    tx = optax.adamw(
        optax.cosine_decay_schedule(settings.lr, settings.num_steps),
        weight_decay=settings.weight_decay,
    )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            _, logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.time()
    loss = jnp.nan
    for i in range(settings.num_steps):
        images, labels = batch_at(i)
        params, opt_state, loss = step(params, opt_state, images, labels)
    logging.info(
        "%s: %d steps in %.1fs, final loss %.4f",
        name,
        settings.num_steps,
        time.time() - start,
        float(loss),
    )
    return params, float(loss)


def train_on_arrays(
    images,
    labels,
    num_classes: int,
    settings: TrainSettings = TrainSettings(),
    *,
    name: str = "classifier",
) -> tuple[dict, float]:
    """`train` on arrays: images (N, H, W, C) float32 in [-1, 1], labels (N,) int. Batch ``step``
    is ``settings.batch_size`` indices drawn with replacement by
    ``np.random.default_rng([settings.seed, step])``. Returns (params, final batch loss)."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    if images.ndim != 4 or len(labels) != len(images) or labels.ndim != 1:
        raise ValueError(
            f"classifier training expects images (N, H, W, C) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels span [{labels.min()}, {labels.max()}] but num_classes={num_classes}: "
            "labels must lie in [0, num_classes)"
        )

    def batch_at(step):
        idx = np.random.default_rng([settings.seed, step]).integers(
            0, len(images), settings.batch_size
        )
        return images[idx], labels[idx]

    return train(num_classes, batch_at, images.shape[1:], settings, name=name)


def _apply(params, num_classes, images):
    return SmallCNN(num_classes).apply({"params": params}, images)


_apply_jit = jax.jit(_apply, static_argnums=1)


def predict(params, num_classes: int, images, batch_size: int = 512) -> np.ndarray:
    """Predicted labels (N,) for float images (N, H, W, C) in [-1, 1]."""
    out = [
        np.asarray(jnp.argmax(_apply_jit(params, num_classes, images[i : i + batch_size])[1], -1))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def features(params, num_classes: int, images, batch_size: int = 512) -> np.ndarray:
    """Penultimate features (N, 128) float64 for float images (N, H, W, C) in [-1, 1]."""
    out = [
        np.asarray(_apply_jit(params, num_classes, images[i : i + batch_size])[0], np.float64)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def accuracy(params, num_classes: int, images, labels) -> float:
    """Fraction of images (N, H, W, C) in [-1, 1] whose predicted label equals ``labels`` (N,)."""
    return float(np.mean(predict(params, num_classes, images) == np.asarray(labels)))


def save_npz(path, params, **scalars: float) -> str:
    """Writes ``params`` (nested dict) as an .npz of '/'-joined keys, plus each scalar as
    ``__name__`` (float64), atomically (local or remote path)."""
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in key_path): np.asarray(v)
        for key_path, v in jax.tree_util.tree_leaves_with_path(params)
    }
    extra = {f"__{k}__": np.float64(v) for k, v in scalars.items()}
    return atomic_write(path, lambda f: np.savez(f, **extra, **flat))


def load_npz(path) -> tuple[dict, dict[str, float]]:
    """(params as a nested dict of jnp arrays, {name: float} of the ``__name__`` scalars) from an
    .npz written by `save_npz`."""
    with as_path(path).open("rb") as fh, np.load(fh) as f:
        flat = {k: f[k] for k in f.files}
    scalars = {
        k[2:-2]: float(flat.pop(k)) for k in list(flat) if k.startswith("__") and k.endswith("__")
    }
    params: dict = {}
    for key, value in flat.items():
        node = params
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return params, scalars
