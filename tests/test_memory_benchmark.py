"""benchmarks/memory.py on CPU devices: the rows, the two-batch extrapolation, and ``--slope-from``
(a topology compiled at one batch, extrapolated with another run's bytes per image).

Expected values are recomputed here by hand from the rows' own bytes (peak linear in the batch),
not by the benchmark's helper."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import memory as bench

HBM_GIB = 0.25
ARGS = ["--model", "SiT-S/2", "--input-size", "8", "--remat", "0", "--dtype", "float32"]


def _by_hand(b_one: int, peak_one: float, slope: float) -> int:
    hbm = HBM_GIB * 2**30
    return max(0, math.floor((hbm - (peak_one - slope * b_one)) / slope))


@pytest.mark.slow
def test_two_batches_then_slope_from(tmp_path):
    first = tmp_path / "first.json"
    common = ARGS + ["--topologies", "cpu:2", "--hbm-gib", str(HBM_GIB)]
    r1 = bench.main(common + ["--batches", "2,4", "--out", str(first)])
    peaks = {r["per_device_batch"]: r["bytes_per_device"]["peak"] for r in r1["rows"]}
    slope = (peaks[4] - peaks[2]) / 2
    assert slope > 0  # activations grow with the batch
    (fit,) = r1["largest_batch"]
    assert fit["largest_per_device_batch_extrapolated"] == _by_hand(4, peaks[4], slope)
    assert fit["from_batches"] == [2, 4]

    r2 = bench.main(common + ["--batches", "3", "--slope-from", str(first)])
    new = [r for r in r2["rows"] if "from_file" not in r]
    assert [r["per_device_batch"] for r in new] == [3]
    assert len([r for r in r2["rows"] if "from_file" in r]) == 2  # the first run's rows are kept
    mine = [f for f in r2["largest_batch"] if f.get("from_batches") == [3]]
    assert len(mine) == 1 and mine[0]["bytes_per_image_from"] == "cpu:2"
    want = _by_hand(3, new[0]["bytes_per_device"]["peak"], slope)
    assert abs(mine[0]["largest_per_device_batch_extrapolated"] - want) <= 1  # float rounding
    with open(first) as f:
        assert json.load(f)["rows"] == r1["rows"]  # the earlier file is read, never rewritten
