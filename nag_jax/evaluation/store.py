"""The resumable sample store of an evaluation: chunk files -> one ADM-format ``.npz``.

Layout of a run directory (nag_jax.evaluation.eval_job names it after the sampling identity):

    run_dir/chunks/<first>-<last>.npz  {"indices", "images" uint8 NHWC, "labels"}, written
                                       atomically (tmp + rename) by process 0 after each batch
    run_dir/samples_<N>.npz            ADM format: arr_0 uint8 (N, H, W, 3), arr_1 labels

A killed job leaves only complete chunks; a rerun lists the indices they hold and samples just the
missing ones (no duplicates, no gaps); raising N later reuses the first images. The ADM file is
streamed from the chunks, so a 50k x 256px set (9.8 GB) is never held in memory. Readers of ADM
files (batches, shapes) are nag_jax.evaluation.reference_stats.iter_npz_batches / npz_array_shape.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from nag_jax.generate import iterate_batches


def chunk_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "chunks")


def _chunk_files(run_dir: str) -> list[str]:
    return sorted(
        p
        for p in glob.glob(os.path.join(chunk_dir(run_dir), "*.npz"))
        if ".tmp" not in os.path.basename(p)
    )


def covered_indices(run_dir: str) -> np.ndarray:
    """Sorted unique image indices held by the complete chunk files of run_dir."""
    found = []
    for path in _chunk_files(run_dir):
        with np.load(path) as z:
            found.append(np.asarray(z["indices"], np.int64))
    return np.unique(np.concatenate(found)) if found else np.zeros((0,), np.int64)


def write_chunk(run_dir: str, indices, images, labels) -> str:
    """Writes one chunk atomically (tmp + rename); returns its path."""
    d = chunk_dir(run_dir)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{int(indices[0]):08d}-{int(indices[-1]):08d}.npz")
    tmp = os.path.join(d, f"{int(indices[0]):08d}.tmp-{os.getpid()}.npz")
    np.savez(tmp, indices=np.asarray(indices, np.int64), images=images, labels=labels)
    os.replace(tmp, path)
    return path


def chunks_to_adm_npz(run_dir: str, num_images: int, out_path: str, block: int = 1024) -> None:
    """Writes images [0, num_images) from the chunk files as an ADM .npz (arr_0 uint8 NHWC,
    arr_1 labels), streaming: arr_0 is written block by block into the zip member. Each index is
    taken exactly once; a gap raises. Written to a tmp file and renamed (atomic)."""
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

    ``run_batch(indices) -> (uint8 images, labels)`` (nag_jax.generate.make_batch_sampler);
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
