"""grain input pipelines: deterministic, per-epoch shuffled, process-sharded, checkpointable.

    it = create_dataset(config.data, seed=config.seed, process_index=jax.process_index(),
                        process_count=jax.process_count(),
                        global_batch_size=config.data.global_batch_size)
    batch = next(it)   # {"image": (B_local, H, W, C) float32, "label": (B_local,) int32}

``real_images(config.data, keys, labels=None)``: deterministic real examples (no shuffle, no
flips; key k -> one example, optionally of a given class), the reference data of measurements.

B_local = global_batch_size // process_count. "image" holds pixels in [-1, 1] (NHWC, C = 3; the
"idx" source: C = config.data.channels, 1 or 3) for image sources and latents (B, h, w, 4) for
the "latents" source (already multiplied by 0.18215).
Batches are numpy arrays; the trainer assembles the global jax.Array
(nag_jax.parallel.global_batch / jax.make_array_from_process_local_data).

How it is built: ``grain.MapDataset.range(num_batches).map(batch b -> arrays)``; batch b is a
pure function of b (random access, so grain's iterator state is just the next batch index):
  1. record keys 0..N'-1 with N' = N - N % process_count (the few trailing records are dropped so
     every process gets the same number), strided: process i owns keys i, i + P, i + 2P, ...;
     processes read disjoint shards whose union is the whole (trimmed) dataset;
  2. the process's stream of positions p = 0, 1, 2, ... is epoch p // (N' / P); each epoch visits
     its records in a fresh permutation seeded by (seed, epoch, process_index) (``EpochKeys``,
     vectorised numpy: per-record Python overhead is avoided so data never limits a small demo);
     batch b holds positions [b * B_local, (b + 1) * B_local) (a batch may straddle two epochs);
     with num_epochs set, the stream ends after floor(num_epochs * N' / P / B_local) batches;
  3. horizontal flips are drawn from a hash of (seed, epoch, record key)
     (nag_jax.data.preprocess.flip_decisions), independent of batch size, workers and layout;
     latents: a stored "hflip" variant (encode_latents store_flips=True) makes the flip exact;
     with a single variant the latent array is mirrored along W, which only approximates the
     latent of the mirrored image (the VAE is not exactly flip-equivariant);
  4. one vectorised load per batch (synthetic shapes render a whole batch at once, IDX data is
     gathered from memory in one step; other image sources
     decode + ADM centre crop each example; latents parse records). An image that does not
     decode (``sources.BadImageError``, naming the file) stops the run with
     ``bad_images="fail"``; with ``"skip"`` (default) a warning names it with a running count
     and the next decodable record of the same process's shard (keys k + P, k + 2P, ...,
     wrapping) takes its place, label included: batch b stays a pure function of b, so resumes
     are deterministic;
  5. ``to_iter_dataset(ReadOptions(num_threads, prefetch_buffer_size))`` and, with
     ``num_workers > 0``, ``mp_prefetch`` (worker processes; output does not depend on the count).

Checkpointing (the iterator is a ``grain.DatasetIterator``):
  - plain: ``state = it.get_state()`` (a small JSON-able dict, e.g. {"next_index": 42});
    later ``it = create_dataset(same cfg...); it.set_state(state)`` -> the same next batches.
  - Orbax: save the iterator as an item with grain's handler::

        mngr = ocp.CheckpointManager(dir, item_names=("state", "data"))   # or item_handlers
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state),
            data=grain.checkpoint.CheckpointSave(it)))
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(it)))   # restores `it` in place

    grain writes one JSON per process (``process_{i}-of-{n}.json``, from jax.process_index()),
    so each process restores its own shard position. Restore with the same data config, seed,
    global batch and process count (the state is a position in this deterministic stream).

data_cfg keys (``config.data``: a ConfigDict or dict holding every key; the defaults below
are the schema's, filled in by ``nag_jax.config.schema.complete(d, "data")`` for a hand-built
one):
  name               "synthetic_shapes" | "image_folder" | "latents" | "idx" | any tfds name
                     ("imagenet2012", ...)
  data_dir           directory (image_folder root / latents dir / IDX folder / tfds data_dir);
                     unused for synthetic_shapes
  image_size         output side for image sources (default 32)
  num_classes        synthetic_shapes only (default 16; 1..20)
  num_examples       synthetic_shapes epoch length (default 100_000)
  synthetic_seed     synthetic_shapes dataset seed (default 0; independent of the shuffle seed)
  synthetic_variant  synthetic_shapes colours: "base" or "recoloured" (a domain shift)
  split              tfds split (default "train"); idx: "train" / "test", optionally sliced,
                     e.g. "train[:55000]" (nag_jax.data.idx)
  channels           idx: 3 (grey repeated, default) or 1 (grey)
  idx_fit            idx: "pad" (centred zero padding / crop to image_size, default) or "resize"
  tfds_prepare       tfds only: run download_and_prepare from data_dir/downloads/manual (False)
  random_flip        horizontal flips (default True)
  shuffle            per-epoch shuffling (default True)
  num_epochs         None = repeat forever (default), else a finite number of epochs
  num_workers        grain worker processes (default 0 = load in the main process)
  num_threads        read threads per process (default 1: prefetches while the step runs)
  prefetch_buffer_size   batches prefetched (default 2)
  return_index       also return "index" (B,) int64 record keys and "epoch" (default False)
  bad_images         "skip" (default: warn, count, substitute; see 4.) or "fail" (stop)
  global_batch_size  used when the `global_batch_size` argument is None
"""

