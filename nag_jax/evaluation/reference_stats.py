"""Reference statistics for FID / sFID / precision-recall, cached on disk.

Sources:
  * an ADM-format reference batch .npz (e.g. ADM's VIRTUAL_imagenet256_labeled.npz): `arr_0` uint8
    (N, H, W, 3) images (10k for ImageNet 256) and, in ADM's files, mu/sigma/mu_s/sigma_s computed
    by ADM's TensorFlow graph over the FULL training set.
      precomputed=False (default): every statistic from the arr_0 images with OUR extractor
        (self-consistent; with 10k reference images FID is not comparable to published values).
      precomputed=True: ADM's protocol -- FID/sFID against the stored mu/sigma(_s), precision/
        recall against our features of arr_0. Use with the Inception in "adm_tf" preprocessing
        (features as ADM's graph computes them); it is what the XL eval configs do.
    A .npz holding only mu/sigma (+ mu_s/sigma_s) is used as is (no precision/recall) -- only
    meaningful if it was produced by the same extractor.
  * any dataset nag_jax.data can read (`config.data`, e.g. synthetic_shapes, image_folder, tfds
    imagenet2012): the first `num_images` images of a seeded shuffle, no flips, via to_uint8.

Cache: `<cache_dir>/ref-<extractor>-<hash>.npz`, the hash over the source identity (absolute path,
size and mtime of a file; the data config for a dataset), the number of images and the extractor
name. Stored: mu, sigma, mu_s, sigma_s, pool_features (for precision/recall), meta (JSON).
Files and the cache directory may be local or remote (``gs://``, nag_jax.storage.paths; opened
through
epath).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import zipfile

import numpy as np

from nag_jax.evaluation.metrics import FeatureExtractor, extract_features, mean_cov
from nag_jax.storage.paths import as_path, atomic_write, is_remote


def file_identity(path: str) -> dict:
    """{"source", "size", "mtime_ns"} of a local or remote file: what a cache key hashes so that
    a replaced file is never scored from stale statistics."""
    p = as_path(path)
    if is_remote(p):
        st = p.stat()
        return {"source": str(p), "size": int(st.length), "mtime_ns": int(st.mtime * 1e9)}
    st = os.stat(p)
    return {"source": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclasses.dataclass
class ReferenceStats:
    """mu/sigma of "pool" features; mu_s/sigma_s of "spatial" (None without spatial features);
    pool_features (N, D) float32 for precision/recall (None for precomputed-only statistics)."""

    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool_features: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_features(cls, feats: dict, meta: dict | None = None) -> ReferenceStats:
        mu, sigma = mean_cov(feats["pool"])
        mu_s = sigma_s = None
        if "spatial" in feats:
            mu_s, sigma_s = mean_cov(feats["spatial"])
        return cls(mu, sigma, mu_s, sigma_s, np.asarray(feats["pool"], np.float32), meta or {})

    def save(self, path: str) -> None:
        arrays = {"mu": self.mu, "sigma": self.sigma, "meta": np.asarray(json.dumps(self.meta))}
        for name in ("mu_s", "sigma_s", "pool_features"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str) -> ReferenceStats:
        with as_path(path).open("rb") as f, np.load(f) as z:
            get = lambda k: np.asarray(z[k]) if k in z.files else None
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            return cls(
                get("mu"), get("sigma"), get("mu_s"), get("sigma_s"), get("pool_features"), meta
            )


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def npz_array_shape(path: str, key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one member of an .npz, read from its header only."""
    with as_path(path).open("rb") as raw, zipfile.ZipFile(raw) as zf, zf.open(f"{key}.npy") as f:
        shape, _, dtype = _npy_header(f)
    return tuple(shape), dtype


def iter_npz_batches(path: str, batch_size: int, key: str = "arr_0", limit: int | None = None):
    """Streams an .npz member in batches along axis 0 without loading the whole array
    (50k 256px images are 9.8 GB). Falls back to np.load for Fortran-order / object arrays."""
    with as_path(path).open("rb") as raw, zipfile.ZipFile(raw) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise ValueError(f"{path!r} has no {key!r} (members: {zf.namelist()})")
        with zf.open(f"{key}.npy") as f:
            shape, fortran, dtype = _npy_header(f)
            n = shape[0] if limit is None else min(shape[0], int(limit))
            if fortran or dtype.hasobject:
                raw.seek(0)
                arr = np.load(raw)[key][:n]
                for i in range(0, n, batch_size):
                    yield arr[i : i + batch_size]
                return
            row = math.prod(shape[1:]) * dtype.itemsize
            for i in range(0, n, batch_size):
                rows = min(batch_size, n - i)
                buf = bytearray()
                while len(buf) < rows * row:
                    chunk = f.read(rows * row - len(buf))
                    if not chunk:
                        raise ValueError(f"{path!r}: {key} ends early (truncated file?)")
                    buf += chunk
                yield np.frombuffer(bytes(buf), dtype).reshape(rows, *shape[1:])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]


