"""Reliability of the files a long run writes and reads (issue 11): torn results lines, damaged
eval chunks, undecodable images in an image-folder dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from absl import logging as absl_logging

from nag_jax.evaluation import results, store


@pytest.fixture
def warnings_seen(monkeypatch):
    """The absl warnings logged during the test (formatted)."""
    seen = []
    monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: seen.append(msg % a))
    return seen


def test_torn_results_line_loses_no_complete_row(tmp_path, warnings_seen):
    path = str(tmp_path / "eval_results.jsonl")
    results.append_result(path, {"key": "a", "fid": 1.5})
    with open(path, "a") as f:  # a killed append: half a row, no newline
        f.write('{"key": "b", "fi')
    results.append_result(path, {"key": "c", "fid": 3.0})
    results.append_result(path, {"key": "d", "fid": 4.0})
    rows = results.read_results(path)
    assert [(r["key"], r["fid"]) for r in rows] == [("a", 1.5), ("c", 3.0), ("d", 4.0)]
    lines = Path(path).read_text().split("\n")
    assert lines[1] == '{"key": "b", "fi'  # the torn line stays on its own line
    assert json.loads(lines[2])["key"] == "c"  # the next row is not glued to it
    assert len(warnings_seen) == 1
    assert path in warnings_seen[0] and "line 2" in warnings_seen[0]


def test_torn_csv_line_is_not_glued_to_the_next_row(tmp_path):
    path = str(tmp_path / "r.jsonl")
    results.append_result(path, {"key": "a", "fid": 1.0})
    csv_path = str(tmp_path / "r.csv")
    with open(csv_path, "a") as f:
        f.write("b,2026-")
    results.append_result(path, {"key": "c", "fid": 2.0})
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0].split(",")[0] == "key"  # header written once
    assert [ln.split(",")[0] for ln in lines[1:]] == ["a", "b", "c"]
    assert lines[3].split(",")[results.RESULT_COLUMNS.index("fid")] == "2.0"


def test_read_results_missing_file_and_non_object_line(tmp_path, warnings_seen):
    assert results.read_results(str(tmp_path / "none.jsonl")) == []
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\n[1, 2]\n\n{"key": "b"}\n')
    assert [r["key"] for r in results.read_results(str(path))] == ["a", "b"]
    assert "line 2" in warnings_seen[0]


def _two_chunks(run_dir):
    images = np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3)
    labels = np.arange(8) % 3
    store.write_chunk(run_dir, np.arange(0, 4), images[:4], labels[:4])
    bad = store.write_chunk(run_dir, np.arange(4, 8), images[4:], labels[4:])
    return images, labels, bad


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_damaged_chunk_is_moved_aside_and_resampled(tmp_path, damage, warnings_seen):
    run_dir = str(tmp_path)
    images, labels, bad = _two_chunks(run_dir)
    if damage == "truncated":
        os.truncate(bad, os.path.getsize(bad) // 2)
    else:
        with open(bad, "r+b") as f:
            f.write(np.random.default_rng(0).bytes(64))
    assert store.missing_indices(run_dir, 8).tolist() == [4, 5, 6, 7]
    assert not os.path.exists(bad) and os.path.exists(bad + ".corrupt")
    assert len(warnings_seen) == 1 and bad in warnings_seen[0]
    # the resume samples them again and the ADM file is complete and right
    calls = []

    def run_batch(idx):
        calls.append(list(idx))
        return images[idx], labels[idx]

    assert store.sample_to_chunks(run_batch, run_dir, 8, 4) == 4
    assert calls == [[4, 5, 6, 7]]
    out = str(tmp_path / "samples_8.npz")
    store.chunks_to_adm_npz(run_dir, 8, out)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["arr_0"], images)
        np.testing.assert_array_equal(z["arr_1"], labels)


def test_chunk_damaged_after_the_scan_names_file_and_fix(tmp_path):
    run_dir = str(tmp_path)
    _, _, bad = _two_chunks(run_dir)
    with open(bad, "r+b") as f:  # image bytes damaged: the zip CRC check catches it
        f.seek(os.path.getsize(bad) // 2)
        f.write(b"\xff" * 8)
    with pytest.raises(RuntimeError, match="delete it and run the evaluation again") as e:
        store.chunks_to_adm_npz(run_dir, 8, str(tmp_path / "s.npz"))
    assert bad in str(e.value)


# ---------------------------------------------------------------------------------------------
# Undecodable images in an image-folder dataset (issue 11, weak handling 6)


def _image_folder(root, n_per_class=4, size=12):
    """Two classes of random JPEGs; a/1.jpg is garbage and b/2.jpg a truncated JPEG (records 1
    and 6 in sorted order). Returns the two bad paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c))
        for i in range(n_per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, c, f"{i}.jpg"), quality=95)
    garbage, truncated = os.path.join(root, "a", "1.jpg"), os.path.join(root, "b", "2.jpg")
    Path(garbage).write_bytes(b"not an image at all")
    data = Path(truncated).read_bytes()
    Path(truncated).write_bytes(data[: len(data) // 2])
    return garbage, truncated


def test_decode_errors_name_the_file(tmp_path):
    from nag_jax.data.sources import BadImageError, ImageFolderSource

    garbage, truncated = _image_folder(str(tmp_path))
    src = ImageFolderSource(str(tmp_path))
    for index, path in ((1, garbage), (6, truncated)):
        with pytest.raises(BadImageError) as e:
            src[index]
        assert path in str(e.value) and e.value.path == path and e.value.index == index
    with pytest.raises(BadImageError, match="Truncated File Read"):
        src[6]
    assert src[0]["image"].shape == (12, 12, 3)


def _folder_cfg(root, **kw):
    from nag_jax.config import schema

    return schema.complete(
        dict(
            name="image_folder",
            data_dir=root,
            image_size=8,
            global_batch_size=4,
            random_flip=False,
            return_index=True,
            **kw,
        ),
        "data",
    )


def _batches(cfg, n, state=None):
    from nag_jax.data.pipeline import create_dataset

    it = create_dataset(cfg, seed=3, process_index=0, process_count=1)
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)], it