from __future__ import annotations

import sys
import threading

import numpy as np
from absl import logging

from nag_jax.data.preprocess import center_crop_arr, flip_decisions, to_float

SYNTHETIC = "synthetic_shapes"
IDX = "idx"
# bad_images="skip" gives up after this many undecodable records in a row (broken data, not a
# stray file).
MAX_CONSECUTIVE_BAD = 64


def _section(data_cfg):
    """``config.data`` as a ConfigDict (a plain dict of the same keys is accepted). It must hold
    every key of the schema's data section: a hand-built one is completed by the caller
    (``nag_jax.config.schema.complete(d, "data")``), never here."""
    import ml_collections

    if isinstance(data_cfg, ml_collections.ConfigDict):
        return data_cfg
    return ml_collections.ConfigDict(dict(data_cfg))


def build_source(data_cfg):
    """The random-access source named by ``data_cfg.name`` (see the module docstring)."""
    d = _section(data_cfg)
    name, data_dir = d.name, d.data_dir
    if name == SYNTHETIC:
        from nag_jax.data.synthetic import ShapesDataset

        return ShapesDataset(
            image_size=int(d.image_size),
            num_classes=int(d.num_classes),
            seed=int(d.synthetic_seed),
            size=int(d.num_examples),
            variant=str(d.synthetic_variant),
        )
    if name == "image_folder":
        from nag_jax.data.sources import ImageFolderSource

        return ImageFolderSource(data_dir)
    if name == "latents":
        from nag_jax.data.latents import LatentsSource

        return LatentsSource(data_dir)
    if name == IDX:
        from nag_jax.data.sources import IdxSource

        return IdxSource(
            data_dir,
            d.split,
            image_size=int(d.image_size),
            channels=int(d.channels),
            fit=str(d.idx_fit),
        )
    from nag_jax.data.sources import TfdsSource

    return TfdsSource(name, d.split, data_dir, prepare=bool(d.tfds_prepare))


def _kind_and_scale(name: str, source) -> tuple[str, float]:
    """(``_LoadBatch`` kind, latent scale) of ``config.data.name``'s source."""
    kind = {SYNTHETIC: "synthetic", "latents": "latents", IDX: "idx"}.get(name, "image")
    scale = 1.0
    if kind == "latents" and not source.metadata.get("scaled", True):
        from nag_jax.data.latents import SD_VAE_SCALE  # the SD-VAE's, nag_jax.models.vae

        scale = float(source.metadata.get("scale_factor", SD_VAE_SCALE))
    return kind, scale


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """global_batch_size // process_count, with a clear error when it does not divide."""
    global_batch_size, process_count = int(global_batch_size), int(process_count)
    if global_batch_size <= 0 or global_batch_size % process_count:
        lo = max(process_count, global_batch_size // process_count * process_count)
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by process_count="
            f"{process_count}: each process loads global_batch_size / process_count examples. "
            f"Use a multiple of {process_count}, e.g. {lo} or {lo + process_count}"
        )
    return global_batch_size // process_count


