"""Checkpoint reliability (issue 11): damaged steps are detected, set aside and stepped over with
the previous step restored bit-exactly; failed saves stop the run at once in one line; the
workdir lock; Ctrl-C; resume names changed config keys; converter temp folders; refused pickles.

One tiny run (SiT hidden 32, stand-in loss, steps 2/4/6 saved, tests.fixtures) is
shared; each damage test works on a copy. "Bit-exact" is checked against Orbax's own read of the
undamaged step (``StandardCheckpointer`` on the item folder of the pristine copy) and the data
iterator position against the step's saved JSON, not against ``checkpoint.restore`` itself.
"""

import errno
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from nag_jax import parallel
from nag_jax.convert import common
from nag_jax.convert import vae as convert_vae
from nag_jax.storage import weights
from nag_jax.storage import workdir as workdir_lib
from nag_jax.training import checkpoint as ckpt
from nag_jax.training import loop as train
from nag_jax.training import run_config
from tests.fixtures import slow_iterator, standin_loss, tiny_config, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    cfg = tiny_config(**{"num_steps": 6, "checkpoint_every": 2, "keep": 3, **kw})
    return cfg


def _data(cfg):
    from nag_jax.data import create_dataset

    return create_dataset(
        cfg.data, seed=cfg.seed, process_index=0, process_count=1, global_batch_size=8
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with checkpoints 2, 4, 6 (each with its checksum manifest)."""
    wd = tmp_path_factory.mktemp("trained")
    cfg = _cfg()
    train.run(cfg, str(wd), model=tiny_model(cfg), loss_fn=standin_loss, data_iter=_data(cfg))
    assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4", "6"]
    for s in ("2", "4", "6"):
        assert os.path.exists(wd / "checkpoints" / s / ckpt.MANIFEST_FILE)
    return wd


@pytest.fixture
def copy(trained, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    (wd / workdir_lib.LOCK_FILE).unlink(missing_ok=True)
    return wd


def _abstract_state(cfg):
    mesh = parallel.create_mesh(cfg.parallel)
    state, shardings, _ = train.setup_state(cfg, tiny_model(cfg), mesh)
    return train._with_shardings(jax.eval_shape(lambda s: s, state), shardings)


def _restore(wd, data_iter=None, **kw):
    cfg = _cfg()
    mngr = ckpt.create_manager(str(wd / "checkpoints"), keep=3, async_save=False)
    return ckpt.restore(mngr, _abstract_state(cfg), data_iter, **kw), mngr


def _orbax_read(step_dir, item, like):
    """The item as Orbax itself reads it from an undamaged step (the independent reference)."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as c:
        return c.restore(str(step_dir / item), target)


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _biggest(d):
    files = [f for f in glob.glob(f"{d}/**", recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _corrupt_bytes(step):
    # 4 KB of random bytes inside a zstd chunk: Orbax 0.12.8 restores these without an error
    # (garbage values, then NaN: the failure 1); only the manifest catches them.
    with open(_biggest(step / "opt_state"), "r+b") as f:
        f.seek(8192)
        f.write(np.random.default_rng(0).bytes(4096))


def _truncate(step):
    f = _biggest(step / "params")
    os.truncate(f, os.path.getsize(f) // 2)


def _delete_data_file(step):
    os.remove(_biggest(step / "ema_params"))


def _delete_params_metadata(step):
    os.remove(step / "params" / "_METADATA")


def _garbage_iterator_json(step):
    for f in glob.glob(str(step / "data" / "*.json")):
        with open(f, "w") as fh:
            fh.write("{garbage")


DAMAGE = {
    "corrupt_bytes_opt_state": (_corrupt_bytes, "does not match its sha256"),
    "truncated_data_file": (_truncate, "truncated"),
    "deleted_data_file": (_delete_data_file, "is missing"),
    "deleted_params_metadata": (_delete_params_metadata, "params/_METADATA is missing"),
    "garbage_iterator_json": (_garbage_iterator_json, r"6/data/process_0-of-1\.json has 8 bytes"),
}
# Without a manifest (older steps, or a kill between commit and manifest) the restore itself
# must still classify the damage.
NO_MANIFEST = {
    # the failure 1 (an unverified step with garbage bytes was trained on): the restored
    # values are checked, the step is set aside like a manifest mismatch
    # (here the garbage lands in a compressed chunk and the read fails; the NaN/Inf check of
    # restored values is test_unverified_step_with_nan_values_is_set_aside)
    "corrupt_bytes_opt_state": "restore failed|opt_state/.* holds NaN/Inf values",
    "truncated_data_file": "restore failed",
    "deleted_params_metadata": "params/_METADATA is missing",
    "garbage_iterator_json": "restore failed.*JSONDecodeError",
}


@pytest.mark.parametrize(
    "name,manifest",
    [(k, True) for k in DAMAGE] + [(k, False) for k in NO_MANIFEST],
)
def test_damaged_latest_step_is_set_aside_and_previous_restores_bit_exactly(
    copy, trained, name, manifest, caplog
):
    damage, reason = DAMAGE[name]
    step6 = copy / "checkpoints" / "6"
    damage(step6)
    if not manifest:
        os.remove(step6 / ckpt.MANIFEST_FILE)
        reason = NO_MANIFEST[name]
    it = iter(_data(_cfg()))
    with caplog.at_level(logging.WARNING):
        state, mngr = _restore(copy, it)
    # Step 6 renamed aside (kept, not deleted); step 4 restored.
    assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6.corrupt"]
    assert mngr.latest_step() == 4 and int(state.step) == 4
    warning = [r.getMessage() for r in caplog.records if "corrupt or incomplete" in r.getMessage()]
    assert len(warning) == 1 and "6.corrupt" in warning[0], warning
    assert re.search(reason, warning[0]), warning[0]
    assert "different model" not in caplog.text
    # No data lost: step 4 restores bit-exactly as Orbax reads the pristine step 4.
    ref = trained / "checkpoints" / "4"
    for item in ("params", "ema_params", "opt_state"):
        _assert_trees_equal(getattr(state, item), _orbax_read(ref, item, getattr(state, item)))
    (saved,) = glob.glob(str(ref / "data" / "*.json"))
    with open(saved) as f:
        assert it.get_state() == json.load(f)  # data position of step 4


def test_empty_step_folder_is_stepped_over(copy, caplog):
    (copy / "checkpoints" / "8").mkdir()  # e.g. a copy that was interrupted
    with caplog.at_level(logging.WARNING):
        state, _ = _restore(copy)
    assert int(state.step) == 6
    assert "step 8" in caplog.text and "8: the folder is empty" in caplog.text
    assert "Unknown key" not in caplog.text
    assert (copy / "checkpoints" / "8.corrupt").is_dir()


def test_no_restorable_step_names_each_and_deletes_nothing(copy):
    for s in ("2", "4", "6"):
        _truncate(copy / "checkpoints" / s)
    with pytest.raises(ckpt.NoRestorableCheckpointError) as e:
        _restore(copy)
    msg = str(e.value)
    assert "\n" not in msg
    for s in ("6", "4", "2"):
        assert f"step {s}: {copy}/checkpoints/{s}/params/" in msg
    assert sorted(os.listdir(copy / "checkpoints")) == ["2.corrupt", "4.corrupt", "6.corrupt"]


def test_explicit_step_that_is_corrupt_raises_and_renames_nothing(copy):
    _corrupt_bytes(copy / "checkpoints" / "4")
    with pytest.raises(ckpt.CorruptCheckpointError, match="step 4 .* corrupt or incomplete"):
        _restore(copy, step=4)
    assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6"]


def test_another_models_checkpoint_is_not_called_corrupt(copy):
    big = _cfg()
    big.model.hidden_size = 64
    mngr = ckpt.create_manager(str(copy / "checkpoints"), async_save=False)
    with pytest.raises(ValueError, match="different model"):
        ckpt.restore(mngr, _abstract_state(big))
    assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6"]


def test_training_resumes_past_a_corrupt_step(copy, caplog):
    _corrupt_bytes(copy / "checkpoints" / "6")
    cfg = _cfg(num_steps=8)
    with caplog.at_level(logging.INFO):
        state = train.run(
            cfg, str(copy), model=tiny_model(cfg), loss_fn=standin_loss, data_iter=_data(cfg)
        )
    assert int(state.step) == 8
    assert "Restored checkpoint step 4" in caplog.text
    assert sorted(os.listdir(copy / "checkpoints")) == ["4", "6", "6.corrupt", "8"]
    assert ckpt.verify_step(str(copy / "checkpoints" / "6"))  # rewritten, with its manifest


def _nan_step(wd, step):
    """Saves step ``step`` of the pristine step 4 with NaN in opt_state and no manifest: what a
    step of an older version (or a remote one) with garbage that decodes to NaN looks like."""
    cfg = _cfg()
    mngr = ckpt.create_manager(str(wd / "checkpoints"), keep=10, async_save=False)
    state = ckpt.restore(mngr, _abstract_state(cfg), step=4)
    leaves, tree = jax.tree.flatten(state.opt_state)
    big = max(range(len(leaves)), key=lambda i: leaves[i].size)
    bad = np.array(leaves[big]).copy()
    bad.reshape(-1)[::7] = np.nan
    leaves[big] = jax.device_put(bad, leaves[big].sharding)
    state = state.replace(step=jax.numpy.asarray(step, state.step.dtype))
    state = state.replace(opt_state=jax.tree.unflatten(tree, leaves))
    ckpt.save(mngr, state, force=True)
    os.remove(wd / "checkpoints" / str(step) / ckpt.MANIFEST_FILE)


def test_unverified_step_with_nan_values_is_set_aside(copy, caplog):
    """Issue 20, failure 1: a step without a manifest whose bytes are garbage was restored
    "unverified" and trained on (NaN two steps later, forever). Its values are now checked: the
    step is set aside like a manifest mismatch and the verified step 6 restores."""
    _nan_step(copy, 8)
    with caplog.at_level(logging.WARNING):
        state, mngr = _restore(copy)
    assert int(state.step) == 6 and mngr.restored == (6, True)
    assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6", "8.corrupt"]
    (warning,) = [r.getMessage() for r in caplog.records if "corrupt or" in r.getMessage()]
    assert re.search(r"8: opt_state/.*holds NaN/Inf values", warning), warning
    assert "last good" not in caplog.text


@pytest.mark.parametrize(
    "text,what",
    [('{"sha256": 5}', "malformed"), ("[1, 2]", "malformed"), ("{not json", "unreadable")],
)
def test_malformed_manifest_is_a_corrupt_step_named_in_one_line(copy, caplog, text, what):
    (copy / "checkpoints" / "6" / ckpt.MANIFEST_FILE).write_text(text)
    with caplog.at_level(logging.WARNING):
        state, _ = _restore(copy)
    assert int(state.step) == 4
    (warning,) = [r.getMessage() for r in caplog.records if "corrupt or" in r.getMessage()]
    assert f"6/{ckpt.MANIFEST_FILE}: the checksum manifest is {what}" in warning, warning
    assert "\n" not in warning
    assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6.corrupt"]


def test_manifest_is_inside_the_step_before_its_commit(tmp_path, monkeypatch):
    """The kill window is closed: the rename that commits a step moves a folder that already
    holds its manifest, so no committed step lacks one (a kill before the rename leaves only a
    temporary folder, removed at the next start)."""
    from orbax.checkpoint._src.path import atomicity

    seen, rename = {}, atomicity.async_path.rename

    async def checked_rename(src, dst):
        if os.path.basename(str(dst)).isdigit():
            seen[os.path.basename(str(dst))] = os.path.exists(f"{src}/{ckpt.MANIFEST_FILE}")
        return await rename(src, dst)

    monkeypatch.setattr(atomicity.async_path, "rename", checked_rename)
    cfg = _cfg(num_steps=4, checkpoint_every=2)
    train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)
    assert seen == {"2": True, "4": True}
    for s in ("2", "4"):
        assert ckpt.verify_step(str(tmp_path / "checkpoints" / s))


def test_failed_manifest_write_commits_nothing(tmp_path, monkeypatch):
    from nag_jax.storage import manifest

    write = manifest.write

    def failing(folder):
        if os.path.basename(folder).startswith("4."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), folder)
        return write(folder)

    monkeypatch.setattr(manifest, "write", failing)
    cfg = _cfg(num_steps=4, checkpoint_every=2)
    cfg.train.async_checkpoint = False
    with pytest.raises(ckpt.CheckpointSaveError, match="errno 28 ENOSPC.*step 2. is intact"):
        train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)
    steps = [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert steps == ["2"] and ckpt.verify_step(str(tmp_path / "checkpoints" / "2"))


def test_nan_stop_after_an_unverified_resume_says_how_to_step_back(tmp_path):
    class Mngr:
        directory = tmp_path / "checkpoints"

        def latest_step(self):
            return 100

    msg = train.nonfinite_message(102, float("nan"), Mngr(), resumed=(100, False))
    assert "\n" not in msg and "last good" not in msg
    cmd = f"mv {tmp_path}/checkpoints/100 {tmp_path}/checkpoints/100.corrupt"
    assert cmd in msg and "resume from the previous step" in msg
    (tmp_path / "checkpoints" / "100").mkdir(parents=True)
    subprocess.run(cmd, shell=True, check=True)  # the hint works when pasted
    assert os.listdir(tmp_path / "checkpoints") == ["100.corrupt"]
    verified = train.nonfinite_message(102, float("nan"), Mngr(), resumed=(100, True))
    assert "a resume restores step 100" in verified and "lower config.optim.lr" in verified


# ---------------------------------------------------------------------------- failed saves


def _fail_step_commit(monkeypatch, step, err):
    from orbax.checkpoint._src.path import atomicity

    orig = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *a, **k):
        if self.get().name == f"{step}.orbax-checkpoint-tmp":
            raise OSError(err, os.strerror(err), str(self.get()))
        return await orig(self, *a, **k)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)
    orig_step = ckpt._ManifestTemporaryPath.finalize  # the step folder's own commit

    async def finalize_step(self, *a, **k):
        if self.get().name == f"{step}.orbax-checkpoint-tmp":
            raise OSError(err, os.strerror(err), str(self.get()))
        return await orig_step(self, *a, **k)

    monkeypatch.setattr(ckpt._ManifestTemporaryPath, "finalize", finalize_step)


