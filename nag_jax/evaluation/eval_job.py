"""Sample-and-evaluate: N images -> ADM-format .npz -> FID / sFID / IS / precision / recall.

    python -m nag_jax.main --config=configs/eval_sit_xl.py --workdir=runs/eval \
        --config.eval.checkpoint=ckpt/sit_xl2_256 --config.eval.inception_path=fid.npz \
        --config.eval.reference=VIRTUAL_imagenet256_labeled.npz --config.sample.nag_scale=1.5

Time conventions: none of its own; sampling goes through nag_jax.builders (SiT float t, 0 = noise;
DiT integer step, 0 = least noise; guidance intervals in noise level, 1 = pure noise).

Determinism: image i depends only on (config.seed, i) and the sampling configuration:
    sample_key, label_key = split(key(seed))
    keys[i] = fold_in(sample_key, i)   -> x_init and every sampler noise of image i (builders)
    y[i]    = randint(fold_in(label_key, i), 0, num_classes)   (or sample.labels[i % len])
so the set is the same on 1 device or a pod, with any batch size, and resuming is trivial.

Layout (run_dir = <workdir>/eval/<sampling key>, the key hashing everything image i depends on:
model, checkpoint, process, sample settings except batch size / count, seed, VAE):
    run_dir/sampling.json              the sampling configuration behind the key
    run_dir/chunks/<first>-<last>.npz  {"indices", "images" uint8 NHWC, "labels"}, written
                                       atomically (tmp + rename) by process 0 after each batch
    run_dir/samples_<N>.npz            ADM format: arr_0 uint8 (N, H, W, 3), arr_1 labels
A killed job leaves only complete chunks; a rerun lists the indices they hold and samples just the
missing ones (no duplicates, no gaps); raising N later reuses the first images.
Results: one JSON line per evaluation appended to config.eval.results_file (default
<workdir>/eval_results.jsonl) plus the same row in a CSV next to it, keyed by `row["key"]`, the
hash of the full sampling configuration + N + extractor + reference.

uint8 conversion: nag_jax.utils.to_uint8 = clip(round(127.5 x + 127.5), 0, 255), everywhere.

During training: `evaluate = make_fid_evaluator(config, model, workdir)` once (alias
`fid_callback`), then `writer.write_scalars(step, evaluate(state.ema_params))` every K steps.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.evaluation import metrics as metrics_lib
from nag_jax.evaluation import reference_stats
from nag_jax.utils import to_uint8

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
# Names used when the extractor is NOT the FID Inception (proxy classifier, random weights): the
# same formulas in another feature space, never to be read as FID / IS.
PROXY_NAMES = {
    "fid": "proxy_fd",
    "sfid": "proxy_sfd",
    "inception_score": "proxy_score",
    "precision": "proxy_precision",
    "recall": "proxy_recall",
}


def metric_names(values: dict, is_fid_inception: bool) -> dict:
    """Renames metric keys to PROXY_NAMES unless the values come from the FID Inception."""
    return values if is_fid_inception else {PROXY_NAMES.get(k, k): v for k, v in values.items()}


RESULT_COLUMNS = (
    "key",
    "time",
    "model",
    "checkpoint",
    "sampler",
    "num_steps",
    "method",
    "cfg_scale",
    "nag_scale",
    "cfg_interval",
    "nag_interval",
    "cfg_channels",
    "seed",
    "num_images",
    "extractor",
    "is_fid_inception",
    "reference",
    "fid",
    "sfid",
    "inception_score",
    "precision",
    "recall",
    *PROXY_NAMES.values(),
    "samples",
)


def _to_dict(cfg) -> dict:
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- configuration


def sampling_identity(config) -> dict:
    """Everything image i depends on (not the batch size, not N, not the device count)."""
    sample = {
        k: v
        for k, v in _to_dict(config.get("sample")).items()
        if k not in ("batch_size", "num_images", "return_trajectory")
    }
    ec = config.get("eval") or {}
    return {
        "model": _to_dict(config.model),
        "process": _to_dict(config.get("process")),
        "sample": sample,
        "seed": int(config.seed),
        "checkpoint": checkpoint_path(config),
        "vae": _get(ec, "vae"),
    }


def checkpoint_path(config) -> str | None:
    ec = config.get("eval") or {}
    path = _get(ec, "checkpoint") or _get(config.get("train"), "init_from")
    return os.path.abspath(path) if path else None


def is_latent(config) -> bool:
    return int(config.model.in_channels) != 3


# ------------------------------------------------------------------------- per-image randomness


def image_labels(config, indices) -> jax.Array:
    """(N,) int32 labels of global image indices: sample.labels cycled, or random from (seed, i)."""
    indices = jnp.asarray(indices, jnp.uint32)
    labels = _get(config.get("sample"), "labels")
    if labels is not None and len(labels):
        table = jnp.asarray(list(labels), jnp.int32)
        return table[indices % len(labels)]
    _, label_key = jax.random.split(jax.random.key(int(config.seed)))
    n = int(config.model.num_classes)
    return jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(label_key, i), (), 0, n))(
        indices
    ).astype(jnp.int32)


def image_keys(config, indices) -> jax.Array:
    """(N,) typed PRNG keys, keys[j] = fold_in(sample_key, indices[j])."""
    from nag_jax.builders import per_image_keys

    sample_key, _ = jax.random.split(jax.random.key(int(config.seed)))
    return per_image_keys(sample_key, indices)


def make_batch_sampler(
    config,
    model,
    params_like,
    mesh,
    *,
    sample_fn: Callable | None = None,
    decode: tuple[Callable, object] | None = None,
):
    """Returns run_batch(params, indices (B,) int) -> (uint8 images (B, H, W, 3), labels (B,)),
    numpy, compiled once (params may change between calls: EMA during training).

    B must be a multiple of the mesh's batch shards and of the process count
    (``padded_batch_size``). `params_like`: the params tree or its shapes (for the shardings;
    config.parallel's FSDP rules apply). `sample_fn(params, keys, y)` defaults to
    nag_jax.builders.build_sampler(config, model); `decode = (fn, decode_params)` with
    fn(decode_params, latents) -> images in [-1, 1] (the VAE; `build_decoder`) runs inside the
    same jit, its params a replicated jit argument. Multi-process: every process passes the
    same indices; the images are gathered on every process.
    """
    from nag_jax import parallel

    if sample_fn is None:
        from nag_jax.builders import build_sampler

        sample_fn = build_sampler(config, model)
    batch_sharding = parallel.batch_sharding(mesh)
    param_shardings = parallel.tree_shardings(params_like, mesh)

    decode_fn, decode_params = decode if decode is not None else (None, None)
    if decode_params is not None:
        decode_params = jax.device_put(decode_params, parallel.replicated(mesh))

    def _fn(p, dp, idx):
        keys = image_keys(config, idx)
        y = image_labels(config, idx)
        x = sample_fn(p, keys, y)
        if decode_fn is not None:
            x = decode_fn(dp, x)
        return x, y

    jitted = jax.jit(
        _fn,
        in_shardings=(param_shardings, parallel.replicated(mesh), batch_sharding),
        out_shardings=batch_sharding,
    )
    procs, pi = jax.process_count(), jax.process_index()

    def run_batch(params, indices):
        idx = np.asarray(indices, np.uint32)
        local = idx.reshape(procs, -1)[pi]
        g_idx = parallel.global_batch(local, mesh)
        x, y = jitted(jax.device_put(params, param_shardings), decode_params, g_idx)
        if procs > 1:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
            y = multihost_utils.process_allgather(y, tiled=True)
        return to_uint8(np.asarray(x)), np.asarray(y)

    # place params once (device_put of already-placed arrays is a no-op in run_batch)
    run_batch.place = lambda p: jax.device_put(p, param_shardings)
    return run_batch


def padded_batch_size(batch_size: int, mesh) -> int:
    from nag_jax import parallel

    shards = math.lcm(parallel.batch_shards(mesh), jax.process_count())
    return max(shards, -(-int(batch_size) // shards) * shards)


# ------------------------------------------------------------------------- chunked, resumable


def chunk_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "chunks")


def covered_indices(run_dir: str) -> np.ndarray:
    """Sorted unique image indices held by the complete chunk files of run_dir."""
    found = []
    for path in glob.glob(os.path.join(chunk_dir(run_dir), "*.npz")):
        if ".tmp" in os.path.basename(path):
            continue
        with np.load(path) as z:
            found.append(np.asarray(z["indices"], np.int64))
    return np.unique(np.concatenate(found)) if found else np.zeros((0,), np.int64)


def write_chunk(run_dir: str, indices, images, labels) -> str:
    d = chunk_dir(run_dir)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{int(indices[0]):08d}-{int(indices[-1]):08d}.npz")
    tmp = os.path.join(d, f"{int(indices[0]):08d}.tmp-{os.getpid()}.npz")
    np.savez(tmp, indices=np.asarray(indices, np.int64), images=images, labels=labels)
    os.replace(tmp, path)
    return path


def _chunk_files(run_dir: str) -> list[str]:
    return sorted(
        p
        for p in glob.glob(os.path.join(chunk_dir(run_dir), "*.npz"))
        if ".tmp" not in os.path.basename(p)
    )


def chunks_to_adm_npz(run_dir: str, num_images: int, out_path: str, block: int = 1024) -> None:
    """Writes images [0, num_images) from the chunk files as an ADM .npz (arr_0 uint8 NHWC,
    arr_1 labels), streaming: arr_0 is written block by block into the zip member, so the
    50k x 256px set (9.8 GB) is never held in memory. Each index is taken exactly once; a gap
    raises. Written to a tmp file and renamed (atomic)."""
    files = _chunk_files(run_dir)
    owner = np.full(num_images, -1, np.int64)
    row = np.zeros(num_images, np.int64)
    for fi, path in enumerate(files):
        with np.load(path) as z:
            idx = np.asarray(z["indices"], np.int64)
        keep = (idx < num_images) & (owner[np.minimum(idx, num_images - 1)] < 0)
        owner[idx[keep]] = fi
        row[idx[keep]] = np.flatnonzero(keep)
    missing = np.flatnonzero(owner < 0)
    if len(missing):
        raise RuntimeError(
            f"{run_dir}: {len(missing)} of {num_images} images missing (first {missing[:5]}); "
            "run the sampling again to complete the set."
        )
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(fi):
        if fi not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            with np.load(files[fi]) as z:
                cache[fi] = (np.asarray(z["images"]), np.asarray(z["labels"]))
        return cache[fi]

    shape = (num_images, *load(int(owner[0]))[0].shape[1:])
    labels = np.zeros(num_images, np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path[:-4]}.tmp-{os.getpid()}.npz"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(f, header)
            for b0 in range(0, num_images, block):
                ids = np.arange(b0, min(b0 + block, num_images))
                out = np.empty((len(ids), *shape[1:]), np.uint8)
                for fi in np.unique(owner[ids]):
                    sel = owner[ids] == fi
                    images, lab = load(int(fi))
                    out[sel] = images[row[ids[sel]]]
                    labels[ids[sel]] = lab[row[ids[sel]]]
                f.write(out.tobytes())
        with zf.open("arr_1.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, labels)
    os.replace(tmp, out_path)


def _missing_indices(run_dir: str, num_images: int) -> np.ndarray:
    have = np.zeros(num_images, bool)
    if jax.process_index() == 0:
        cov = covered_indices(run_dir)
        have[cov[cov < num_images]] = True
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        have = np.asarray(multihost_utils.broadcast_one_to_all(have))
    return np.flatnonzero(~have)


def sample_to_chunks(
    run_batch: Callable,
    run_dir: str,
    num_images: int,
    batch_size: int,
    *,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Samples every index in [0, num_images) not yet in a chunk; returns how many it sampled.

    `batch_size` must suit `run_batch` (padded_batch_size); the last batch is padded by
    repeating its last index and the padding is dropped. `on_chunk(n_written)` runs after each
    chunk (tests use it to simulate a kill).
    """
    missing = _missing_indices(run_dir, num_images)
    t0, done = time.time(), 0
    for start in range(0, len(missing), batch_size):
        idx = missing[start : start + batch_size]
        n = len(idx)
        padded = np.concatenate([idx, np.repeat(idx[-1:], batch_size - n)])
        images, labels = run_batch(padded)
        if jax.process_index() == 0:
            write_chunk(run_dir, idx, images[:n], labels[:n])
        done += n
        logging.info(
            "sampled %d / %d missing images (%.2f img/s)",
            done,
            len(missing),
            done / max(time.time() - t0, 1e-9),
        )
        if on_chunk is not None:
            on_chunk(done)
    return done


def write_adm_npz(path: str, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """ADM sample batch: arr_0 uint8 (N, H, W, 3), arr_1 int labels (if given); atomic."""
    if images.dtype != np.uint8:
        raise ValueError(f"ADM .npz images must be uint8, got {images.dtype}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = labels
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- extractors


def build_extractor(config) -> metrics_lib.FeatureExtractor:
    """config.eval.extractor: "inception" (pytorch-fid weights at config.eval.inception_path,
    preprocessing config.eval.inception_preprocess: "pytorch_fid" or "adm_tf"),
    "proxy" (nag_jax.evaluation.proxy.build_extractor(config), e.g. the demo's classifier) or
    "random_inception" (random weights: plumbing tests only, never a quality number)."""
    ec = config.get("eval") or {}
    kind = _get(ec, "extractor", "inception")
    if kind == "inception":
        from nag_jax.evaluation import inception

        params = inception.load_inception_params(_get(ec, "inception_path", ""))
        fp = hashlib.sha256(
            np.asarray(params["Conv2d_1a_3x3"]["conv"]["kernel"]).tobytes()
            + np.asarray(params["fc"]["bias"]).tobytes()
        ).hexdigest()[:8]
        mode = _get(ec, "inception_preprocess", "pytorch_fid")
        return inception.extractor(params, f"fid_inception_pt2015-{fp}", preprocess_mode=mode)
    if kind == "random_inception":
        from nag_jax.evaluation import inception

        seed = int(_get(ec, "extractor_seed", 0))
        logging.warning(
            "eval.extractor='random_inception': RANDOM weights. The numbers are NOT FID and "
            "must not be reported as sample quality."
        )
        params = inception.init_random_params(jax.random.key(seed))
        return inception.extractor(params, f"random_inception_seed{seed}", is_fid_inception=False)
    if kind == "proxy":
        try:
            from nag_jax.evaluation import proxy
        except ImportError as e:
            raise ImportError(
                "eval.extractor='proxy' needs nag_jax.evaluation.proxy.build_extractor(config) "
                "-> FeatureExtractor (the demo classifier); it is not available."
            ) from e
        return proxy.build_extractor(config)
    raise ValueError(
        f"config.eval.extractor={kind!r}; expected 'inception', 'proxy' or 'random_inception'"
    )


def load_reference(config, extractor, workdir: str) -> reference_stats.ReferenceStats:
    ec = config.get("eval") or {}
    ref = _get(ec, "reference")
    if not ref:
        raise ValueError(
            "config.eval.reference is not set: give an ADM reference batch .npz (arr_0 uint8 "
            "images, e.g. VIRTUAL_imagenet256_labeled.npz) or 'dataset' (config.data)."
        )
    cache = _get(ec, "cache_dir") or os.path.join(workdir, "reference_cache")
    return reference_stats.load_reference(
        ref,
        extractor,
        precomputed=_get(ec, "reference_stats", "images") == "precomputed",
        data_cfg=config.get("data"),
        num_images=_get(ec, "reference_num_images"),
        seed=int(_get(ec, "reference_seed", 0)),
        cache_dir=cache,
        batch_size=int(_get(ec, "feature_batch_size", 200)),
    )


# ------------------------------------------------------------------------- model pieces


def load_sampling_params(config):
    path = checkpoint_path(config)
    if not path:
        raise ValueError(
            "No checkpoint to evaluate: set config.eval.checkpoint to a converted release "
            "(python -m nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ "
            "directory (its latest EMA params are used)."
        )
    from nag_jax.weights import load_params

    return load_params(path)[0]


def build_decoder(config) -> tuple[Callable, object] | None:
    """(fn(vae_params, latents) -> images in [-1, 1], vae_params) for latent models
    (config.eval.vae: a diffusers folder or a converted Orbax dir); None for pixel models."""
    if not is_latent(config):
        return None
    ec = config.get("eval") or {}
    path = _get(ec, "vae")
    if not path:
        raise ValueError(
            f"config.model.in_channels={config.model.in_channels} means a latent model: set "
            "config.eval.vae to the SD-VAE (a local stabilityai/sd-vae-ft-ema folder or "
            "`python -m nag_jax.convert vae` output)."
        )
    from nag_jax import vae as vae_lib

    vae, vae_params = vae_lib.load_vae(path, chunk_size=int(_get(ec, "vae_chunk_size", 8)))
    return vae.decode, vae_params


# ------------------------------------------------------------------------- results table


def append_result(path: str, row: dict) -> None:
    """Appends `row` to a JSON-lines file and to `<stem>.csv` (RESULT_COLUMNS), process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    csv_path = os.path.splitext(path)[0] + ".csv"
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k) for k in RESULT_COLUMNS})


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------- the job


@dataclasses.dataclass
class EvalOutputs:
    row: dict
    samples_path: str
    run_dir: str


def sample_images(
    config,
    workdir: str,
    *,
    model=None,
    params=None,
    mesh=None,
    sample_fn: Callable | None = None,
    decode: tuple[Callable, object] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[str, str, dict]:
    """Samples config.eval.num_images images (resumable) -> (ADM .npz path, run_dir, identity).

    `identity` (written to run_dir/sampling.json) is `sampling_identity(config)` plus a
    fingerprint of the params, so a checkpoint directory whose latest step changed never reuses
    stale samples.
    """
    from nag_jax import builders, parallel

    ec = config.get("eval") or {}
    num_images = int(_get(ec, "num_images", 50_000))
    if params is None:
        params = load_sampling_params(config)
    identity = {**sampling_identity(config), "params": params_fingerprint(params)}
    run_dir = os.path.join(os.path.abspath(workdir), "eval", _digest(identity))
    out_path = os.path.join(run_dir, f"samples_{num_images}.npz")
    if os.path.exists(out_path):
        return out_path, run_dir, identity
    mesh = mesh if mesh is not None else parallel.create_mesh(config.get("parallel"))
    if jax.process_index() == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "sampling.json"), "w") as f:
            json.dump(identity, f, indent=2, sort_keys=True, default=str)
    model = model if model is not None else builders.build_model(config.model)
    if decode is None:
        decode = build_decoder(config)
    bs = _get(ec, "batch_size") or _get(config.get("sample"), "batch_size", 64)
    bs = padded_batch_size(int(bs), mesh)
    run_batch = make_batch_sampler(config, model, params, mesh, sample_fn=sample_fn, decode=decode)
    params = run_batch.place(params)
    sample_to_chunks(lambda idx: run_batch(params, idx), run_dir, num_images, bs, on_chunk=on_chunk)
    if jax.process_index() == 0:
        chunks_to_adm_npz(run_dir, num_images, out_path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("nag_jax.eval_job.samples_written")
    return out_path, run_dir, identity


def params_fingerprint(params) -> str:
    """sha256 over every leaf's path and shape and the bytes of the leaves up to 1M numbers
    (biases, embeddings' small parts, final layer...: any training step changes them)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(tuple(np.shape(leaf))).encode())
        fully = getattr(leaf, "is_fully_addressable", True)
        if np.size(leaf) <= 1 << 20 and fully:
            h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def evaluate_npz(config, workdir: str, samples_path: str, *, extractor=None) -> dict:
    """Metrics of an ADM-format sample .npz against config.eval.reference."""
    ec = config.get("eval") or {}
    extractor = extractor or build_extractor(config)
    fbs = int(_get(ec, "feature_batch_size", 200))
    feats = metrics_lib.extract_features(
        extractor, reference_stats.iter_npz_batches(samples_path, fbs), batch_size=fbs
    )
    ref = load_reference(config, extractor, workdir)
    return metrics_lib.compute_metrics(
        feats,
        ref,
        k=int(_get(ec, "pr_k", 3)),
        num_splits=int(_get(ec, "is_splits", 10)),
        block_size=int(_get(ec, "pr_block_size", 10000)),
    )


def result_row(
    config, num_images: int, extractor, values: dict, samples_path: str, identity: dict
) -> dict:
    """One results row; `key` hashes the sampling identity (incl. params fingerprint), N, the
    extractor and the reference."""
    ec = config.get("eval") or {}
    sc = config.get("sample") or {}
    row_identity = {
        **identity,
        "num_images": num_images,
        "extractor": extractor.name,
        "reference": _get(ec, "reference"),
    }
    return {
        "key": _digest(row_identity),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": config.model.name,
        "checkpoint": identity.get("checkpoint", checkpoint_path(config)),
        "sampler": _get(sc, "sampler"),
        "num_steps": _get(sc, "num_steps"),
        "method": _get(sc, "method"),
        "cfg_scale": _get(sc, "cfg_scale"),
        "nag_scale": _get(sc, "nag_scale"),
        "cfg_interval": list(_get(sc, "cfg_interval", (0.0, 1.0))),
        "nag_interval": list(_get(sc, "nag_interval", (0.0, 1.0))),
        "cfg_channels": _get(sc, "cfg_channels"),
        "seed": int(config.seed),
        "num_images": num_images,
        "extractor": extractor.name,
        "is_fid_inception": extractor.is_fid_inception,
        "reference": _get(ec, "reference"),
        **{k: None for k in METRICS},
        **metric_names({k: values.get(k) for k in METRICS}, extractor.is_fid_inception),
        "samples": samples_path,
        "sampling_config": identity,
    }


def run(config, workdir: str, **overrides) -> dict:
    """mode "eval": sample (resumable) -> ADM .npz -> metrics -> one results row (returned).

    With config.eval.samples set to an existing ADM .npz, sampling is skipped and that file is
    scored (the row's key then hashes the file's path, size and mtime).

    `overrides` (tests / notebooks): model, params, mesh, sample_fn, decode, on_chunk, extractor.
    """
    from nag_jax import parallel

    parallel.maybe_initialize_distributed()
    ec = config.get("eval") or {}
    extractor = overrides.pop("extractor", None) or build_extractor(config)
    given = _get(ec, "samples")
    if given:  # score an existing ADM-format .npz (e.g. from the PyTorch releases' sample_ddp)
        if not os.path.exists(given):
            raise FileNotFoundError(f"config.eval.samples={given!r} does not exist")
        st = os.stat(given)
        samples_path = os.path.abspath(given)
        identity = {"samples_file": samples_path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    else:
        samples_path, _, identity = sample_images(config, workdir, **overrides)
    values = evaluate_npz(config, workdir, samples_path, extractor=extractor)
    num_images = int(reference_stats.npz_array_shape(samples_path)[0][0])
    row = result_row(config, num_images, extractor, values, samples_path, identity)
    results = _get(ec, "results_file") or os.path.join(workdir, "eval_results.jsonl")
    append_result(results, row)
    tag = "" if extractor.is_fid_inception else " [NOT FID-Inception: relative numbers only]"
    shown = metric_names(values, extractor.is_fid_inception)
    logging.info("eval %s: %s%s", row["key"], shown, tag)
    return row


# ------------------------------------------------------------------------- during training


def make_fid_evaluator(
    config,
    model,
    workdir: str,
    *,
    num_images: int | None = None,
    batch_size: int | None = None,
    mesh=None,
    extractor=None,
    decode: tuple[Callable, object] | None = None,
) -> Callable[[object], dict[str, float]]:
    """For the training loop: returns evaluate(params) -> {"eval/fid": ..., ...} (floats).

    Built once (extractor, reference statistics -- cached on disk -- and the jitted sampler);
    each call samples `num_images` images in memory (default config.eval.train_num_images or
    1000) with the fixed per-index keys of config.seed (the same noise every call, so successive
    numbers differ by the weights only), extracts features and scores them against
    config.eval.reference. Call it on every process with the EMA params.
    Keys: eval/fid, eval/sfid, eval/inception_score, eval/precision, eval/recall (those the
    extractor supports); with any other extractor (demo proxy, random weights) the keys are
    eval/proxy_fd, eval/proxy_sfd, eval/proxy_score, eval/proxy_precision, eval/proxy_recall.
    """
    from nag_jax import parallel

    ec = config.get("eval") or {}
    n = int(num_images or _get(ec, "train_num_images", 1000))
    mesh = mesh if mesh is not None else parallel.create_mesh(config.get("parallel"))
    extractor = extractor or build_extractor(config)
    ref = load_reference(config, extractor, workdir)
    if decode is None:
        decode = build_decoder(config)
    bs = padded_batch_size(int(batch_size or _get(ec, "batch_size") or 64), mesh)
    run_batch = None

    def evaluate(params) -> dict[str, float]:
        nonlocal run_batch
        if run_batch is None:  # compiled on the first call, reused after
            run_batch = make_batch_sampler(config, model, params, mesh, decode=decode)
        images = []
        for start in range(0, n, bs):
            idx = np.arange(start, start + bs) % n
            imgs, _ = run_batch(params, idx)
            images.append(imgs[: min(bs, n - start)])
        feats = metrics_lib.extract_features(
            extractor, np.concatenate(images), batch_size=int(_get(ec, "feature_batch_size", 200))
        )
        values = metrics_lib.compute_metrics(
            feats, ref, num_splits=min(10, n), block_size=int(_get(ec, "pr_block_size", 10000))
        )
        named = metric_names(values, extractor.is_fid_inception)
        return {f"eval/{k}": float(v) for k, v in named.items()}

    return evaluate


# The name the training loop looks for.
fid_callback = make_fid_evaluator
