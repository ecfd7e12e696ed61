"""The launch scripts: bash syntax, shellcheck (when installed), and what they would run.

``DRY_RUN=1`` makes launch/tpu_pod.sh print its local and gcloud commands and launch/slurm_gpu.sh
its srun command, so the commands a pod operator gets are checked here without a pod.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh"))


def _run(script, args, env=None, **kw):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LATENTS"))}
    return subprocess.run(
        ["bash", os.path.join(LAUNCH, script), *args],
        env={**base, "DRY_RUN": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    p = subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    p = subprocess.run(
        ["shellcheck", *[os.path.join(LAUNCH, s) for s in SCRIPTS]], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout


def _gcloud(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ gcloud ")]


def test_tpu_pod_start_puts_the_code_on_every_worker_and_starts_detached():
    args = ["start", "my-v4-32", "us-central2-b", "configs/sit_xl_nag_finetune.py"]
    args += ["gs://b/runs/x", "--config.model.weights=gs://b/ckpt", "--config.sample.labels=(1, 2)"]
    p = _run("tpu_pod.sh", args, env={"LATENTS": "gs://b/in256_latents/", "PROJECT": "proj"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "python -m nag_jax.main --config=configs/sit_xl_nag_finetune.py" in out  # compile check
    assert "--config.mode=compile" in out
    cmds = _gcloud(out)
    assert cmds and all("--worker=all" in c and "--zone=us-central2-b" in c for c in cmds)
    assert all("--project=proj" in c for c in cmds)
    ssh = [c for c in cmds if c.startswith("gcloud compute tpus tpu-vm ssh my-v4-32 ")]
    scp = [c for c in cmds if c.startswith("gcloud compute tpus tpu-vm scp ")]
    # 1. Python >= 3.11 checked on every worker, a venv made with it
    assert "sys.version_info < (3, 11)" in ssh[0] and "-m venv $HOME/nag_jax_pod/venv" in ssh[0]
    # 2. the code: a wheel of this checkout built here, copied to every worker, installed with
    #    the TPU extras under the TPU constraints
    assert re.search(
        r"^\+ python -m pip wheel --no-deps .* -w \S+ " + re.escape(ROOT) + "$", out, re.M
    )
    assert any("constraints/tpu.txt my-v4-32:nag_jax_pod/constraints-tpu.txt" in c for c in scp)
    assert any(re.search(r"nag_jax-\S+\.whl my-v4-32:nag_jax_pod/nag_jax-\S+\.whl", c) for c in scp)
    install = next(c for c in ssh if "pip install" in c and "[tpu,data]" in c)
    assert "-c $HOME/nag_jax_pod/constraints-tpu.txt" in install
    # 3. latents copied to each worker's disk, data_dir pointed there
    start = ssh[-1]
    assert (
        "gcloud storage cp -r gs://b/in256_latents/\\* /tmp/nag_jax_latents/in256_latents/" in start
    )
    # 4. detached (setsid + nohup), one log per worker, the pid kept for stop / status
    job = (
        "setsid nohup $HOME/nag_jax_pod/venv/bin/python -m nag_jax.main "
        "--config=configs/sit_xl_nag_finetune.py --workdir=gs://b/runs/x "
        "--config.model.weights=gs://b/ckpt --config.sample.labels=\\(1\\,\\ 2\\) "
        "--config.data.data_dir=/tmp/nag_jax_latents/in256_latents "
        "> $HOME/nag_jax_pod/logs/nag_jax.$(hostname).log 2>&1 < /dev/null & "
        "echo $! > $HOME/nag_jax_pod/logs/nag_jax.pid"
    )
    assert job in start
    assert "already running" in start  # a second start on a running pod is refused


def test_tpu_pod_git_ref_mode():
    env = {"CODE": "git", "GIT_URL": "https://github.com/org/nag_jax.git", "GIT_REF": "v0.1.0"}
    p = _run("tpu_pod.sh", ["setup", "pod", "zone-a"], env=env)
    assert p.returncode == 0, p.stderr
    install = next(c for c in _gcloud(p.stdout) if "git clone" in c)
    assert "git clone -q https://github.com/org/nag_jax.git $HOME/nag_jax_pod/src" in install
    assert "git checkout -q --detach v0.1.0" in install
    assert "-c $HOME/nag_jax_pod/constraints-tpu.txt -e '.[tpu,data]'" in install
    assert "pip wheel" not in p.stdout


@pytest.mark.parametrize("sub", ["status", "logs", "stop"])
def test_tpu_pod_status_logs_stop(sub):
    p = _run("tpu_pod.sh", [sub, "pod", "zone-a"], env={"JOB": "ft"})
    assert p.returncode == 0, p.stderr
    (cmd,) = _gcloud(p.stdout)
    assert cmd.startswith(
        "gcloud compute tpus tpu-vm ssh pod --zone=zone-a --worker=all --command="
    )
    if sub == "stop":
        assert "kill -TERM $(cat $HOME/nag_jax_pod/logs/ft.pid)" in cmd
    if sub == "logs":
        assert "tail -n 20 $HOME/nag_jax_pod/logs/ft.$(hostname).log" in cmd
    if sub == "status":
        assert "kill -0 $(cat $HOME/nag_jax_pod/logs/ft.pid)" in cmd


def test_tpu_pod_usage_and_bad_subcommand():
    for args in ([], ["launch", "pod", "zone"]):
        p = _run("tpu_pod.sh", args)
        assert p.returncode == 2 and "launch/tpu_pod.sh start  TPU ZONE CONFIG WORKDIR" in p.stdout


@pytest.fixture
def fake_scontrol(tmp_path):
    path = tmp_path / "scontrol"
    path.write_text("#!/bin/sh\necho node07\necho node08\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


@pytest.mark.parametrize("extra", [[], ["--config.optim.lr=2e-4", "a b"]])
def test_slurm_port_from_job_id_and_srun_command(fake_scontrol, extra):
    env = {
        "PATH": fake_scontrol + os.pathsep + os.environ["PATH"],
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[07-08]",
        "PYTHON": shutil.which("python") or "python3",
    }
    # No arguments after WORKDIR: "$@" under set -u (an empty array would fail on bash < 4.4).
    p = _run("slurm_gpu.sh", ["configs/sit_xl.py", "/shared/runs/x", *extra], env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "JAX_COORDINATOR_ADDRESS=node07:24242"  # 20000 + 4242 % 20000
    tail = "".join(f" {a}" if " " not in a else " a\\ b" for a in extra)
    assert lines[1] == (
        "+ srun --kill-on-bad-exit=1 bash -c <per-task command> configs/sit_xl.py /shared/runs/x"
        + tail
    )
    env["SLURM_JOB_ID"] = "4243"  # another job on the same head node: another port
    assert _run("slurm_gpu.sh", ["c.py", "w"], env=env).stdout.startswith(
        "JAX_COORDINATOR_ADDRESS=node07:24243"
    )


def test_slurm_uses_no_arrays_and_needs_a_job():
    with open(os.path.join(LAUNCH, "slurm_gpu.sh")) as f:
        text = f.read()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[@]" not in code and "=(" not in code  # bash < 4.4 + set -u: no arrays at all
    p = _run("slurm_gpu.sh", ["configs/sit_xl.py", "/shared/runs/x"])
    assert p.returncode != 0 and "submit it with sbatch" in p.stderr
    for flag in ("--nodes=", "--ntasks-per-node=", "--gpus-per-node=", "--cpus-per-task="):
        assert f"sbatch {flag}" in text or f" {flag}" in text  # a complete sbatch example