@pytest.mark.parametrize("err,fix", [(errno.ENOSPC, "free disk space"), (errno.EROFS, "read-only")])
def test_failed_async_save_stops_at_once_in_one_line(tmp_path, monkeypatch, caplog, err, fix):
    cfg = _cfg(num_steps=40, checkpoint_every=10)
    _fail_step_commit(monkeypatch, 20, err)
    data = slow_iterator(iter(_data(cfg)), sleep=0.1)
    with caplog.at_level(logging.INFO), pytest.raises(ckpt.CheckpointSaveError) as e:
        train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss, data_iter=data)
    msg = str(e.value)
    assert "\n" not in msg
    name = errno.errorcode[err]
    assert f"errno {err} {name}" in msg and fix in msg, msg
    assert str(tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp") in msg
    assert data.n < 30, data.n  # stopped soon after the failure, not at the next save (30)
    # Orbax's own tracebacks of the failure are dropped (its one-line message stays).
    assert not [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], OSError)]
    # The previous step is intact, byte for byte as written.
    assert ckpt.verify_step(str(tmp_path / "checkpoints" / "10"))


def test_synchronous_save_failure_is_one_line(tmp_path, monkeypatch):
    cfg = _cfg(num_steps=4, checkpoint_every=2)
    cfg.train.async_checkpoint = False
    _fail_step_commit(monkeypatch, 4, errno.EACCES)
    with pytest.raises(ckpt.CheckpointSaveError, match=r"errno 13 EACCES.*permissions"):
        train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)
    assert ckpt.verify_step(str(tmp_path / "checkpoints" / "2"))


