"""Precomputed SD-VAE latents stored as array_record shards: format, writer and reader.

A latents directory holds

    metadata.json                                   (written last; its presence = complete set)
    latents-00000-of-00008.array_record             (one file per shard)
    ...

Record layout (one record per example, little endian, no pickling):

    bytes 0..3    label, int32
    bytes 4..     latents, shape (V, h, w, c) in `dtype`, C order

V = 1 (the image's latent) or 2 (the image's latent, then the latent of the horizontally flipped
image -- fast-DiT style, so flipping at training time is exact). `dtype` is "float32",
"float16" (half the space; SD-VAE latents * 0.18215 are O(1), so float16's 3 significant digits are
ample) or "bfloat16" (via ml_dtypes). Readers always return float32.

metadata.json:

    {"format": "nag_jax.latents.v1", "latent_shape": [h, w, c], "dtype": "float16",
     "variants": ["image", "hflip"], "scale_factor": 0.18215, "scaled": true, "count": N,
     "num_classes": 1000, "image_size": 256, "source": "...", "vae": "...",
     "shards": [{"file": "latents-00000-of-00008.array_record", "count": n0}, ...]}

"scaled" says whether the stored latents are already multiplied by scale_factor (the releases'
convention: latent = encode(x).sample() * 0.18215; decode(z / 0.18215)). A training pipeline feeds
stored latents as they are when scaled is true, else multiplies by scale_factor.

Images that did not decode when encoding (``data.bad_images="skip"``) are left out: a shard then
holds fewer records, ``<shard>.skipped.json`` lists them ({"index", "file", "error"}) and
metadata.json gathers them under "skipped" (its "count" is the records actually stored).

Paths go through nag_jax.storage.paths (epath): metadata.json and the shards can be written to and
the
metadata read from ``gs://``. Reading the shards needs local files (array_record's reader opens
local paths only: google/array_record#120); a remote directory is one error line with the copy
command (launch/tpu_pod.sh copies it to every worker with ``LATENTS=gs://...``).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from nag_jax.models.vae.config import VAE_SCALE
from nag_jax.storage.paths import as_path, is_remote

FORMAT = "nag_jax.latents.v1"
METADATA_FILE = "metadata.json"
SD_VAE_SCALE = VAE_SCALE  # its one home: nag_jax.models.vae.config
_DTYPES = ("float32", "float16", "bfloat16")


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _DTYPES:
        raise ValueError(f"latent dtype {name!r} is not supported: expected one of {_DTYPES}")
    return np.dtype(name)


def shard_filename(shard: int, num_shards: int) -> str:
    return f"latents-{shard:05d}-of-{num_shards:05d}.array_record"


def encode_record(label: int, latents: np.ndarray, dtype: str) -> bytes:
    """Serialises one example: int32 label + (V, h, w, c) latents in `dtype`."""
    arr = np.ascontiguousarray(np.asarray(latents, dtype=np.float32).astype(_np_dtype(dtype)))
    return np.int32(label).astype("<i4").tobytes() + arr.tobytes()


def decode_record(record: bytes, latent_shape, num_variants: int, dtype: str):
    """Inverse of `encode_record` -> (label int32, latents (V, h, w, c) float32)."""
    label = np.frombuffer(record, dtype="<i4", count=1)[0]
    lat = np.frombuffer(record, dtype=_np_dtype(dtype), offset=4)
    return label, lat.reshape((num_variants, *latent_shape)).astype(np.float32)


def write_shard(path: str, labels, latents, dtype: str = "float16") -> None:
    """Writes one shard atomically (tmp file + rename); a remote ``path`` is written to a local
    temporary file first and copied (array_record writes local files only).

    labels: (N,) ints; latents: (N, V, h, w, c) float (V = 1 or 2 variants).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    labels = np.asarray(labels)
    latents = np.asarray(latents)
    if latents.ndim != 5 or latents.shape[0] != labels.shape[0]:
        raise ValueError(
            f"write_shard expects latents (N, V, h, w, c) and labels (N,), got {latents.shape} "
            f"and {labels.shape}"
        )
    dst = as_path(path)
    tmp = dst.parent / f"{dst.name}.tmp-{os.getpid()}"
    local = tmp
    if is_remote(dst):
        fd, name = tempfile.mkstemp(suffix=".array_record")
        os.close(fd)
        local = as_path(name)
    writer = ArrayRecordWriter(os.fspath(local), "group_size:1")
    try:
        for y, z in zip(labels, latents):
            writer.write(encode_record(int(y), z, dtype))
    finally:
        writer.close()
    if local != tmp:
        try:
            local.copy(tmp, overwrite=True)
        finally:
            local.unlink()
    tmp.replace(dst)