def test_bad_images_skip_substitutes_the_next_record_deterministically(tmp_path, warnings_seen):
    from nag_jax.data.preprocess import center_crop_arr, to_float
    from nag_jax.data.sources import ImageFolderSource

    garbage, truncated = _image_folder(str(tmp_path))
    src = ImageFolderSource(str(tmp_path))
    cfg = _folder_cfg(str(tmp_path), shuffle=False)  # default bad_images="skip"
    batches, _ = _batches(cfg, 2)
    # unshuffled, one process: record 1 -> 2, record 6 -> 7 (the next record of the shard)
    assert [b["index"].tolist() for b in batches] == [[0, 2, 2, 3], [4, 5, 7, 7]]
    assert [b["label"].tolist() for b in batches] == [[0, 0, 0, 0], [1, 1, 1, 1]]
    expected = to_float(center_crop_arr(src[2]["image"], 8))
    np.testing.assert_allclose(batches[0]["image"][1], expected)
    assert len(warnings_seen) == 2
    assert garbage in warnings_seen[0] and "1 undecodable image(s)" in warnings_seen[0]
    assert truncated in warnings_seen[1] and "2 undecodable image(s)" in warnings_seen[1]


def test_bad_images_skip_keeps_resumes_bit_exact(tmp_path, warnings_seen):
    _image_folder(str(tmp_path))
    cfg = _folder_cfg(str(tmp_path))  # shuffled, several epochs
    straight, _ = _batches(cfg, 6)
    first, it = _batches(cfg, 3)
    resumed, _ = _batches(cfg, 3, state=it.get_state())  # a fresh process resumes
    for a, b in zip(straight, first + resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    used = np.concatenate([b["index"] for b in straight])
    assert not set(used.tolist()) & {1, 6}  # never a bad record


def test_bad_images_fail_names_file_and_fix(tmp_path):
    from nag_jax.data.sources import BadImageError

    garbage, _ = _image_folder(str(tmp_path))
    with pytest.raises(BadImageError) as e:
        _batches(_folder_cfg(str(tmp_path), shuffle=False, bad_images="fail"), 1)
    assert garbage in str(e.value) and "bad_images='skip'" in str(e.value)


def test_encode_latents_leaves_out_and_lists_bad_images(tmp_path):
    import jax.numpy as jnp

    from nag_jax.data.latents import LatentsSource, read_metadata
    from nag_jax.data.sources import BadImageError, ImageFolderSource
    from nag_jax.jobs import encode_latents

    garbage, truncated = _image_folder(str(tmp_path / "img"), size=16)
    src = ImageFolderSource(str(tmp_path / "img"))
    logged = []

    def encode_fn(params, images, key):  # 4x4 mean pool: (B, 4, 4, 3)
        n = images.shape[0]
        return images.reshape(n, 4, 4, 4, 4, 3).mean((2, 4)) * params

    args = dict(
        encode_fn=encode_fn,
        params=jnp.float32(1.0),
        image_size=16,
        batch_size=8,  # the test session's 8 CPU devices; the shard's 4 are padded
        shard_size=4,
        dtype="float32",
        store_flips=False,
        log=logged.append,
    )
    with pytest.raises(BadImageError, match="bad_images='skip'"):
        encode_latents.encode_dataset(src, str(tmp_path / "fail"), bad_images="fail", **args)
    meta = encode_latents.encode_dataset(src, str(tmp_path / "lat"), **args)
    assert meta["count"] == 6 and [s["count"] for s in meta["shards"]] == [3, 3]
    assert [(s["index"], s["file"]) for s in meta["skipped"]] == [(1, garbage), (6, truncated)]
    assert any(garbage in line for line in logged) and any(truncated in line for line in logged)
    assert read_metadata(str(tmp_path / "lat"))["skipped"][1]["file"] == truncated
    lat = LatentsSource(str(tmp_path / "lat"))
    kept = [0, 2, 3, 4, 5, 7]
    assert [int(lat[i]["label"]) for i in range(6)] == [int(src.labels[k]) for k in kept]
    from nag_jax.data.preprocess import center_crop_arr, to_float

    x = to_float(center_crop_arr(src[7]["image"], 16))
    expected = x.reshape(4, 4, 4, 4, 3).mean((1, 3))
    np.testing.assert_allclose(lat[5]["latents"][0], expected, atol=1e-6)


def test_bad_images_skip_gives_up_on_broken_data(tmp_path, warnings_seen):
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        for i in range(2):
            (tmp_path / c / f"{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RuntimeError, match="the data itself is broken"):
        _batches(_folder_cfg(str(tmp_path), shuffle=False), 1)
    assert len(warnings_seen) == 4  # each file named once
