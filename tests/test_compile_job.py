"""mode=compile (nag_jax.jobs.compile over nag_jax.training.memory): the AOT memory / FLOPs report
and its one-line errors.

CPU tests compile the tiny SiT for the conftest's 8 CPU devices ("cpu:8"), so CI needs no libtpu;
the TPU test (slow) skips cleanly where libtpu is not installed.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from nag_jax import parallel
from nag_jax.config.schema import ConfigError, validate
from nag_jax.errors import UserError
from nag_jax.jobs import compile as compile_job
from nag_jax.training import memory as memory_lib
from nag_jax.training.loop import setup_state
from tests.fixtures import tiny_config, tiny_model

B = 2  # images per batch shard


def _config(**compile_overrides):
    compile_overrides = {"topology": "cpu:8", "per_device_batch": B, **compile_overrides}
    c = tiny_config()
    c.mode = "compile"
    c.parallel.fsdp = True
    c.compile.update(compile_overrides)
    validate(c)
    return c


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compile")
    out = compile_job.run(_config(), str(workdir))
    with open(workdir / "compile_report.json") as f:
        assert json.load(f) == json.loads(json.dumps(out))
    return out


def test_cpu_topology_compiles_train_step_and_sampler(report):
    assert report["topology"] == "cpu:8" and report["devices"] == 8
    assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    train, sample = report["rows"]
    assert train["program"] == "train" and train["global_batch"] == 8 * B
    assert sample["program"].startswith("sample:") and sample["global_batch"] % 8 == 0
    for r in (train, sample):
        assert r["flops_per_device"] > 0 and r["compile_s"] >= 0
        assert r["flops_total"] == pytest.approx(8 * r["flops_per_device"])
        assert r["fits"] is None  # a CPU has no HBM to check unless compile.hbm_gib is set


def test_train_arguments_are_the_sharded_state_and_batch(report):
    """The compiler's argument bytes per device = what the real, FSDP-sharded state and the batch
    occupy on one device (measured on materialised arrays, another path than memory_analysis)."""
    c = _config()
    mesh = parallel.create_mesh(c.parallel, jax.devices()[:8])
    state, _, _ = setup_state(c, tiny_model(c), mesh)
    state_bytes = max(parallel.per_device_bytes(state).values())
    s, ch = c.model.input_size, c.model.in_channels
    batch_bytes = B * (s * s * ch * 4 + 4)  # float32 x + int32 y, per device
    mem = report["rows"][0]["bytes_per_device"]
    assert mem["argument"] == state_bytes + batch_bytes
    # The state is donated: the new state reuses the old one's buffers.
    assert mem["alias"] == state_bytes
    assert (
        mem["peak"]
        == mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + (mem["generated_code"])
    )


def test_largest_batch_extrapolates_linearly():
    # peak(b) = 100 + 100 b (hand-made): 700 bytes hold b = 6; 150 hold none.
    assert memory_lib.largest_batch(8, 900, 4, 500, 700) == 6
    assert memory_lib.largest_batch(8, 900, 4, 500, 150) == 0
    assert memory_lib.largest_batch(4, 500, 8, 900, 1100) == 10  # order of the two compiles


def test_does_not_fit_stops_with_one_line(report, tmp_path):
    peak = report["rows"][0]["bytes_per_device"]["peak"]
    c = _config(hbm_gib=0.999 * peak / 2**30)
    with pytest.raises(ConfigError) as e:
        compile_job.run(c, str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"per-chip batch {B} (global {8 * B})" in msg and "cpu:8" in msg
    assert "does not fit" in msg and "extrapolation" in msg and "model.remat=True" in msg
    with open(tmp_path / "compile_report.json") as f:
        written = json.load(f)
    b_max = written["largest_per_device_batch_extrapolated"]
    assert 0 <= b_max < B  # peak grows with the batch, so less than B fits
    assert [r["per_device_batch"] for r in written["rows"]] == [B, 1]
    assert written["rows"][0]["fits"] is False


def test_no_libtpu_is_one_line_with_the_install(monkeypatch):
    monkeypatch.setattr(memory_lib, "libtpu_available", lambda: False)
    with pytest.raises(UserError) as e:
        memory_lib.resolve_target("v5e:2x2")
    msg = str(e.value)
    assert "\n" not in msg and "'v5e:2x2'" in msg and 'pip install -e . "jax[tpu]==0.10.2"' in msg


@pytest.mark.parametrize("name", ["v9z:2x2", "v5e", "v5e:2x", "tpu-v5e-16"])
def test_bad_topology_name_is_one_line(name):
    with pytest.raises(ConfigError) as e:
        memory_lib.resolve_target(name)
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg and "v5e:4x4" in msg


def test_more_cpu_devices_than_jax_has_names_the_flag():
    with pytest.raises(ConfigError, match="xla_force_host_platform_device_count=64"):
        memory_lib.resolve_target("cpu:64")


def test_hbm_table_per_device():
    """v5e: 16 GiB a chip, one device a chip; an override in GiB wins."""
    assert memory_lib.HBM_GIB_PER_CHIP["v5e"] == 16.0
    t = memory_lib.resolve_target("cpu:2", hbm_gib=1.5)
    assert t.hbm_bytes == int(1.5 * 2**30) and len(t.devices) == 2


@pytest.mark.slow
def test_tpu_topology_with_libtpu(tmp_path, monkeypatch):
    """The real TPU compiler (libtpu, compile-only devices) on the tiny model, v5e 2x2."""
    if not memory_lib.libtpu_available():
        pytest.skip(f"libtpu is not installed ({memory_lib.TPU_INSTALL})")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another compile may hold libtpu
    c = _config(topology="v5e:2x2")
    c.model.dtype = "bfloat16"
    out = compile_job.run(c, str(tmp_path))
    assert out["devices"] == 4 and out["chips"] == 4 and "v5" in out["device_kind"].lower()
    train = out["rows"][0]
    assert train["hbm_bytes_per_device"] == 16 * 2**30 and train["fits"] is True
    assert train["global_batch"] == 4 * B and train["flops_per_device"] > 0
    assert math.isfinite(np.float64(train["bytes_per_device"]["peak"]))
    with pytest.raises(ConfigError, match="refused by libtpu"):
        memory_lib.resolve_target("v5e:3x7")


def test_cli_bad_topology_is_one_error_line(tmp_path):
    """Through nag-jax (nag_jax.main): one ``error:`` line, exit status 2, no traceback."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "nag_jax.main", "--config=configs/demo.py"]
        + [f"--workdir={tmp_path}", "--config.mode=compile", "--config.compile.topology=v9z:2x2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'v9z:2x2'" in errors[0]
    assert "Traceback" not in proc.stderr


def test_compiler_out_of_memory_is_a_row_and_extrapolates(monkeypatch, tmp_path):
    """The TPU compiler refuses a program over the HBM (RESOURCE_EXHAUSTED, its message as libtpu
    0.0.42 words it); the job halves the batch until one compiles and extrapolates from the
    refused batches' temporaries. Simulated on the CPU: batches > 1 are refused, asking for batch
    1's temporaries plus a made-up SLOPE bytes per further image."""
    real = memory_lib.compile_train_step
    slope = 2**30 / 3
    c = _config(hbm_gib=0.5, per_device_batch=4)
    mesh = parallel.create_mesh(c.parallel, jax.devices()[:8])
    compiled, _ = real(c, tiny_model(c), mesh, 1)
    temp1 = memory_lib.memory(compiled)["temp"]

    def fake(config, model, mesh, b):
        if b == 1:
            return real(config, model, mesh, b)
        temp = temp1 + (b - 1) * slope
        raise RuntimeError(
            "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
            f"temporaries ({temp / 2**30:.4f}G) exceeds available HBM (15.75G)."
        )

    monkeypatch.setattr(memory_lib, "compile_train_step", fake)
    with pytest.raises(ConfigError) as e:
        compile_job.run(c, str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "per-chip batch 4 (global 32)" in msg and "extrapolation" in msg
    with open(tmp_path / "compile_report.json") as f:
        written = json.load(f)
    rows = written["rows"]
    assert [r["per_device_batch"] for r in rows] == [4, 2, 1]
    assert rows[0]["bytes_per_device"] is None and "RESOURCE_EXHAUSTED" in rows[0]["compiler_error"]
    assert rows[0]["temp_required_bytes"] == pytest.approx(temp1 + 3 * slope, rel=1e-3)
    # Hand extrapolation: peak(b) = peak(1) + (b - 1) * SLOPE <= 0.5 GiB.
    peak1 = rows[2]["bytes_per_device"]["peak"]
    expect = int((0.5 * 2**30 - peak1) // slope) + 1
    assert written["largest_per_device_batch_extrapolated"] == expect


@pytest.mark.parametrize(
    "name, chip_config",
    [
        ("v4:2x2x2", "megacore"),
        ("v5p:2x2x1", "megacore"),
        ("v5e:4x4", "default"),
        ("v6e:2x2", "default"),
    ],
)
def test_two_core_chips_compile_as_one_device_a_chip(monkeypatch, name, chip_config):
    """v4 and v5p chips have two TensorCores; libtpu's default topology shows each as a device
    and jax.make_mesh then refuses the mesh ("requires one device per chip"). The target asks
    for megacore (as MaxText's train_compile.py) and gives each device the chip's whole HBM."""
    from jax.experimental import topologies

    seen = {}
    chips = math.prod(int(d) for d in name.split(":")[1].split("x"))

    def fake(topology, platform=None, **kw):
        seen.update(kw, topology=topology, platform=platform)
        return type("Desc", (), {"devices": jax.devices("cpu")[:1] * chips})()

    monkeypatch.setattr(memory_lib, "libtpu_available", lambda: True)
    monkeypatch.setattr(topologies, "get_topology_desc", fake)
    t = memory_lib.resolve_target(name)
    assert seen == dict(topology=name, platform="tpu", chip_config_name=chip_config)
    chip = name.split(":")[0]
    assert t.chips == chips and t.hbm_bytes == int(memory_lib.HBM_GIB_PER_CHIP[chip] * 2**30)