def test_nan_before_any_checkpoint_does_not_name_a_step(tmp_path):
    cfg = _cfg(num_steps=5, checkpoint_every=100, log_every=100)
    cfg.optim.lr = 1e30
    with pytest.raises(train.NonFiniteLossError, match="no checkpoint has been saved yet"):
        train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)


# ---------------------------------------------------------------------------- workdir lock

_HOLD = (
    "import sys, time; from nag_jax.storage import workdir as w\n"
    "with w.locked(sys.argv[1], job='train'):\n"
    "    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
)


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return env


def _holder(wd, seconds=60):
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(wd), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_job_on_a_locked_workdir_fails_fast_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        cfg = _cfg()
        t0 = time.time()
        with pytest.raises(workdir_lib.WorkdirLockedError) as e:
            train.run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)
        assert time.time() - t0 < 30
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and "train job" in msg
        assert "\n" not in msg
        assert not (tmp_path / "checkpoints").exists()  # nothing written by the second job
        from nag_jax.jobs import sample as sample_job

        with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {holder.pid}"):
            sample_job.run(cfg, str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: the kernel dropped its flock; the next job takes over.
    with workdir_lib.locked(tmp_path, job="train"):
        assert workdir_lib.read_holder(tmp_path)["pid"] == os.getpid()
    assert workdir_lib.read_holder(tmp_path) == {}  # released


def test_lock_in_a_second_process_is_refused(tmp_path):
    with workdir_lib.locked(tmp_path, job="eval"):
        with workdir_lib.locked(tmp_path, job="eval"):  # re-entrant in one process
            pass
        p = subprocess.run(
            [sys.executable, "-c", _HOLD, str(tmp_path), "0"],
            capture_output=True,
            text=True,
            env=_env(),
        )
    assert p.returncode != 0
    assert f"in use by eval job, pid {os.getpid()}" in p.stderr


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("flock", [True, False])
def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, monkeypatch, caplog, flock):
    if not flock:  # a filesystem without flock: the host/pid record decides
        monkeypatch.setattr(workdir_lib.WorkdirLock, "_flock", lambda self, fd: None)
    dead = _dead_pid()
    rec = {"host": socket.gethostname(), "pid": dead, "job": "train", "started": 1.0}
    (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(rec))
    with caplog.at_level(logging.WARNING), workdir_lib.locked(tmp_path, job="train"):
        assert workdir_lib.read_holder(tmp_path)["pid"] == os.getpid()
    assert f"taking over from train job, pid {dead}" in caplog.text
    if not flock:  # a live holder's record is refused
        rec["pid"] = os.getppid()
        (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(rec))
        busy = pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {os.getppid()}")
        with busy, workdir_lib.locked(tmp_path, job="train"):
            pass


