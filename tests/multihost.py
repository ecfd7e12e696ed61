"""Two (or more) JAX processes on localhost running the real entry, ``python -m nag_jax.main``,
with the environment a SLURM/TPU launcher exports (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); 8 CPU devices in all, split over the processes. Used by
tests/test_multihost_faults.py and to measure the cases by hand:

    python tests/multihost.py kill9 /tmp/wd     (prints what each process printed, rc, seconds)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = 10  # NAG_JAX_HEARTBEAT_TIMEOUT of the tests: a lost process is noticed within it

CONFIG = """
from tests.fixtures import tiny_config


def get_config():
    c = tiny_config(num_steps={num_steps}, checkpoint_every={every}, log_every={every}, keep=10)
    c.mode = "train"
    c.parallel.update(fsdp=True, fsdp_min_size=64)
    return c
"""


def write_config(workdir: str, num_steps: int, every: int) -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(workdir)), "multihost_cfg.py")
    with open(path, "w") as f:
        f.write(CONFIG.format(num_steps=num_steps, every=every))
    return path


def start(
    workdir: str,
    *,
    procs: int = 2,
    num_steps: int = 40,
    every: int = 10,
    extra=(),
    env=None,
    repo: str = REPO,
):
    """Starts ``procs`` processes of ``nag_jax.main`` training the tiny config in ``workdir``;
    ``env``: extra variables (e.g. tests/fault_injection's); ``repo``: the checkout to run
    (another commit's, to measure the behaviour before a change)."""
    import portpicker

    cfg = write_config(workdir, num_steps, every)
    port = portpicker.pick_unused_port()
    out = []
    for pid in range(procs):
        penv = dict(os.environ, **(env or {}))
        penv.pop("XLA_FLAGS", None)
        penv.update(
            XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // procs}",
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES=str(procs),
            JAX_PROCESS_ID=str(pid),
            NAG_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT),
            JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "nag_jax_test_mh_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            PYTHONPATH=repo + os.pathsep + penv.get("PYTHONPATH", ""),
        )
        args = [sys.executable, "-m", "nag_jax.main", f"--config={cfg}", f"--workdir={workdir}"]
        logfile = os.path.join(os.path.dirname(os.path.abspath(workdir)), f"p{pid}.log")
        log = open(logfile, "w+")  # noqa: SIM115 - read back by output(), closed with the test
        p = subprocess.Popen(
            [*args, *extra], env=penv, cwd=repo, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        p.log = log
        out.append(p)
    return out


def output(p) -> str:
    p.log.flush()
    p.log.seek(0)
    return p.log.read()


def steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def wait_for_step(procs, workdir: str, step: int, timeout: float = 900) -> None:
    """Waits until checkpoint ``step`` is committed (its folder exists)."""
    t0 = time.time()
    while step not in steps(workdir):
        if any(p.poll() is not None for p in procs):
            texts = "\n".join(output(p)[-3000:] for p in procs)
            raise RuntimeError("a process ended early:\n" + texts)
        if time.time() - t0 > timeout:
            raise TimeoutError(f"no checkpoint {step} within {timeout}s")
        time.sleep(0.2)


def finish(procs, timeout: float = 900) -> list[tuple[int, str, float]]:
    """(rc, output, seconds until it ended) per process; kills what is left after ``timeout``."""
    t0, res = time.time(), []
    for p in procs:
        try:
            p.wait(timeout=max(1, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        res.append((p.returncode, output(p), time.time() - t0))
    return res


def error_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith("error:")]


if __name__ == "__main__":
    case, wd = sys.argv[1], sys.argv[2]
    repo = sys.argv[3] if len(sys.argv) > 3 else REPO
    ps = start(wd, num_steps=100000 if case in ("kill9", "term") else 40, repo=repo)
    if case == "kill9":
        wait_for_step(ps, wd, 10)
        t = time.time()
        ps[1].send_signal(signal.SIGKILL)
        r = finish(ps[:1])
        rc, text = r[0][0], r[0][1]
        print(f"survivor: rc={rc} after {time.time() - t:.1f}s, {len(text.splitlines())} lines")
        print("\n".join(r[0][1].splitlines()[-8:]))
    elif case == "term":
        wait_for_step(ps, wd, 10)
        for p in ps:
            p.send_signal(signal.SIGTERM)
        for rc, text, s in finish(ps):
            print(rc, f"{s:.1f}s", text.splitlines()[-3:])
        print(steps(wd))
