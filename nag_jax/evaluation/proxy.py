"""The built-in demo's quality proxy: a small CNN classifier of the synthetic shapes dataset.

No Inception weights can be downloaded here, so the demo measures sample quality with a network
that exists here and whose meaning is easy to defend:

- ``class_accuracy``: the fraction of generated images that the classifier assigns to the class
  they were generated for. A sample that does not show a clean "red disk" when asked for one
  fails. The classifier's accuracy on held-out REAL images is reported beside it (the ceiling).
- ``proxy_fd``: the Fréchet distance between classifier features (the 128-d penultimate layer)
  of generated and real images with the same class distribution. It is FID's formula in this
  classifier's feature space: it sees diversity and fidelity, and compares runs of the demo with
  each other. It is NOT FID and is never presented as one.

The classifier is trained deterministically from (image_size, num_classes, seed) on real images
of `nag_jax.data.synthetic.ShapesDataset` and cached as an .npz, so every run and every
evaluation uses the same weights. Images are NHWC; the extractor takes uint8 (the project's
`nag_jax.utils.to_uint8` rule) like every other feature extractor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from nag_jax.data.synthetic import ShapesDataset
from nag_jax.storage.paths import as_path, atomic_write

FEATURE_DIM = 128
ARCH = "cnn4-800"  # part of cache names: bump when the architecture or its training changes
# The classifier sees a different slice of the dataset than any generative run: seed offset.
_DATA_SEED_OFFSET = 1_000_003


class ShapesClassifier(nn.Module):
    """(N, S, S, 3) images in [-1, 1] -> ({"pool": (N, 128)}, logits (N, K))."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        for width, stride in ((32, 2), (64, 1), (64, 2), (128, 1)):
            x = nn.gelu(nn.Conv(width, (3, 3), strides=(stride, stride))(x))
        feats = nn.Dense(FEATURE_DIM)(jnp.mean(x, axis=(1, 2)))
        logits = nn.Dense(self.num_classes)(nn.gelu(feats))
        return feats, logits


def _real_batch(ds: ShapesDataset, step: int, batch_size: int) -> dict:
    return ds.random_batch(np.random.default_rng([ds.seed, step]), batch_size)


def train_classifier(
    image_size: int,
    num_classes: int,
    *,
    seed: int = 0,
    num_steps: int = 800,
    batch_size: int = 64,
    lr: float = 3e-3,
    variant: str = "base",
):
    """Trains the classifier on real shapes (of ``variant``); returns (params, held-out real
    accuracy)."""
    ds = ShapesDataset(image_size, num_classes, seed=seed + _DATA_SEED_OFFSET, variant=variant)
    model = ShapesClassifier(num_classes)
    params = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(lr, num_steps), weight_decay=1e-4)
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
    for i in range(num_steps):
        b = _real_batch(ds, i, batch_size)
        params, opt_state, loss = step(params, opt_state, b["image"], b["label"])
    held_out = ds.render_batch(np.arange(2**40, 2**40 + 1024))
    acc = float(np.mean(predict(params, num_classes, held_out["image"]) == held_out["label"]))
    logging.info(
        "Proxy classifier: %d steps in %.1fs, final loss %.4f, held-out real accuracy %.4f",
        num_steps,
        time.time() - start,
        float(loss),
        acc,
    )
    return params, acc


def _apply(params, num_classes, images):
    return ShapesClassifier(num_classes).apply({"params": params}, images)


_apply_jit = jax.jit(_apply, static_argnums=1)


def predict(params, num_classes: int, images, batch_size: int = 512) -> np.ndarray:
    """Predicted labels (N,) for float images (N, S, S, 3) in [-1, 1]."""
    out = [
        np.asarray(jnp.argmax(_apply_jit(params, num_classes, images[i : i + batch_size])[1], -1))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def features(params, num_classes: int, images, batch_size: int = 512) -> np.ndarray:
    """Penultimate features (N, 128) float64 for float images in [-1, 1]."""
    out = [
        np.asarray(_apply_jit(params, num_classes, images[i : i + batch_size])[0], np.float64)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def cache_path(
    image_size: int,
    num_classes: int,
    seed: int,
    cache_dir: str | None = None,
    variant: str = "base",
) -> str:
    cache_dir = cache_dir or os.environ.get(
        "NAG_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nag_jax")
    )
    tag = "" if variant == "base" else f"_{variant}"
    return os.path.join(
        cache_dir, f"proxy_classifier_{ARCH}_s{image_size}_k{num_classes}_seed{seed}{tag}.npz"
    )


def load_or_train(
    image_size: int,
    num_classes: int,
    *,
    seed: int = 0,
    path: str | None = None,
    variant: str = "base",
) -> tuple[dict, float]:
    """(params, held-out real accuracy), from the .npz cache at ``path`` or trained and cached
    (on real shapes of ``variant``)."""
    path = path or cache_path(image_size, num_classes, seed, variant=variant)
    if as_path(path).exists():
        with as_path(path).open("rb") as fh, np.load(fh) as f:
            flat = {k: f[k] for k in f.files}
        acc = float(flat.pop("__accuracy__"))
        params = {}
        for key, value in flat.items():
            node = params
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(value)
        return params, acc
    params, acc = train_classifier(image_size, num_classes, seed=seed, variant=variant)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path_): np.asarray(v)
        for path_, v in jax.tree_util.tree_leaves_with_path(params)
    }
    atomic_write(path, lambda f: np.savez(f, __accuracy__=np.float64(acc), **flat))
    return params, acc


