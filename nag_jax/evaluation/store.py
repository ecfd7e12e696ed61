"""The resumable sample store of an evaluation: chunk files -> one ADM-format ``.npz``.

Layout of a run directory (nag_jax.jobs.eval names it after the sampling identity):

    run_dir/chunks/<first>-<last>.npz  {"indices", "images" uint8 NHWC, "labels"}, written
                                       atomically (tmp + rename) by process 0 after each batch
    run_dir/samples_<N>.npz            ADM format: arr_0 uint8 (N, H, W, 3), arr_1 labels

A killed job leaves only complete chunks; a rerun lists the indices they hold and samples just the
missing ones (no duplicates, no gaps); raising N later reuses the first images. A chunk that does
not read back (corrupt bytes, a truncated copy) is renamed aside to ``<name>.corrupt`` with a
warning naming it, and its images are sampled again. The ADM file is streamed from the chunks,
so a 50k x 256px set (9.8 GB) is never held in memory. Readers of ADM files (batches, shapes) are
nag_jax.evaluation.reference_stats.iter_npz_batches / npz_array_shape. ``run_dir`` may be local or
remote (``gs://``; nag_jax.storage.paths): files are opened through epath.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from nag_jax.sampling.generate import iterate_batches
from nag_jax.storage.paths import as_path, atomic_write

# What a chunk that does not read back raises (np.load of a damaged .npz).
CHUNK_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError)


def chunk_dir(run_dir: str) -> str:
    return str(as_path(run_dir) / "chunks")


def _chunk_files(run_dir: str) -> list:
    """The complete chunk files (epath.Path) of run_dir, sorted by name."""
    d = as_path(chunk_dir(run_dir))
    if not d.exists():
        return []
    return sorted((p for p in d.glob("*.npz") if ".tmp" not in p.name), key=lambda p: p.name)


def _read_chunk(path, keys=("indices", "images", "labels")) -> tuple[np.ndarray, ...]:
    """The arrays ``keys`` of one chunk file (raises one of CHUNK_ERRORS if it is damaged)."""
    with as_path(path).open("rb") as f, np.load(f) as z:
        return tuple(np.asarray(z[k]) for k in keys)


def covered_indices(run_dir: str) -> np.ndarray:
    """Sorted unique image indices held by the complete chunk files of run_dir. A chunk that does
    not read back is renamed to ``<name>.corrupt`` (a warning names it): its images count as
    missing and are sampled again."""
    found = []
    for path in _chunk_files(run_dir):
        try:
            (idx,) = _read_chunk(path, ("indices",))
        except CHUNK_ERRORS as e:
            aside = path.parent / f"{path.name}.corrupt"
            logging.warning(
                "eval chunk %s does not read back (%s: %s): moved aside to %s; its images will "
                "be sampled again.",
                path,
                type(e).__name__,
                e,
                aside.name,
            )
            path.replace(aside)
            continue
        found.append(idx.astype(np.int64))
    return np.unique(np.concatenate(found)) if found else np.zeros((0,), np.int64)


def write_chunk(run_dir: str, indices, images, labels) -> str:
    """Writes one chunk atomically (tmp + rename); returns its path."""
    path = as_path(chunk_dir(run_dir)) / f"{int(indices[0]):08d}-{int(indices[-1]):08d}.npz"
    arrays = dict(indices=np.asarray(indices, np.int64), images=images, labels=labels)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def chunks_to_adm_npz(run_dir: str, num_images: int, out_path: str, block: int = 1024) -> None:
    """Writes images [0, num_images) from the chunk files as an ADM .npz (arr_0 uint8 NHWC,
    arr_1 labels), streaming: arr_0 is written block by block into the zip member. Each index is
    taken exactly once; a gap raises. Written to a tmp file and renamed (atomic)."""
    files = _chunk_files(run_dir)
    owner = np.full(num_images, -1, np.int64)
    row = np.zeros(num_images, np.int64)
    for fi, path in enumerate(files):
        idx = _load_or_explain(path, ("indices",))[0].astype(np.int64)
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
            cache[fi] = _load_or_explain(files[fi], ("images", "labels"))
        return cache[fi]

    shape = (num_images, *load(int(owner[0]))[0].shape[1:])
    labels = np.zeros(num_images, np.int64)
    out = as_path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.stem}.tmp-{os.getpid()}.npz"
    with tmp.open("wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(f, header)
            for b0 in range(0, num_images, block):
                ids = np.arange(b0, min(b0 + block, num_images))
                buf = np.empty((len(ids), *shape[1:]), np.uint8)
                for fi in np.unique(owner[ids]):
                    sel = owner[ids] == fi
                    images, lab = load(int(fi))
                    buf[sel] = images[row[ids[sel]]]
                    labels[ids[sel]] = lab[row[ids[sel]]]
                f.write(buf.tobytes())
        with zf.open("arr_1.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, labels)
    tmp.replace(out)


def _load_or_explain(path, keys) -> tuple[np.ndarray, ...]:
    """_read_chunk, with an error naming the damaged chunk and the fix."""
    try:
        return _read_chunk(path, keys)
    except CHUNK_ERRORS as e:
        raise RuntimeError(
            f"eval chunk {path} does not read back ({type(e).__name__}: {e}): delete it and run "
            "the evaluation again; its images are sampled again."
        ) from e


def missing_indices(run_dir: str, num_images: int) -> np.ndarray:
    """Indices in [0, num_images) no chunk holds (process 0 reads, every process gets them)."""
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

    ``run_batch(indices) -> (uint8 images, labels)`` (nag_jax.sampling.generate.make_batch_sampler);
    ``batch_size`` must suit it (generate.padded_batch_size). ``on_chunk(n_written)`` runs after
    each chunk (tests use it to simulate a kill).
    """
    missing = missing_indices(run_dir, num_images)
    done = 0
    if len(missing) < num_images:
        logging.info("eval: %d of %d images already sampled", num_images - len(missing), num_images)
    for idx, images, labels in iterate_batches(
        run_batch, missing, batch_size, desc="eval: sampling"
    ):
        if jax.process_index() == 0:
            write_chunk(run_dir, idx, images, labels)
        done += len(idx)
        if on_chunk is not None:
            on_chunk(done)
    return done