def write_metadata(directory: str, metadata: dict) -> None:
    """Writes metadata.json atomically (nag_jax.storage.weights.write_json); fills "format"."""
    from nag_jax.storage.weights import write_json

    write_json(str(as_path(directory) / METADATA_FILE), {"format": FORMAT, **metadata}, force=True)


def read_metadata(directory: str) -> dict:
    """Reads and checks metadata.json of a latents directory, local or remote (clear errors when
    missing)."""
    if not directory or not as_path(directory).is_dir():
        raise FileNotFoundError(
            f"latents data_dir {directory!r} does not exist: expected a directory with "
            f"{METADATA_FILE} and latents-*.array_record shards, written by "
            "`python -m nag_jax.main --config=... --config.mode=encode_latents` "
            "(nag_jax.jobs.encode_latents)"
        )
    path = as_path(directory) / METADATA_FILE
    if not path.exists():
        shards = [f for f in as_path(directory).iterdir() if f.name.endswith(".array_record")]
        raise FileNotFoundError(
            f"{path} is missing: the latents directory {directory!r} is incomplete "
            f"({len(shards)} shard file(s) present). Rerun encode_latents with the same workdir; "
            "it resumes and writes metadata.json when every shard is done"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def check_readable(directory: str) -> None:
    """UserError (one line with the copy command) for a remote latents directory: array_record
    reads local files only (google/array_record#120). nag_jax.main runs it before JAX starts."""
    if is_remote(directory):
        from nag_jax.errors import ConfigError  # a UserError and a ValueError

        local = "/tmp/" + (str(directory).rstrip("/").rsplit("/", 1)[-1] or "latents")
        raise ConfigError(
            f"config.data.data_dir={directory!r} is remote, and array_record reads local "
            f"files only (google/array_record#120): copy it to every host first (`gcloud "
            f"storage cp -r {directory} {local}`; launch/tpu_pod.sh does it with "
            f"LATENTS={directory}) or mount the bucket (gcsfuse), then pass "
            f"--config.data.data_dir={local}."
        )


class LatentsSource:
    """grain RandomAccessDataSource over a latents directory.

    ``src[i]`` -> {"latents": (V, h, w, c) float32, "label": int32}; order = shard order.
    """

    def __init__(self, directory: str):
        import grain

        self.directory = directory
        check_readable(directory)
        self.metadata = read_metadata(directory)
        paths = [str(as_path(directory) / s["file"]) for s in self.metadata["shards"]]
        missing = [p for p in paths if not as_path(p).exists()]
        if missing:
            raise FileNotFoundError(
                f"latents directory {directory!r}: {len(missing)} shard(s) listed in "
                f"{METADATA_FILE} are missing, e.g. {missing[0]}"
            )
        self._source = grain.sources.ArrayRecordDataSource(paths)
        self.latent_shape = tuple(self.metadata["latent_shape"])
        self.num_variants = len(self.metadata.get("variants", ["image"]))
        self.dtype = self.metadata["dtype"]
        if len(self._source) != self.metadata["count"]:
            raise ValueError(
                f"latents directory {directory!r}: shards hold {len(self._source)} records, "
                f"metadata.json says {self.metadata['count']}"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        label, lat = decode_record(
            self._source[index], self.latent_shape, self.num_variants, self.dtype
        )
        return {"latents": lat, "label": np.int32(label)}

    def __repr__(self) -> str:
        return f"LatentsSource({self.directory!r}, count={len(self)})"
