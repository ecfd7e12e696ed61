"""Random-access data sources (grain ``RandomAccessDataSource``: ``__len__`` + ``__getitem__``).

Every image source returns ``{"image": (H, W, 3) uint8 (any size), "label": int32}``;
preprocessing (ADM centre crop, flip, [-1, 1]) happens in the pipeline. Sources:

- ``ShapesDataset`` (nag_jax.data.synthetic): built-in, rendered at the target size directly.
- ``ImageFolderSource(root)``: ``root/<class_name>/**/*.{jpg,jpeg,png,webp}``; labels are the
  indices of the sorted class-folder names. ``root`` may be local or remote (``gs://``,
  nag_jax.storage.paths). A file that does not decode (garbage, a truncated JPEG) raises
  ``BadImageError`` naming it; the pipeline skips or fails on it (``config.data.bad_images``).
- ``TfdsSource(name, split, data_dir)``: a prepared tensorflow-datasets dataset read with
  ``tfds.data_source`` (array_record; random access, no TensorFlow graph). ImageNet must be
  prepared once from the manually downloaded tars (see ``TFDS_MANUAL_HINT``).
- ``LatentsSource(directory)`` (nag_jax.data.latents): precomputed SD-VAE latents.
- ``IdxSource(directory, split)`` (nag_jax.data.idx): MNIST-layout IDX files (MNIST,
  Fashion-MNIST, ...), held in memory, grey -> ``channels`` (1 or 3), padded or resized to the
  image size; ``python -m nag_jax.data.fetch`` writes a checked folder. Its images are (S, S, C).
"""

from __future__ import annotations

import os

import numpy as np

from nag_jax.data.idx import IdxSource  # noqa: F401 -- registered here beside the others
from nag_jax.errors import RunStopped
from nag_jax.storage.paths import as_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

TFDS_MANUAL_HINT = {
    "imagenet2012": (
        "place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in "
        "{data_dir}/downloads/manual/, then prepare once in array_record format: "
        "`tfds build imagenet2012 --data_dir={data_dir} --file_format=array_record` "
        "(or set config.data.tfds_prepare=True to prepare from the pipeline)"
    ),
}


class BadImageError(RunStopped, ValueError):
    """An image file that does not decode; ``path`` names it, ``index`` is its record key. With
    ``config.data.bad_images="fail"`` it stops the run: ``nag-jax`` prints its message (the file,
    the decoder's reason, what to do) as one ``error:`` line, exit status 1."""

    def __init__(self, path: str, index: int, cause: BaseException, hint: str = ""):
        self.path, self.index, self.cause = str(path), int(index), cause
        super().__init__(
            f"image {self.path} (record {self.index}) does not decode "
            f"({type(cause).__name__}: {cause}){hint}"
        )


def decode_image(path) -> np.ndarray:
    """The image file at ``path`` (local or remote) as (H, W, 3) uint8, fully decoded (a truncated
    file raises here, not later)."""
    from PIL import Image

    with as_path(path).open("rb") as f, Image.open(f) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _walk_files(top) -> list[str]:
    """Every file under ``top`` (epath; local or remote), directories visited in sorted order,
    as full paths. Relies only on walk's relative structure (fsspec backends yield paths
    without their scheme)."""
    top = as_path(top)
    out, base = [], None
    for dirpath, dirnames, filenames in top.walk():
        dirnames.sort()
        dirpath = os.fspath(dirpath)
        if base is None:
            base = dirpath
        rel = os.path.relpath(dirpath, base)
        here = top if rel == "." else top / rel
        out += [str(here / fn) for fn in sorted(filenames)]
    return out


