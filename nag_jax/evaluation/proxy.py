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

The classifier (the network and training loop of `nag_jax.evaluation.classifier`) is trained
deterministically from (image_size, num_classes, seed) on real images of
`nag_jax.data.synthetic.ShapesDataset` and cached as an .npz, so every run and every
evaluation uses the same weights. Images are NHWC; the extractor takes uint8 (the project's
`nag_jax.utils.to_uint8` rule) like every other feature extractor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.data.synthetic import ShapesDataset
from nag_jax.evaluation import classifier
from nag_jax.evaluation.classifier import (  # noqa: F401  (re-exported: the demo's names)
    ARCH,
    FEATURE_DIM,
    _apply,
    features,
    predict,
)
from nag_jax.storage.paths import as_path

# The demo's classifier is the generic one (nag_jax.evaluation.classifier), under its old name.
ShapesClassifier = classifier.SmallCNN
# The classifier sees a different slice of the dataset than any generative run: seed offset.
_DATA_SEED_OFFSET = 1_000_003


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
    """Trains the classifier on real shapes (of ``variant``, rendered on the fly); returns
    (params, held-out real accuracy)."""
    ds = ShapesDataset(image_size, num_classes, seed=seed + _DATA_SEED_OFFSET, variant=variant)

    def batch_at(step):
        b = ds.random_batch(np.random.default_rng([ds.seed, step]), batch_size)
        return b["image"], b["label"]

    settings = classifier.TrainSettings(
        num_steps=num_steps, batch_size=batch_size, lr=lr, weight_decay=1e-4, seed=seed
    )
    params, _ = classifier.train(
        num_classes, batch_at, (image_size, image_size, 3), settings, name="Proxy classifier"
    )
    held_out = ds.render_batch(np.arange(2**40, 2**40 + 1024))
    acc = classifier.accuracy(params, num_classes, held_out["image"], held_out["label"])
    logging.info("Proxy classifier: held-out real accuracy %.4f", acc)
    return params, acc


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
        params, scalars = classifier.load_npz(path)
        return params, scalars["accuracy"]
    params, acc = train_classifier(image_size, num_classes, seed=seed, variant=variant)
    classifier.save_npz(path, params, accuracy=acc)
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