def test_dangling_symlink_workdir_is_named(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "missing_disk")
    dangling = pytest.raises(workdir_lib.WorkdirError, match="symlink to .*missing_disk")
    with dangling, workdir_lib.locked(link, job="train"):
        pass


# ---------------------------------------------------------------------------- Ctrl-C


def test_first_ctrl_c_checkpoints_and_exits_cleanly(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "nag_jax_test_xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=REPO,
    )
    # A job started in the background inherits an ignored SIGINT, which training respects:
    # the child restores the default (Ctrl-C in a terminal) first.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from tests.fixtures import main; sys.exit(main(sys.argv[1:]))"
    )
    args = [sys.executable, "-c", code, str(tmp_path)]
    args += ["num_steps=1000", "checkpoint_every=1000", "sleep=0.2", "fsdp=0"]
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "config.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    steps = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and 0 < int(steps[0]) < 1000, steps
    assert "Preempted: checkpoint at step" in out and "Ctrl-C again to abort" in out
    with np.load(tmp_path / "final_params_0.npz") as f:
        assert int(f["__step__"]) == int(steps[0])
    assert ckpt.verify_step(str(tmp_path / "checkpoints" / steps[0]))  # save completed


# ---------------------------------------------------------------------------- config on resume


def test_resume_names_changed_dotted_keys_and_batch_size(tmp_path, caplog):
    cfg = _cfg()
    run_config.check_or_write_config(cfg, str(tmp_path))
    new = _cfg()
    new.data.global_batch_size = 16
    new.optim.lr = 2e-3
    with caplog.at_level(logging.WARNING):
        run_config.check_or_write_config(new, str(tmp_path))
    assert "data.global_batch_size: 8 -> 16" in caplog.text
    assert "optim.lr: 0.001 -> 0.002" in caplog.text
    assert "data.global_batch_size changed on resume: 8 -> 16" in caplog.text


