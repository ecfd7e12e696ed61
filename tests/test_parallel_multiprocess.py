"""Two JAX processes on localhost (jax.distributed.initialize, 4 CPU devices each) train together.

Each process runs ``python -m tests.fixtures`` with JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID (what launch/slurm_gpu.sh exports), loads only its half of the
global batch, and FSDP shards params over all 8 devices. Both must finish, write one shared Orbax
checkpoint, and hold identical (all-gathered) params.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


@pytest.mark.multiprocess
def test_two_processes_train_and_agree(tmp_path):
    import portpicker

    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "nag_jax_test_mp_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        )
        args = [sys.executable, "-m", "tests.fixtures", str(tmp_path)]
        args += ["num_steps=4", "checkpoint_every=2"]
        procs.append(
            subprocess.Popen(
                args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"multi-process training did not finish within {TIMEOUT}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "process 1 of 2" in outs[1]
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps == [2, 4]
    finals = [np.load(tmp_path / f"final_params_{i}.npz") for i in range(2)]
    assert int(finals[0]["__step__"]) == int(finals[1]["__step__"]) == 4
    for k in finals[0].files:
        np.testing.assert_array_equal(finals[0][k], finals[1][k], err_msg=k)
    # Something was learned: the zero-initialised final layer moved.
    assert np.abs(finals[0]["final_layer/linear/kernel"]).max() > 0