class ImageFolderSource:
    """Images in ``root/<class>/...``; class names sorted -> labels 0..K-1.

    ``src[i]`` -> {"image": (H, W, 3) uint8, "label": int32}. Files are listed once, sorted, so
    the index -> file mapping is the same on every process.
    """

    def __init__(self, root: str, extensions=IMAGE_EXTENSIONS):
        if not root or not as_path(root).is_dir():
            raise FileNotFoundError(
                f"image_folder data_dir {root!r} does not exist: expected a directory with one "
                "subfolder per class (e.g. data_dir/cat/001.jpg, data_dir/dog/002.png); set "
                "config.data.data_dir"
            )
        exts = tuple(e.lower() for e in extensions)
        self.root = root
        top = as_path(root)
        self.class_names = sorted(d.name for d in top.iterdir() if d.is_dir())
        if not self.class_names:
            raise ValueError(
                f"image_folder data_dir {root!r} has no class subfolders: expected one "
                "subfolder per class holding the images (e.g. data_dir/cat/001.jpg); files "
                "directly in data_dir are not used"
            )
        files, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in _walk_files(top / name):
                if path.lower().endswith(exts):
                    files.append(path)
                    labels.append(label)
        if not files:
            raise ValueError(
                f"image_folder data_dir {root!r} has {len(self.class_names)} class folder(s) "
                f"({', '.join(self.class_names[:5])}{', ...' if len(self.class_names) > 5 else ''}"
                f") but no images with extensions {exts}"
            )
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int32)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        try:
            image = decode_image(self.files[index])
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's decode errors
            raise BadImageError(self.files[index], index, e) from e
        return {"image": image, "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root!r}, {len(self)} images, {self.num_classes} classes)"


class TfdsSource:
    """A prepared tfds dataset split as a random-access source of {"image", "label"}.

    Uses ``tfds.data_source(name, split=split, data_dir=data_dir, download=False)`` which needs
    the dataset prepared in array_record format. With ``prepare=True`` it first runs
    ``download_and_prepare`` with ``manual_dir = data_dir/downloads/manual`` and
    ``file_format="array_record"`` (hours for ImageNet; do it once).
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        prepare: bool = False,
    ):
        if data_dir and not as_path(data_dir).is_dir():
            raise FileNotFoundError(
                f"tfds data_dir {data_dir!r} for {name!r} does not exist: "
                + TFDS_MANUAL_HINT.get(
                    name,
                    "prepare the dataset there with `tfds build {name} --data_dir={data_dir} "
                    "--file_format=array_record`",
                ).format(data_dir=data_dir, name=name)
            )
        from nag_jax.errors import require
        from nag_jax.utils import import_tensorflow

        import_tensorflow(f"the tfds dataset {name!r}")  # first: hides TF's GPUs
        tfds = require("tensorflow_datasets", what=f"the tfds dataset {name!r}", extra="data")

        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        hint = TFDS_MANUAL_HINT.get(
            name,
            "prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`",
        ).format(data_dir=data_dir, name=name)
        try:
            kwargs = {"file_format": "array_record"} if prepare else {}
            builder = tfds.builder(name, data_dir=data_dir, **kwargs)
        except Exception as e:  # DatasetNotFoundError and friends
            raise FileNotFoundError(
                f"tfds has no dataset {name!r} ({type(e).__name__}: {e}); config.data.name must "
                "be 'synthetic_shapes', 'image_folder', 'latents' or a tfds dataset name"
            ) from e
        if not builder.is_prepared():
            if not prepare:
                raise FileNotFoundError(
                    f"tfds dataset {name!r} is not prepared in data_dir {data_dir!r} (looked in "
                    f"{builder.data_dir}). To fix: {hint}"
                )
            manual = str(as_path(data_dir or builder.data_dir) / "downloads" / "manual")
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual)
            )
        file_format = getattr(builder.info, "file_format", None)
        file_format = str(getattr(file_format, "value", file_format)).lower()
        if "array_record" not in file_format and "parquet" not in file_format:
            raise FileNotFoundError(
                f"tfds dataset {name!r} in {builder.data_dir} is prepared as {file_format or '?'}"
                ", which has no random access: re-prepare it in array_record format into "
                f"another data_dir ({hint})"
            )
        self._source = builder.as_data_source(split=split)
        info = getattr(self._source, "dataset_info", None)
        try:
            self.num_classes = info.features[label_key].num_classes
            self.class_names = list(info.features[label_key].names)
        except Exception:  # noqa: BLE001 -- optional metadata
            self.num_classes, self.class_names = None, None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        ex = self._source[index]
        image = np.asarray(ex[self.image_key])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return {"image": image, "label": np.int32(ex[self.label_key])}

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, data_dir={self.data_dir!r})"