class EpochKeys:
    """Record keys of this process's stream: position p -> (epoch, record key), vectorised.

    The first N' = N - N % process_count records are split strided (process i owns keys
    i, i + P, i + 2P, ...); epoch e visits the process's records in the order of
    ``np.random.default_rng([seed, e, process_index]).permutation(N' / P)`` (identity without
    shuffle). Position p is in epoch p // (N' / P).
    """

    def __init__(self, n, process_index, process_count, seed, *, shuffle=True):
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.per_process = (int(n) - int(n) % self.process_count) // self.process_count
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self._cache = {}

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, epoch, self.process_index])
            perm = rng.permutation(self.per_process)
            if len(self._cache) >= 3:  # batches straddle at most two epochs; threads overlap
                self._cache.pop(min(self._cache))
            self._cache[epoch] = perm
        return perm

    def __call__(self, positions):
        positions = np.asarray(positions, dtype=np.int64)
        epochs, local = np.divmod(positions, self.per_process)
        if self.shuffle:
            for e in np.unique(epochs):
                sel = epochs == e
                local[sel] = self._perm(int(e))[local[sel]]
        return epochs, local * self.process_count + self.process_index

    def __getstate__(self):  # do not ship cached permutations to worker processes
        return {**self.__dict__, "_cache": {}}


class _BatchOf:
    """Batch index b -> loaded batch of positions [b * B, (b + 1) * B)."""

    def __init__(self, keys: EpochKeys, batch: int, load):
        self.keys, self.batch, self.load = keys, int(batch), load

    def __call__(self, b):
        positions = np.arange(int(b) * self.batch, (int(b) + 1) * self.batch, dtype=np.int64)
        return self.load(self.keys(positions))


