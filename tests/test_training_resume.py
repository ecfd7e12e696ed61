"""Preemption and crash safety: kill -9 and SIGTERM mid-training, then resume bit-exactly.

Each run is a subprocess (``python -m tests.fixtures WORKDIR key=value``: tiny SiT,
stand-in loss, synthetic shapes, FSDP over 8 CPU devices) that writes its final params to
WORKDIR/final_params_0.npz. A persistent XLA compilation cache shared by the subprocesses keeps
each run to seconds after the first.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 8
TIMEOUT = 240


def _env(num_devices=8):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "nag_jax_test_xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _start(workdir, **opts):
    args = [sys.executable, "-m", "tests.fixtures", str(workdir)]
    args += [f"{k}={v}" for k, v in opts.items()]
    return subprocess.Popen(
        args, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc):
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"training subprocess timed out after {TIMEOUT}s:\n{out[-3000:]}")
    return proc.returncode, out


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(proc, workdir, step):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if any(s >= step for s in _steps(workdir)):
            return
        if proc.poll() is not None:
            pytest.fail(
                f"training exited (rc {proc.returncode}) before checkpoint {step}:\n"
                f"{proc.communicate()[0][-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint >= {step} within {TIMEOUT}s")


def _final(workdir):
    with np.load(os.path.join(workdir, "final_params_0.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final params of an uninterrupted NUM_STEPS run."""
    wd = tmp_path_factory.mktemp("reference")
    rc, out = _finish(_start(wd, num_steps=NUM_STEPS, checkpoint_every=2))
    assert rc == 0, out[-3000:]
    assert _steps(wd)[-1] == NUM_STEPS
    return _final(wd)


def _assert_bit_exact(got, want):
    assert int(got.pop("__step__")) == NUM_STEPS and int(want["__step__"]) == NUM_STEPS
    assert set(got) == set(want) - {"__step__"}
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_kill9_then_resume_is_bit_exact(reference, tmp_path):
    proc = _start(tmp_path, num_steps=NUM_STEPS, checkpoint_every=2, sleep=0.5)
    _wait_for_checkpoint(proc, tmp_path, 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _steps(tmp_path)
    assert killed_at and killed_at[-1] < NUM_STEPS, killed_at  # really interrupted
    rc, out = _finish(_start(tmp_path, num_steps=NUM_STEPS, checkpoint_every=2))
    assert rc == 0, out[-3000:]
    assert f"Restored checkpoint step {killed_at[-1]}" in out  # resumed, not restarted
    _assert_bit_exact(_final(tmp_path), reference)


def test_sigterm_checkpoints_exits_zero_and_resumes_bit_exact(reference, tmp_path):
    proc = _start(tmp_path, num_steps=NUM_STEPS, checkpoint_every=100, sleep=0.5)
    deadline = time.time() + TIMEOUT
    # run() installs the SIGTERM handler before it writes config.json; preempt after that.
    while time.time() < deadline and not os.path.exists(tmp_path / "config.json"):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 0, out[-3000:]
    saved = _steps(tmp_path)
    assert len(saved) == 1 and 0 < saved[0] < NUM_STEPS, (saved, out[-2000:])
    assert "Preempted: checkpoint at step" in out
    assert int(_final(tmp_path)["__step__"]) == saved[0]  # stopped at the boundary it saved
    rc, out = _finish(_start(tmp_path, num_steps=NUM_STEPS, checkpoint_every=100))
    assert rc == 0, out[-3000:]
    assert f"Restored checkpoint step {saved[0]}" in out
    _assert_bit_exact(_final(tmp_path), reference)
