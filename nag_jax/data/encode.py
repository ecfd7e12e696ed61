"""Encoding an image dataset to latent shards (resumable), for the "latents" data source.

``encode_dataset(source, out_dir, encode_fn=f, params=p, image_size=S, ...)`` with
``f(params, images_nhwc_in_[-1,1], key) -> latents (N, h, w, c)``; mode="encode_latents"
(``nag_jax.jobs.encode_latents``) calls it with the SD-VAE of ``config.vae.path``. The batch is
split over ``jax.local_devices()`` (jax.jit + NamedSharding over a 1-D 'data' mesh).

Latents are stored as the encoder returns them (``scaled``: already multiplied by
``scale_factor``, recorded in the metadata). Images: ADM centre crop to image_size, [-1, 1],
NHWC; no time convention here. An image that does not decode is left out and logged by name
(``bad_images="skip"``; listed in ``<shard>.skipped.json`` and metadata.json "skipped") or
stops the run (``"fail"``).

Resumable: shard k covers examples [k * shard_size, (k + 1) * shard_size) in source order and
is written atomically (tmp file + rename); a rerun skips shards whose file exists, so an
interrupted run restarts where it stopped and the result is identical (the VAE noise key of each
batch is fold_in(fold_in(key(seed), shard), batch)). metadata.json is written last, once every
shard exists; its presence marks a complete set. With several processes, shard k belongs to
process k % process_count and process 0 writes the metadata when all shards are present (rerun
once after the last process finishes if it was not yet written).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import time

import numpy as np
from absl import logging

from nag_jax.data import latents as latents_lib
from nag_jax.data.preprocess import center_crop_arr, to_float
from nag_jax.storage.paths import as_path

SKIPPED_SUFFIX = ".skipped.json"


class _ImageLoader:
    """Loads examples [indices] of a source as ((N', S, S, 3) float32 in [-1, 1], (N',) int32,
    skipped): with ``bad_images="skip"`` an image that does not decode (sources.BadImageError) is
    left out and listed in ``skipped`` ({"index", "file", "error"}); with "fail" it raises."""

    def __init__(self, source, image_size: int, num_threads: int = 4, bad_images: str = "skip"):
        self.source, self.image_size = source, int(image_size)
        self.bad_images = bad_images
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))

    def _one(self, i):
        from nag_jax.data.sources import BadImageError

        try:
            ex = self.source[int(i)]
        except BadImageError as e:
            if self.bad_images != "skip":
                hint = ": replace or remove the file, or set config.data.bad_images='skip'"
                raise BadImageError(e.path, e.index, e.cause, hint) from e
            error = f"{type(e.cause).__name__}: {e.cause}"
            return {"index": e.index, "file": e.path, "error": error}
        return center_crop_arr(ex["image"], self.image_size), ex["label"]

    def __call__(self, indices):
        if hasattr(self.source, "render_batch"):  # synthetic: rendered at size, vectorised
            if self.source.image_size != self.image_size:
                raise ValueError(
                    f"synthetic source renders {self.source.image_size}px, encode asked "
                    f"{self.image_size}px"
                )
            out = self.source.render_batch(np.asarray(indices))
            return out["image"], out["label"], []
        results = list(self.pool.map(self._one, indices))
        skipped = [r for r in results if isinstance(r, dict)]
        good = [r for r in results if not isinstance(r, dict)]
        s = self.image_size
        images = to_float(np.stack([r[0] for r in good])) if good else np.zeros((0, s, s, 3))
        labels = np.asarray([r[1] for r in good], dtype=np.int32)
        return images, labels, skipped


def _sharded_encode(encode_fn, batch_size: int):
    """jit of encode_fn with the batch split over the local devices; params replicated."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.local_devices()
    if batch_size % len(devices):
        raise ValueError(
            f"encode batch_size={batch_size} is not divisible by the {len(devices)} local "
            f"devices; use a multiple of {len(devices)}, e.g. "
            f"{max(1, batch_size // len(devices)) * len(devices)}"
        )
    mesh = Mesh(np.array(devices), ("data",))
    data = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    fn = jax.jit(encode_fn, in_shardings=(rep, data, rep), out_shardings=data)
    return fn, data, rep