def build_extractor(config):
    """A `FeatureExtractor` for the evaluation job: uint8 images -> pool features and logits.

    Reads ``config.data.image_size`` / ``config.model.num_classes`` /
    ``config.data.synthetic_variant`` (the classifier is trained on that variant) and
    ``config.eval.proxy_path`` (None: train it, cached) / ``config.eval.proxy_seed``.
    """
    from nag_jax.evaluation.metrics import FeatureExtractor

    ec = config.eval
    size = int(config.data.image_size)
    k = int(config.model.num_classes)
    seed = int(ec.proxy_seed)
    variant = str(config.data.synthetic_variant)
    params, acc = load_or_train(size, k, seed=seed, path=ec.proxy_path, variant=variant)
    digest = hashlib.sha256(np.asarray(jax.tree.leaves(params)[0]).tobytes()).hexdigest()[:8]

    def fn(images_uint8):
        x = jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0
        feats, logits = _apply(params, k, x)
        return {"pool": feats, "logits": logits}

    tag = "" if variant == "base" else f"_{variant}"
    return FeatureExtractor(
        f"shapes_proxy_{ARCH}_s{size}_k{k}_seed{seed}{tag}-{digest}",
        fn,
        description=(
            f"demo shapes classifier (held-out real accuracy {acc:.4f}); a relative measure "
            "for this demo only, not FID"
        ),
    )


@dataclasses.dataclass(frozen=True)
class ProxyScorer:
    """Scores generated images against a fixed set of real ones in the classifier's space.

    ``scorer(images, labels)`` -> {class_accuracy, proxy_fd, precision, recall}: accuracy of the
    classifier on the samples w.r.t. their intended labels; Fréchet distance and improved
    precision / recall (k = 3, Kynkäänniemi et al.; ``nag_jax.evaluation.metrics``) between the
    samples' and the real images' 128-d features. Images are quantised with the project's uint8
    rule first (what a PNG shows). The real features and radii are computed once.
    """

    params: dict
    num_classes: int
    real_features: np.ndarray  # (M, 128) float64
    real_radii: np.ndarray  # (M,) k-NN radii of the real features
    real_accuracy: float = float("nan")  # the classifier's held-out accuracy on real images
    k: int = 3

    @classmethod
    def from_real(cls, params, num_classes: int, real_images, *, real_accuracy=float("nan")):
        from nag_jax.evaluation.metrics import manifold_radii

        feats = features(params, num_classes, _quantise(real_images))
        return cls(params, num_classes, feats, manifold_radii(feats, 3), float(real_accuracy))

    def __call__(self, images, labels) -> dict:
        from nag_jax.evaluation.metrics import (
            fid_from_features,
            manifold_radii,
            precision_recall_from_radii,
        )

        quantised = _quantise(images)
        predicted = predict(self.params, self.num_classes, quantised)
        acc = float(np.mean(predicted == np.asarray(labels)))
        feats = features(self.params, self.num_classes, quantised)
        precision, recall = precision_recall_from_radii(
            self.real_features, self.real_radii, feats, manifold_radii(feats, self.k)
        )
        return {
            "class_accuracy": acc,
            "proxy_fd": float(fid_from_features(feats, self.real_features)),
            "precision": precision,
            "recall": recall,
        }


def _quantise(images) -> np.ndarray:
    from nag_jax.utils import to_uint8

    return to_uint8(np.asarray(images)).astype(np.float32) / 127.5 - 1.0


def quality_metrics(params, num_classes: int, images, labels, real_images) -> dict:
    """`ProxyScorer` metrics of float images (N, S, S, 3) in [-1, 1] against ``real_images``."""
    return ProxyScorer.from_real(params, num_classes, real_images)(images, labels)


# Real reference images of the demo come from indices no training batch can draw.
REAL_OFFSET = 2**41


def real_reference(config, num_images: int) -> np.ndarray:
    """(N, S, S, 3) real shapes of ``config.data``, class-balanced, from indices no training
    batch draws (``REAL_OFFSET + i``)."""
    k = int(config.model.num_classes)
    ds = ShapesDataset(int(config.data.image_size), k, seed=int(config.data.synthetic_seed))
    return ds.render_batch(REAL_OFFSET + np.arange(num_images))["image"]


def load_scorer(config, workdir: str) -> ProxyScorer:
    """The demo's quality proxy: the classifier (trained once, cached in ``workdir`` with seed
    ``config.demo.proxy_seed``) and ``config.demo.num_real`` real reference images."""
    size, k = int(config.data.image_size), int(config.model.num_classes)
    classifier, real_acc = load_or_train(
        size,
        k,
        seed=int(config.demo.proxy_seed),
        path=os.path.join(workdir, f"proxy_classifier_{ARCH}.npz"),
    )
    real = real_reference(config, int(config.demo.num_real))
    return ProxyScorer.from_real(classifier, k, real, real_accuracy=real_acc)
