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
