"""Start-up through the real entry point (``python -m nag_jax.main`` in subprocesses).

Cloud TPU VM: two processes, each given what a worker of a 2-host TPU VM pod gives JAX, as far as
a CPU machine can fake it:

- JAX's own detection runs at ``import jax`` (``jax._src.cloud_tpu_init``): libtpu + TPU chips
  on the PCI bus. ``JAX_FORCE_TPU_INIT=1`` stands in for both; JAX then sets
  ``TPU_SKIP_MDS_QUERY`` because ``/sys`` shows no chips, so the prelude below removes it (the
  one input that cannot come from the environment). ``JAX_PLATFORMS=cpu`` keeps the CPU backend.
- The GCE metadata server: one fake per worker on 127.0.0.1 (``GCE_METADATA_IP``, read by JAX's
  GceTpuCluster) answering ``agent-worker-number``, ``worker-network-endpoints`` and ``tpu-env``
  as a v4-16's workers do.
- The coordinator port is JAX's fixed 8482 on a pod; ``JAX_COORDINATOR_PORT`` (JAX's override)
  picks a free one here.

Nothing passes a coordinator, a process count or an id: if nag_jax called
``jax.distributed.initialize`` with arguments or not at all, the processes would not find each
other through the metadata and would not report ``process i of 2``. The job is a real (tiny)
``mode=sample`` run of the shipped demo base model, so the pod also samples and writes.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240

# Runs the real entry point after JAX's import-time TPU detection (see the module docstring).
PRELUDE = (
    "import os, runpy, sys\n"
    "import jax  # cloud_tpu_init: JAX_FORCE_TPU_INIT stands in for libtpu + TPU chips\n"
    "os.environ.pop('TPU_SKIP_MDS_QUERY', None)  # set because /sys shows no TPU chips here\n"
    # main's supervisor would rerun the job in a child without this prelude (it is tested in
    # test_multihost_faults); here the start-up runs in this process.
    "os.environ['NAG_JAX_SUPERVISED'] = '1'\n"
    "runpy.run_module('nag_jax.main', run_name='__main__', alter_sys=True)\n"
)

_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "JAX_LOCAL_DEVICE_IDS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_WORKER_ID",
    "TPU_SKIP_MDS_QUERY",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "OMPI_MCA_orte_hnp_uri",
    "XLA_FLAGS",
)


class FakeMetadata:
    """A GCE metadata server for one TPU worker, on 127.0.0.1 only; records the keys asked."""

    def __init__(self, attributes: dict[str, str]):
        self.asked: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                prefix = "/computeMetadata/v1/instance/attributes/"
                key = self.path[len(prefix) :] if self.path.startswith(prefix) else None
                ok = key in attributes and self.headers.get("Metadata-Flavor") == "Google"
                outer.asked.append(key)
                body = (attributes[key] if ok else "not found").encode()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _tpu_vm_env(metadata_address: str, coordinator_port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_ENV}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_") and "proxy" not in k.lower()}
    env.update(
        JAX_FORCE_TPU_INIT="1",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        GCE_METADATA_IP=metadata_address,
        JAX_COORDINATOR_PORT=str(coordinator_port),
        NO_PROXY="127.0.0.1,localhost",
        NAG_JAX_NO_PROGRESS="1",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


def _sample_args(workdir) -> list[str]:
    return [
        "--config=configs/sample_sit_xl.py",
        f"--workdir={workdir}",
        "--config.model.weights=" + os.path.join(ROOT, "nag_jax", "assets", "demo_base"),
        "--config.vae.path=",
        "--config.sample.num_steps=2",
        "--config.sample.num_images=2",
        "--config.sample.batch_size=2",
        "--config.sample.cfg_scale=1.0",
        "--config.sample.labels=(1, 2)",
    ]


@pytest.mark.multiprocess
def test_cloud_tpu_vm_pod_starts_through_jax_cluster_detection(tmp_path):
    import portpicker

    port = portpicker.pick_unused_port()
    workers = ["localhost", "localhost"]  # the worker list every worker's metadata holds
    servers = [
        FakeMetadata(
            {
                "agent-worker-number": str(i),
                "worker-network-endpoints": ",".join(workers),
                "tpu-env": f"ACCELERATOR_TYPE: 'v4-16'\nWORKER_ID: '{i}'\n",
            }
        )
        for i in range(2)
    ]
    procs, outs = [], []
    try:
        for server in servers:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", PRELUDE, *_sample_args(tmp_path / "wd")],
                    cwd=str(tmp_path),
                    env=_tpu_vm_env(server.address, port),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the faked TPU VM pod did not finish within {TIMEOUT}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for s in servers:
            s.close()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    for i, out in enumerate(outs):
        assert f"jax.distributed initialised (tpu): process {i} of 2" in out, out[-4000:]
        assert "(2 processes)" in out
    for server in servers:  # JAX's GceTpuCluster found the pod through the metadata server
        assert {"agent-worker-number", "worker-network-endpoints"} <= set(server.asked)
    assert (tmp_path / "wd" / "samples" / "samples.npz").is_file()  # written once, by process 0


def test_tpu_vm_with_unreachable_metadata_is_one_error_line(tmp_path):
    """A TPU VM whose pod cannot be discovered (metadata server down): one ``error:`` line."""
    import portpicker

    closed = portpicker.pick_unused_port()  # nothing listens there
    p = subprocess.run(
        [sys.executable, "-c", PRELUDE, *_sample_args(tmp_path / "wd")],
        cwd=str(tmp_path),
        env=_tpu_vm_env(f"127.0.0.1:{closed}", portpicker.pick_unused_port()),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert errors[0].startswith("error: jax.distributed.initialize() failed")
    assert "Cloud TPU VM" in errors[0] and "ConnectionError" in errors[0]


# ----------------------------------------------------------------------------------------------
# CLI manners: Python version, --help / -h, a stray argument, the workdir in every mode


def _main(args, cwd, prelude=None, timeout=120):
    cmd = [sys.executable, "-m", "nag_jax.main", *args]
    if prelude is not None:
        cmd = [sys.executable, "-c", prelude, *args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_old_python_is_one_line_before_any_import(tmp_path):
    prelude = (
        "import runpy, sys\n"
        "sys.version_info = (3, 10, 12, 'final', 0)  # what a python3.10 TPU VM image reports\n"
        "runpy.run_module('nag_jax.main', run_name='__main__', alter_sys=True)\n"
    )
    p = _main(["--config=configs/demo.py", "--workdir=wd"], tmp_path, prelude)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]  # one line
    assert p.stderr.startswith("error: nag_jax needs Python >= 3.11")
    assert "this is Python 3.10" in p.stderr and "python3.11 -m venv" in p.stderr


def test_requires_python_matches_the_check():
    tomllib = pytest.importorskip("tomllib")
    from nag_jax import main

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["requires-python"] == ">=%d.%d" % main.MIN_PYTHON  # noqa: UP031


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_project_usage_first(tmp_path, flag):
    from nag_jax.config import schema

    p = _main([flag], tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("usage: nag-jax --config=configs/NAME.py")
    common = p.stdout.split("Common commands:")[1].split("Modes")[0]
    starts = [s.split()[0] for s in common.splitlines() if s.strip() and s.strip()[0] not in "#-"]
    assert starts == ["nag-jax", "nag-convert", "nag-jax", "nag-jax", "nag-jax"]  # five commands
    for mode in schema.MODES:  # every mode, with its line
        assert any(s.split()[:1] == [mode] for s in lines), mode
    configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    for name in configs:
        assert any(s.strip().startswith(name + " ") for s in lines), name
    assert "Traceback" not in p.stderr and len(lines) < 80


def test_stray_positional_argument_is_one_line(tmp_path):
    p = _main(["--config=configs/demo.py", "--workdir=wd", "runs/demo"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "error: unexpected argument 'runs/demo': nag-jax takes only flags "
        "(--config=configs/NAME.py --workdir=DIR --config.KEY=VALUE); see nag-jax --help"
    )


@pytest.mark.parametrize("config", ["demo", "lab_gmm", "sample_sit_xl", "demo_study"])
def test_workdir_that_is_a_file_is_one_line_in_every_mode(tmp_path, config):
    (tmp_path / "afile").write_text("x")
    extra = []
    if config == "sample_sit_xl":  # a mode that needs weights: give real ones
        extra = ["--config.model.weights=" + os.path.join(ROOT, "nag_jax", "assets", "demo_base")]
    for workdir, expected in (
        (
            "afile",
            f"error: workdir {tmp_path / 'afile'} is a file, not a directory; choose another "
            "--workdir.",
        ),
        (
            "afile/sub",
            f"error: --workdir=afile/sub cannot be created: {tmp_path / 'afile'} is a file, not a "
            "directory; choose another --workdir.",
        ),
    ):
        p = _main([f"--config=configs/{config}.py", f"--workdir={workdir}", *extra], tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip() == expected
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # nothing created


def test_gs_latents_are_one_line_with_the_copy_command(tmp_path):
    p = _main(
        [
            "--config=configs/sit_xl_nag_finetune.py",
            "--workdir=wd",
            "--config.model.weights=" + os.path.join(ROOT, "nag_jax", "assets", "demo_base"),
            "--config.data.data_dir=gs://bucket/in256_latents",
        ],
        tmp_path,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: config.data.data_dir='gs://bucket/in256_latents' is remote, and array_record "
        "reads local files only (google/array_record#120): copy it to every host first (`gcloud "
        "storage cp -r gs://bucket/in256_latents /tmp/in256_latents`; launch/tpu_pod.sh does it "
        "with LATENTS=gs://bucket/in256_latents) or mount the bucket (gcsfuse), then pass "
        "--config.data.data_dir=/tmp/in256_latents."
    ]
    assert not (tmp_path / "wd").exists()