# ---------------------------------------------------------------------------- converters


def test_converter_temp_folders_of_dead_pids_are_cleaned(tmp_path, caplog):
    from nag_jax.convert.to_torch import save_state_dict

    dest = tmp_path / "out.pt"
    host = socket.gethostname()
    dead = tmp_path / f".out.pt.tmp-{_dead_pid()}@{host}-abcd1234"
    live = tmp_path / f".out.pt.tmp-{os.getpid()}@{host}-efgh5678"
    legacy = tmp_path / ".out.pt.tmp-q1w2e3r4"
    for d in (dead, live, legacy):
        d.mkdir()
        (d / "out").write_bytes(b"x" * 1000)
    with caplog.at_level(logging.WARNING):
        save_state_dict({"w": np.ones((2, 2), np.float32)}, str(dest))
    assert not dead.exists()  # a killed write's leftover: removed
    assert live.exists() and legacy.exists()  # a running writer's, and one without an owner
    assert str(legacy) in caplog.text
    assert torch.load(dest, weights_only=True)["w"].shape == (2, 2)

    def failing(tmp):
        os.makedirs(tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        weights.atomic_publish(failing, str(tmp_path / "other"))
    assert not glob.glob(str(tmp_path / ".other.tmp-*"))  # removed on failure


class _Evil:  # a pickled class instance: weights_only must refuse it, never run it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_vae_bin_with_pickled_code_is_refused_in_one_line(tmp_path, capsys):
    src = tmp_path / "vae"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    torch.save({"a": _Evil()}, src / "diffusion_pytorch_model.bin")
    with pytest.raises(common.ConversionError) as e:
        convert_vae.convert(str(src), str(tmp_path / "out"))
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg and "posix.system" in msg
    assert "diffusion_pytorch_model.bin" in msg  # the file is named
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    assert convert_vae.main(["--src", str(src), "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refused") and "\n" not in err and "False" not in err
    assert not (tmp_path / "out").exists()