class _LoadBatch:
    """Turns a batch of (epoch, record key) into model-ready arrays (picklable for workers).

    Image sources: ``bad_images`` "skip" replaces an undecodable record k by the first decodable
    one of k + P, k + 2P, ... (mod ``num_keys``, P = ``process_count``: the same process's shard)
    and logs each bad file once with the count so far (per loading process); "fail" raises."""

    def __init__(
        self,
        source,
        *,
        kind,
        seed,
        image_size,
        random_flip,
        return_index,
        scale,
        bad_images="skip",
        process_count=1,
        num_keys=None,
    ):
        self.source, self.kind, self.seed = source, kind, seed
        self.image_size, self.random_flip = image_size, random_flip
        self.return_index, self.scale = return_index, scale
        self.bad_images, self.process_count = bad_images, int(process_count)
        self.num_keys = len(source) if num_keys is None else int(num_keys)
        self._bad: set[int] = set()
        self._lock = threading.Lock()

    def __getstate__(self):  # the lock does not pickle; each worker counts its own skips
        return {**self.__dict__, "_lock": None, "_bad": set()}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _image(self, key: int):
        """(source[k], k) for k = key, or with bad_images="skip" the first decodable record of its
        shard after it (module docstring, 4.)."""
        from nag_jax.data.sources import BadImageError

        k = key
        for _ in range(min(MAX_CONSECUTIVE_BAD, max(1, self.num_keys // self.process_count))):
            if k not in self._bad:
                try:
                    return self.source[k], k
                except BadImageError as e:
                    if self.bad_images != "skip":
                        hint = (
                            ": replace or remove the file, or set config.data.bad_images='skip' "
                            "to step over undecodable images"
                        )
                        raise BadImageError(e.path, e.index, e.cause, hint) from e
                    with self._lock:
                        self._bad.add(k)
                        count = len(self._bad)
                    logging.warning(
                        "skipped: %s; %d undecodable image(s) skipped so far by this loader "
                        "(config.data.bad_images='skip'; a later record of the same shard takes "
                        "its place; 'fail' stops instead)",
                        e,
                        count,
                    )
            k = (k + self.process_count) % self.num_keys
        raise RuntimeError(
            f"record {key} of {self.source!r} and the next decodable-image candidates of its "
            f"shard ({MAX_CONSECUTIVE_BAD} at most) all fail to decode: the data itself is "
            "broken or unreadable (permissions, a failed copy); check config.data.data_dir"
        )

    def __call__(self, batch):
        epochs, keys = batch
        epochs = np.asarray(epochs, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        flips = (
            flip_decisions(self.seed, epochs, keys)
            if self.random_flip
            else np.zeros(keys.shape, dtype=bool)
        )
        if self.kind == "synthetic":
            out = self.source.render_batch(keys)
            images = out["image"]
            if flips.any():
                images[flips] = images[flips][:, :, ::-1]
            labels = out["label"]
        elif self.kind == "idx":  # in memory, one vectorised gather (nag_jax.data.idx)
            out = self.source.get_batch(keys)
            images = out["image"]
            images = to_float(np.where(flips[:, None, None, None], images[:, :, ::-1], images))
            labels = out["label"]
        elif self.kind == "latents":
            exs = [self.source[int(k)] for k in keys]
            lats = []
            for ex, flip in zip(exs, flips):
                z = ex["latents"]  # (V, h, w, c)
                if flip and z.shape[0] > 1:
                    lat = z[1]  # stored latent of the flipped image: exact
                elif flip:
                    lat = z[0][:, ::-1]  # approximate: flipped latent ~ latent of flipped image
                else:
                    lat = z[0]
                lats.append(lat)
            images = np.stack(lats).astype(np.float32) * np.float32(self.scale)
            labels = np.array([ex["label"] for ex in exs], dtype=np.int32)
        else:
            imgs, labels, used = [], [], []
            for k, flip in zip(keys, flips):
                ex, k_used = self._image(int(k))
                arr = center_crop_arr(ex["image"], self.image_size)
                imgs.append(arr[:, ::-1] if flip else arr)
                labels.append(ex["label"])
                used.append(k_used)
            images = to_float(np.stack(imgs))
            labels = np.asarray(labels, dtype=np.int32)
            keys = np.asarray(used, dtype=np.int64)  # "index": the records actually read
        out = {"image": np.ascontiguousarray(images, dtype=np.float32), "label": labels}
        if self.return_index:
            out["index"] = keys
            out["epoch"] = epochs
        return out


def create_dataset(
    data_cfg,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    global_batch_size: int | None = None,
):
    """A checkpointable ``grain.DatasetIterator`` of this process's batches.

    Args:
      data_cfg: the ``config.data`` block (keys in the module docstring).
      seed: shuffle / flip seed (the run's seed; reduced mod 2**32 for grain).
      process_index, process_count: this process's shard (default jax.process_index/count()).
      global_batch_size: examples per step over all processes (default data_cfg's).
    Returns:
      iterator yielding {"image": (B_local, H, W, C) float32, "label": (B_local,) int32}
      (+ "index", "epoch" (B_local,) int64 with return_index); ``get_state()``/``set_state()``.
    """
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    process_index, process_count = int(process_index), int(process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    d = _section(data_cfg)
    if global_batch_size is None:
        global_batch_size = d.global_batch_size
    batch = local_batch_size(global_batch_size, process_count)
    seed = int(seed) % 2**32

    source = build_source(d)
    name = d.name
    kind, scale = _kind_and_scale(name, source)

    n = len(source)
    n_even = n - n % process_count
    per_process = n_even // process_count
    num_epochs = d.num_epochs
    if per_process < batch:
        raise ValueError(
            f"dataset {name!r} has {n} examples: {per_process} per process "
            f"(process_count={process_count}), fewer than the local batch {batch} "
            f"(global_batch_size={global_batch_size}); use a smaller batch or more data"
        )

    keys = EpochKeys(n, process_index, process_count, seed, shuffle=bool(d.shuffle))
    num_batches = sys.maxsize if num_epochs is None else per_process * int(num_epochs) // batch
    load = _LoadBatch(
        source,
        kind=kind,
        seed=seed,
        image_size=int(d.image_size),
        random_flip=bool(d.random_flip),
        return_index=bool(d.return_index),
        scale=scale,
        bad_images=d.bad_images,
        process_count=process_count,
        num_keys=n_even,
    )
    ds = grain.MapDataset.range(num_batches).map(_BatchOf(keys, batch, load))
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=int(d.num_threads),
            prefetch_buffer_size=int(d.prefetch_buffer_size),
        )
    )
    num_workers = int(d.num_workers)
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # grain's worker processes read absl flags; outside an absl app (notebooks, tests)
            # nothing parsed them, so take the defaults.
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def dataset_info(data_cfg) -> dict:
    """Shape / class facts of the configured dataset without building a pipeline.

    Returns {"num_examples", "num_classes", "class_names", "example_shape"} (None where unknown).
    """
    d = _section(data_cfg)
    source = build_source(d)
    name, size = d.name, int(d.image_size)
    if name == "latents":
        shape = tuple(source.latent_shape)
        num_classes = source.metadata.get("num_classes")
        class_names = source.metadata.get("class_names")
    elif name == IDX:
        shape = tuple(source.shape)
        num_classes, class_names = source.num_classes, source.class_names
    else:
        shape = (size, size, 3)
        num_classes = getattr(source, "num_classes", None)
        class_names = getattr(source, "class_names", None)
    return {
        "num_examples": len(source),
        "num_classes": num_classes,
        "class_names": class_names,
        "example_shape": shape,
    }


# The record order of `real_images` (fixed: the same real images in every run and process).
_REAL_ORDER_SEED = 0x5EA1_0DE5


def _record_labels(source) -> np.ndarray:
    """(N,) labels of every record of a random-access source that lists them."""
    labels = getattr(source, "labels", None)
    if labels is None:
        raise ValueError(
            f"real images of given classes need the labels of every record, and {source!r} does "
            "not list them (the synthetic_shapes, idx and image_folder sources do); call "
            "real_images without labels"
        )
    return np.asarray(labels, np.int64)


def real_images(data_cfg, keys, labels=None) -> dict:
    """Real examples of ``config.data``, model-ready and deterministic: key k -> one example.

    The reference data of measurements (not training batches): no shuffle seed, no flips, the
    same example for the same key in every run and process.

    Args:
      data_cfg: the ``config.data`` block (any source of ``build_source``).
      keys: (N,) non-negative ints.
      labels: optional (N,) class ids: example n is then of class ``labels[n]``.
    Returns:
      {"image": (N, S, S, C) float32 in [-1, 1] (C: 3, or ``data.channels`` for "idx"; latents
      (N, h, w, 4) scaled as the pipeline's), "label": (N,) int32}.

    synthetic_shapes: ``ShapesDataset.render_batch(keys, labels)`` (the shapes of index k; the
    generator is unbounded, so keys far above ``num_examples`` are shapes no training batch
    draws). Other sources: record ``order[k % N]`` of a fixed permutation ``order`` of the N
    records (with labels: of the records of that class), read and preprocessed as the pipeline
    does (idx: fitted to ``image_size``, ``channels`` as configured); keys fewer than N apart
    (with labels: fewer than the class's count) are distinct records.
    """
    d = _section(data_cfg)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size and keys.min() < 0:
        raise ValueError(f"real_images keys must be >= 0, got a minimum of {keys.min()}")
    source = build_source(d)
    if d.name == SYNTHETIC:
        out = source.render_batch(keys, labels)
        return {"image": np.asarray(out["image"], np.float32), "label": out["label"]}
    n = len(source)
    if labels is None:
        records = np.random.default_rng(_REAL_ORDER_SEED).permutation(n)[keys % n]
    else:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape != keys.shape:
            raise ValueError(f"labels shape {labels.shape} must match keys shape {keys.shape}")
        record_labels = _record_labels(source)
        records = np.empty_like(keys)
        for c in np.unique(labels):
            members = np.flatnonzero(record_labels == c)
            if not members.size:
                raise ValueError(
                    f"{source!r} has no record of class {c} (its labels are "
                    f"{sorted(set(record_labels.tolist()))[:20]}): check the labels asked for "
                    "(config.model.num_classes against the data's)"
                )
            order = members[
                np.random.default_rng([_REAL_ORDER_SEED, int(c)]).permutation(len(members))
            ]
            sel = labels == c
            records[sel] = order[keys[sel] % len(members)]
    kind, scale = _kind_and_scale(d.name, source)
    load = _LoadBatch(
        source,
        kind=kind,
        seed=0,
        image_size=int(d.image_size),
        random_flip=False,
        return_index=False,
        scale=scale,
        bad_images=d.bad_images,
    )
    out = load((np.zeros_like(records), records))
    return {"image": out["image"], "label": np.asarray(out["label"], np.int32)}