def encode_dataset(
    source,
    out_dir: str,
    *,
    encode_fn,
    params,
    image_size: int,
    batch_size: int = 64,
    shard_size: int = 10_000,
    dtype: str = "float16",
    store_flips: bool = True,
    seed: int = 0,
    max_examples: int | None = None,
    scaled: bool = True,
    scale_factor: float = latents_lib.SD_VAE_SCALE,
    process_index: int = 0,
    process_count: int = 1,
    metadata_extra: dict | None = None,
    on_shard_done=None,
    num_threads: int = 4,
    bad_images: str = "skip",
    log=logging.info,
) -> dict | None:
    """Encodes `source` to latent shards in `out_dir`; returns the metadata (None if incomplete).

    source: random-access {"image": uint8 HWC any size, "label"} (ImageFolderSource, TfdsSource)
      or a ShapesDataset (rendered at image_size).
    encode_fn(params, images (B, S, S, 3) in [-1, 1], key) -> latents (B, h, w, c); `scaled` says
      whether it already multiplied by `scale_factor` (recorded in the metadata).
    on_shard_done(shard_index): optional hook after each written shard (tests use it to interrupt).
    bad_images: "skip" leaves undecodable images out (logged by name; ``<shard>.skipped.json``,
      metadata "skipped") or "fail" stops naming the file.
    out_dir: local or remote (``gs://``, nag_jax.storage.paths).
    """
    import jax

    n = len(source) if max_examples is None else min(len(source), int(max_examples))
    if n <= 0:
        raise ValueError(f"nothing to encode: source has {len(source)} examples")
    num_shards = math.ceil(n / shard_size)
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tmp-*"):  # leftovers of a killed run (files or temp folders)
        stale.rmtree() if stale.is_dir() else stale.unlink()
    loader = _ImageLoader(source, image_size, num_threads, bad_images)
    fn, data_sharding, rep = _sharded_encode(encode_fn, batch_size)
    params = jax.device_put(params, rep)
    root = jax.random.key(int(seed))
    probe = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), np.float32)
    latent_shape = list(jax.eval_shape(encode_fn, params, probe, root).shape[1:])

    def shard_path(k):
        return out / latents_lib.shard_filename(k, num_shards)

    def skipped_path(k):
        return out / (latents_lib.shard_filename(k, num_shards) + SKIPPED_SUFFIX)

    def encode(images, key):
        b = images.shape[0]
        if b < batch_size:  # pad the last batch: one compiled shape
            pad = np.zeros((batch_size - b, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        x = jax.device_put(images, data_sharding)
        return fn(params, x, key), b

    from nag_jax.utils import progress_bar

    todo = [
        k
        for k in range(num_shards)
        if k % process_count == process_index and not shard_path(k).exists()
    ]
    count = lambda k: min(n, (k + 1) * shard_size) - k * shard_size
    bar = progress_bar(total=sum(count(k) for k in todo), desc="encode_latents")

    def fetch(calls):
        out = _fetch(calls)
        bar.update(len(out))
        return out

    for k in todo:
        t0 = time.time()
        start, stop = k * shard_size, min(n, (k + 1) * shard_size)
        shard_key = jax.random.fold_in(root, k)
        labels, outs, pending, skipped = [], [], [], []
        for bi, b0 in enumerate(range(start, stop, batch_size)):
            images, y, bad = loader(np.arange(b0, min(stop, b0 + batch_size)))
            for b in bad:
                log(f"encode_latents: skipped undecodable image {b['file']} ({b['error']})")
            skipped += bad
            bar.update(len(bad))  # skipped images count as done
            if not len(y):
                continue
            labels.append(y)
            key = jax.random.fold_in(shard_key, bi)
            calls = [encode(images, jax.random.fold_in(key, 0))]
            if store_flips:
                calls.append(encode(images[:, :, ::-1], jax.random.fold_in(key, 1)))
            pending.append(calls)  # async dispatch: load the next batch while this encodes
            if len(pending) > 1:
                outs.append(fetch(pending.pop(0)))
        outs.extend(fetch(p) for p in pending)
        if not outs:
            raise ValueError(f"encode_latents: no image of shard {k} ([{start}, {stop})) decodes")
        lat = np.concatenate(outs)  # (N, V, h, w, c)
        if skipped:  # before the shard: a present shard always has its list
            skipped_path(k).write_text(json.dumps(skipped, indent=1))
        latents_lib.write_shard(str(shard_path(k)), np.concatenate(labels), lat, dtype=dtype)
        log(
            f"encode_latents: shard {k + 1}/{num_shards} ({len(lat)} examples"
            + (f", {len(skipped)} undecodable skipped" if skipped else "")
            + f") in {time.time() - t0:.1f}s -> {shard_path(k)}"
        )
        if on_shard_done is not None:
            on_shard_done(k)
    bar.close()

    done = all(shard_path(k).exists() for k in range(num_shards))
    if not done or process_index != 0:
        if not done:
            log(
                f"encode_latents: {out_dir} incomplete (other processes' shards missing); "
                "metadata.json not written yet"
            )
        return None
    skipped = []
    counts = []
    for k in range(num_shards):
        bad = json.loads(skipped_path(k).read_text()) if skipped_path(k).exists() else []
        skipped += bad
        counts.append(min(n, (k + 1) * shard_size) - k * shard_size - len(bad))
    if skipped:
        log(
            f"encode_latents: {len(skipped)} undecodable image(s) left out (listed in "
            f"{latents_lib.METADATA_FILE} 'skipped'), e.g. {skipped[0]['file']}"
        )
    meta = {
        "latent_shape": latent_shape,
        "dtype": dtype,
        "variants": ["image", "hflip"] if store_flips else ["image"],
        "scale_factor": float(scale_factor),
        "scaled": bool(scaled),
        "count": int(sum(counts)),
        "skipped": skipped,
        "image_size": int(image_size),
        "num_classes": getattr(source, "num_classes", None),
        "class_names": getattr(source, "class_names", None),
        "source": repr(source),
        "seed": int(seed),
        "shards": [
            {"file": latents_lib.shard_filename(k, num_shards), "count": c}
            for k, c in enumerate(counts)
        ],
        **(metadata_extra or {}),
    }
    latents_lib.write_metadata(out_dir, meta)
    log(f"encode_latents: wrote {out / latents_lib.METADATA_FILE} ({sum(counts)} examples)")
    return latents_lib.read_metadata(out_dir)


def _fetch(calls):
    """[(latents jax.Array (B_pad, h, w, c), b)] per variant -> (b, V, h, w, c) float32."""
    arrs = [np.asarray(z, dtype=np.float32)[:b] for z, b in calls]
    return np.stack(arrs, axis=1)
