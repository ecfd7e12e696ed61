"""IDX datasets (MNIST, Fashion-MNIST and anything in that layout) as a random-access source.

A data folder holds the four files of the classic layout, gzipped or not::

    DIR/train-images-idx3-ubyte[.gz]   (N, H, W) uint8     DIR/train-labels-idx1-ubyte[.gz]  (N,)
    DIR/t10k-images-idx3-ubyte[.gz]    (M, H, W) uint8     DIR/t10k-labels-idx1-ubyte[.gz]   (M,)

("train-images.idx3-ubyte" with a dot, as some mirrors spell it, works too), plus an optional
``dataset.json`` written by ``python -m nag_jax.data.fetch`` (name, class names, the checked
sha256 of every file). ``python -m nag_jax.data.fetch NAME DIR`` obtains and checks the files;
files put in DIR by hand are read the same way.

The IDX format (LeCun et al.): a big-endian header ``0 0 TYPE NDIM`` then NDIM uint32 sizes,
then the values in C order; TYPE 0x08 = uint8 (the others: 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64).

Splits (``config.data.split``): "train" (the train files), "test" (the t10k files), either with
a Python slice of record indices, e.g. "train[:55000]" / "train[55000:]" (a held-out part of
train for validation; the same indices on every process).

Images (``IdxSource[i]``): ``{"image": (S, S, C) uint8, "label": int32}`` with S =
``image_size`` and C = ``channels`` (1: grey; 3: grey repeated, for an RGB model). How the file's
H x W becomes S x S (``fit``):
  "pad"    centred zero padding (the datasets' background is black, 0), or a centred crop when
           the file's images are larger than S: 28 -> 32 adds 2 pixels on every side;
  "resize" PIL bicubic resize to S x S (the aspect ratio of square files is kept).
No time convention here (data only). Pixels stay uint8; the pipeline maps them to [-1, 1].
"""

from __future__ import annotations

import gzip
import json
import os
import re

import numpy as np

from nag_jax.storage.paths import as_path

SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FITS = ("pad", "resize")
METADATA_FILE = "dataset.json"
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_RE = re.compile(r"^(train|test)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array stored in IDX bytes (gzip already removed); ValueError naming ``source`` when
    the header or the length is wrong."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(
            f"{source} is not an IDX file: its first bytes {data[:4].hex() or '(empty)'} are not "
            "00 00 <type> <ndim> (type one of 08 09 0b 0c 0d 0e)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: IDX header of {ndim} dimensions is truncated")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_DTYPES[data[2]])
    want = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise ValueError(
            f"{source}: IDX header says shape {shape} of {dtype.name} ({want} bytes with the "
            f"header) but the file has {len(data)} bytes: truncated or not an IDX file"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by its magic, not its name)."""
    with as_path(path).open("rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path) -> np.ndarray:
    """The array in the IDX file at ``path`` (gzipped or not)."""
    return parse_idx(read_bytes(path), source=str(path))


def write_idx(path, array, *, compress: bool | None = None) -> None:
    """Writes ``array`` as IDX (gzip when ``compress`` or the name ends in .gz); for tests and
    for preparing any dataset in this layout."""
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.dtype(_DTYPES[code])).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with as_path(path).open("wb") as f:
        f.write(data)


def file_names(prefix: str, kind: str) -> tuple[str, ...]:
    """Accepted names of one file, e.g. ("train-images-idx3-ubyte", "train-images.idx3-ubyte",
    ... + ".gz"); ``kind`` is "images" (idx3) or "labels" (idx1)."""
    tag = "idx3" if kind == "images" else "idx1"
    stems = (f"{prefix}-{kind}-{tag}-ubyte", f"{prefix}-{kind}.{tag}-ubyte")
    return tuple(s + ext for s in stems for ext in ("", ".gz"))


def find_file(directory, prefix: str, kind: str) -> str:
    """The path of the images or labels file of ``prefix`` ("train" / "t10k") in ``directory``;
    FileNotFoundError listing what is expected and how to get it."""
    for name in file_names(prefix, kind):
        if (as_path(directory) / name).exists():
            return str(as_path(directory) / name)
    raise FileNotFoundError(
        f"IDX data_dir {str(directory)!r} has no {file_names(prefix, kind)[0]}[.gz]: expected the "
        "four files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (gzipped or not). Get them with `python -m nag_jax.data.fetch "
        f"fashion_mnist {directory}` (or mnist), or put the dataset's own files there"
    )


def parse_split(split: str) -> tuple[str, slice]:
    """ "train" / "test" with an optional slice, e.g. "train[:55000]" -> ("train", slice(None,
    55000)); ValueError otherwise."""
    m = _SPLIT_RE.match(str(split).replace(" ", ""))
    if not m:
        raise ValueError(
            f"config.data.split={split!r} is not an IDX split: use 'train' or 'test', optionally "
            "with a slice of record indices, e.g. 'train[:55000]' or 'train[55000:]'"
        )
    lo, hi = (int(v) if v not in (None, "") else None for v in m.group(2, 3))
    return m.group(1), slice(lo, hi)


def read_metadata(directory) -> dict:
    """``dataset.json`` of the folder ({} when there is none)."""
    p = as_path(directory) / METADATA_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def fit_images(images: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8 ("pad": centred zero pad or centred crop;
    "resize": PIL bicubic)."""
    images = np.asarray(images)
    n, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if fit == "pad":
        out = np.zeros((n, size, size), images.dtype)
        # centred: offsets (size - h) // 2 on the padded side, (h - size) // 2 on the cropped one
        sy, dy = max(0, (h - size) // 2), max(0, (size - h) // 2)
        sx, dx = max(0, (w - size) // 2), max(0, (size - w) // 2)
        hh, ww = min(h, size), min(w, size)
        out[:, dy : dy + hh, dx : dx + ww] = images[:, sy : sy + hh, sx : sx + ww]
        return out
    if fit == "resize":
        from PIL import Image

        return np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
        )
    raise ValueError(f"config.data.idx_fit={fit!r} is not allowed: expected one of {FITS}")


class IdxSource:
    """One split of an IDX data folder (module docstring). ``src[i]`` -> {"image": (S, S, C)
    uint8, "label": int32}; ``get_batch(keys)`` -> {"image": (B, S, S, C), "label": (B,)} in one
    vectorised step. The files are read on first use in each process (worker processes receive
    the paths, not the arrays)."""

    def __init__(
        self,
        directory: str,
        split: str = "train",
        *,
        image_size: int | None = None,
        channels: int = 3,
        fit: str = "pad",
    ):
        if not directory or not as_path(directory).is_dir():
            raise FileNotFoundError(
                f"IDX data_dir {directory!r} does not exist: create it with `python -m "
                "nag_jax.data.fetch fashion_mnist DIR` (or mnist) and set config.data.data_dir"
            )
        if channels not in (1, 3):
            raise ValueError(f"config.data.channels={channels!r} is not allowed: expected 1 or 3")
        if fit not in FITS:
            raise ValueError(f"config.data.idx_fit={fit!r} is not allowed: expected one of {FITS}")
        self.directory, self.split = str(directory), str(split)
        part, self._slice = parse_split(split)
        prefix = SPLIT_PREFIX[part]
        self.images_path = find_file(directory, prefix, "images")
        self.labels_path = find_file(directory, prefix, "labels")
        self.channels, self.fit = int(channels), fit
        self.image_size = None if image_size is None else int(image_size)
        meta = read_metadata(directory)
        self.dataset_name = meta.get("name")
        self.class_names = meta.get("class_names")
        self._images = self._labels = None
        self._load()
        self.num_classes = (
            len(self.class_names) if self.class_names else int(self._labels.max(initial=-1)) + 1
        )

    def _load(self):
        if self._images is not None:
            return
        images, labels = read_idx(self.images_path), read_idx(self.labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{self.images_path}: expected (N, H, W) uint8 images, got {images.dtype} "
                f"{images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{self.labels_path}: expected ({len(images)},) labels for the {len(images)} "
                f"images of {self.images_path}, got {labels.shape}"
            )
        self._images = images[self._slice]
        self._labels = labels[self._slice].astype(np.int32)
        if not len(self._images):
            raise ValueError(f"IDX split {self.split!r} of {self.directory!r} selects no records")

    def __getstate__(self):  # workers read the files themselves
        return {**self.__dict__, "_images": None, "_labels": None}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, S, C) of one output image."""
        self._load()
        h = self.image_size or self._images.shape[1]
        return (h, self.image_size or self._images.shape[2], self.channels)

    def __len__(self) -> int:
        self._load()
        return len(self._images)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32 labels of the split's records."""
        self._load()
        return self._labels

    def get_batch(self, keys) -> dict:
        self._load()
        keys = np.asarray(keys, dtype=np.int64)
        images = self._images[keys]
        if self.image_size is not None:
            images = fit_images(images, self.image_size, self.fit)
        images = images[..., None]
        if self.channels == 3:
            images = np.repeat(images, 3, axis=-1)
        return {"image": images, "label": self._labels[keys]}

    def __getitem__(self, index):
        out = self.get_batch([int(index)])
        return {"image": out["image"][0], "label": out["label"][0]}

    def __repr__(self) -> str:
        return (
            f"IdxSource({self.directory!r}, split={self.split!r}, "
            f"{os.path.basename(self.images_path)})"
        )