def cache_path(cache_dir: str, extractor: FeatureExtractor, identity: dict) -> str:
    key = json.dumps({"extractor": extractor.name, **identity}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return str(as_path(cache_dir) / f"ref-{_safe(extractor.name)}-{digest}.npz")


def _cached(cache_dir, extractor, identity, compute) -> ReferenceStats:
    import jax

    path = cache_path(cache_dir, extractor, identity) if cache_dir else None
    if path and as_path(path).exists():
        stats = ReferenceStats.load(path)
        stats.meta["cache_path"] = path
        return stats
    stats = compute()
    stats.meta.update({"extractor": extractor.name, **identity})
    if path and jax.process_index() == 0:
        stats.save(path)
        stats.meta["cache_path"] = path
    return stats


def from_npz(
    path: str,
    extractor: FeatureExtractor,
    *,
    cache_dir: str | None = None,
    num_images: int | None = None,
    batch_size: int = 200,
    precomputed: bool = False,
) -> ReferenceStats:
    """Reference statistics from an ADM-format .npz (see module doc)."""
    if not as_path(path).exists():
        raise FileNotFoundError(
            f"reference batch {path!r} not found; use an ADM reference batch (.npz with arr_0 "
            "uint8 images, e.g. VIRTUAL_imagenet256_labeled.npz from openai/guided-diffusion's "
            "evaluations README) or config.eval.reference = 'dataset'."
        )
    with as_path(path).open("rb") as f, np.load(f) as z:
        files = set(z.files)
    if "arr_0" not in files and "pool_features" in files:
        return ReferenceStats.load(path)  # a ReferenceStats file (e.g. a cache entry)
    if "arr_0" not in files:
        if not {"mu", "sigma"} <= files:
            raise ValueError(
                f"{path!r} has neither arr_0 (images) nor mu/sigma (statistics): keys {files}"
            )
        with as_path(path).open("rb") as f, np.load(f) as z:
            stats = ReferenceStats(
                z["mu"],
                z["sigma"],
                z["mu_s"] if "mu_s" in files else None,
                z["sigma_s"] if "sigma_s" in files else None,
                None,
                {"source": str(as_path(path)), "precomputed": True},
            )
        return stats
    identity = {
        **file_identity(path),
        "num_images": num_images,
        "precomputed": bool(precomputed),
    }
    if precomputed and not {"mu", "sigma"} <= files:
        raise ValueError(
            f"reference_stats='precomputed' but {path!r} has no mu/sigma (keys {sorted(files)}); "
            "use reference_stats='images' to compute them from arr_0."
        )

    def compute():
        shape, dtype = npz_array_shape(path)
        if dtype != np.uint8 or len(shape) != 4:
            raise ValueError(
                f"{path!r}: arr_0 must be uint8 (N, H, W, C) images, got {dtype} {shape}"
            )
        n = shape[0] if num_images is None else min(shape[0], int(num_images))
        feats = extract_features(
            extractor,
            iter_npz_batches(path, batch_size, limit=n),
            batch_size=batch_size,
            desc="reference stats",
            total=n,
        )
        stats = ReferenceStats.from_features(feats, {"num_images": n})
        if precomputed:
            with as_path(path).open("rb") as f, np.load(f) as z:
                stats.mu, stats.sigma = np.asarray(z["mu"]), np.asarray(z["sigma"])
                has_s = "mu_s" in z.files and "sigma_s" in z.files
                stats.mu_s = np.asarray(z["mu_s"]) if has_s else None
                stats.sigma_s = np.asarray(z["sigma_s"]) if has_s else None
            stats.meta["precomputed"] = True
        return stats

    return _cached(cache_dir, extractor, identity, compute)


def dataset_images(data_cfg, num_images: int, *, seed: int = 0, batch_size: int = 256):
    """Yields uint8 NHWC batches: the first `num_images` of a seeded shuffle of config.data
    (no flips, one pass), the same on every process."""
    from nag_jax.data import create_dataset
    from nag_jax.utils import to_uint8

    cfg = dict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg))
    if cfg.get("name") == "latents":
        raise ValueError(
            "reference statistics need pixel images; config.data.name='latents' holds VAE "
            "latents. Point config.eval.reference at an ADM .npz or at the image dataset."
        )
    cfg.update(random_flip=False, shuffle=True, num_epochs=None, num_workers=0)
    it = create_dataset(
        cfg, seed=seed, process_index=0, process_count=1, global_batch_size=batch_size
    )
    done = 0
    while done < num_images:
        batch = next(it)
        images = to_uint8(batch["image"][: num_images - done])
        done += len(images)
        yield images


def from_dataset(
    data_cfg,
    extractor: FeatureExtractor,
    num_images: int,
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    batch_size: int = 200,
) -> ReferenceStats:
    """Reference statistics of `num_images` images of a nag_jax.data dataset (see module doc)."""
    cfg = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    ignore = {"global_batch_size", "num_workers", "num_threads", "prefetch_buffer_size"}
    identity = {
        "source": "dataset",
        "data": {k: v for k, v in sorted(cfg.items()) if k not in ignore},
        "num_images": int(num_images),
        "seed": int(seed),
    }

    def compute():
        batches = dataset_images(data_cfg, num_images, seed=seed)
        feats = extract_features(
            extractor, batches, batch_size=batch_size, desc="reference stats", total=num_images
        )
        return ReferenceStats.from_features(feats, {"num_images": int(num_images)})

    return _cached(cache_dir, extractor, identity, compute)


def load_reference(
    reference: str,
    extractor: FeatureExtractor,
    *,
    data_cfg=None,
    num_images: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    batch_size: int = 200,
    precomputed: bool = False,
) -> ReferenceStats:
    """`reference`: a path to an .npz (ADM reference batch or precomputed stats), a cached
    ReferenceStats file, or "dataset" (statistics of `num_images` images of `data_cfg`).
    `precomputed`: ADM protocol for reference batches (see module doc)."""
    if reference == "dataset":
        if data_cfg is None or not num_images:
            raise ValueError("reference='dataset' needs data_cfg and num_images (> 0)")
        return from_dataset(
            data_cfg, extractor, num_images, seed=seed, cache_dir=cache_dir, batch_size=batch_size
        )
    return from_npz(
        reference,
        extractor,
        cache_dir=cache_dir,
        num_images=num_images,
        batch_size=batch_size,
        precomputed=precomputed,
    )
