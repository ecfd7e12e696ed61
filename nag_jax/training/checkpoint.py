"""Orbax checkpoints of the train state, the run's config and the data-iterator position.

Layout of a workdir:
  workdir/config.json                 the run's config (written once; checked on every start)
  workdir/checkpoints/<step>/         one composite Orbax checkpoint per saved step, items
      params, ema_params, opt_state   float32 trees (sharded arrays restore to their shardings)
      meta                            {"step": int32, "rng": uint32[2]}
      data                            grain iterator state, one JSON per process
      nag_jax_sha256.json             checksum manifest: {relative file: [size, sha256]} of every
                                      file of the step, written (atomically) once the step commits
  workdir/checkpoints/<step>.corrupt/ a step that failed to verify or restore, set aside (kept)
Writes are async and atomic (Orbax writes a tmp dir and renames it when complete), so a killed
process leaves the previous complete checkpoint intact; unfinished tmp dirs are cleaned on start.
Retention: the last ``keep`` plus every ``keep_every``-th step (Orbax preservation policies).

Integrity: Orbax 0.12.8 checksums only the index of each zarr3 shard (crc32c), not the chunk
data, so flipped bytes in an array file restore silently; hence the manifest (local and mounted
filesystems; a remote gs:// checkpoint carries none and is restored unverified, still falling
back to the previous step when it fails to restore). :func:`restore`
verifies it (sha256 of every listed file), then restores; a step that fails either way is
renamed ``<step>.corrupt`` with a one-line warning and the next older step is tried. A step
without a manifest (written before manifests existed, or a process killed between the commit
and the manifest) is restored unverified, with a warning. A checkpoint of another model is not
"corrupt": it stops the run with the mismatched params (``weights.check_params_match``).

Save failures (full disk, read-only or unwritable workdir) are caught at the step after the
async write fails (:func:`check_save`, a flag read; no I/O) and stop the run with one line
naming the path, the errno and the fix (:class:`CheckpointSaveError`).

Sampling, evaluation and fine-tuning read these checkpoints' params (latest EMA by default)
through the one weights loader, ``nag_jax.storage.weights.load_params``.
"""

from __future__ import annotations

import errno as errno_lib
import json
import logging as py_logging
import os
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from nag_jax.errors import RunStopped
from nag_jax.storage.paths import as_path, is_remote
from nag_jax.storage.weights import check_params_match, write_json
from nag_jax.training.state import TrainState
from nag_jax.utils import sha256_file

CONFIG_FILE = "config.json"
MANIFEST_FILE = "nag_jax_sha256.json"
CORRUPT_SUFFIX = ".corrupt"
TREE_ITEMS = ("params", "ema_params", "opt_state", "meta")
# Config sections whose differences make a checkpoint unusable for the current run.
MODEL_KEYS = (
    "name",
    "input_size",
    "in_channels",
    "num_classes",
    "learn_sigma",
    "null_noise",
    "hidden_size",
    "depth",
    "num_heads",
    "patch_size",
)


class CheckpointSaveError(RunStopped):
    """A checkpoint could not be written (disk full, read-only or unwritable workdir)."""


class CorruptCheckpointError(RunStopped):
    """A checkpoint step is corrupt or incomplete (a checksum, a missing file, unreadable data)."""


class NoRestorableCheckpointError(RunStopped):
    """Every checkpoint step of a workdir failed to verify or restore."""


# ---------------------------------------------------------------------------- manager


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager that keeps the error of a failed async save (Orbax's finalize thread
    logs it and drops it) and writes the checksum manifest of each step once it commits."""

    save_error: BaseException | None = None
    _pending_step: int | None = None
    _manifest_thread: threading.Thread | None = None

    def check_for_errors(self):
        try:
            super().check_for_errors()
        except BaseException as e:
            if self.save_error is None:
                self.save_error = e
            raise


class _QuietSaveErrors(py_logging.Filter):
    """Orbax logs a failed background save with a full traceback, twice; the run reports it in
    one line (CheckpointSaveError). Drops the traceback of those records, keeps the message."""

    def filter(self, record) -> bool:
        if record.exc_info and "/orbax/" in (record.pathname or ""):
            exc = record.exc_info[1]
            if _save_errno(exc) is not None:
                record.exc_info = None
                record.exc_text = None
                first = (record.getMessage().splitlines() or [""])[0]
                record.msg = f"{first} ({type(exc).__name__}: {_first_line(exc)})"
                record.args = ()
        return True


_QUIET = _QuietSaveErrors()


def create_manager(
    directory: str, *, keep: int = 3, keep_every: int | None = None, async_save: bool = True
) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the last ``keep`` steps plus every ``keep_every``-th step."""
    policies = [ocm.LatestN(max(1, int(keep or 1)))]
    if keep_every:
        policies.append(ocm.EveryNSteps(int(keep_every)))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    import grain

    handlers = {k: ocp.StandardCheckpointHandler() for k in TREE_ITEMS}
    handlers["data"] = grain.checkpoint.CheckpointHandler()
    absl_logger = py_logging.getLogger("absl")
    if _QUIET not in absl_logger.filters:
        absl_logger.addFilter(_QUIET)
    return _Manager(str(as_path(directory)), options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iter=None, *, force=False) -> bool:
    """Starts an (async) save of ``state`` at ``state.step``; returns whether it saves.

    Raises CheckpointSaveError (one line: path, errno, fix) when this or the previous save failed.
    """
    check_save(mngr, wait=True)  # Orbax waits for the previous save anyway
    step = int(jax.device_get(state.step))
    _check_writable(mngr, step)
    items = dict(
        params=ocp.args.StandardSave(state.params),
        ema_params=ocp.args.StandardSave(state.ema_params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
    )
    if data_iter is not None and hasattr(data_iter, "get_state"):
        import grain

        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    try:
        saved = mngr.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:
        if _save_errno(e) is None:
            raise
        raise CheckpointSaveError(_save_message(mngr, step, e)) from None
    check_save(mngr)
    if saved and isinstance(mngr, _Manager):
        mngr._pending_step = step
        if not mngr._options.enable_async_checkpointing:
            _after_commit(mngr)
    return saved


def check_save(mngr: ocp.CheckpointManager, *, wait: bool = False) -> None:
    """Cheap, after every step: raises CheckpointSaveError (one line) when an async save has
    failed, and starts writing the checksum manifest of a save that has committed. ``wait``:
    block until the save in flight is done (before the next save, at the end)."""
    if not isinstance(mngr, _Manager):
        if wait:
            mngr.wait_until_finished()
        return
    if mngr._pending_step is not None and (wait or not mngr.is_saving_in_progress()):
        try:  # returns at once when the save is done; re-raises its error if it failed
            mngr.wait_until_finished()
            mngr.check_for_errors()
        except Exception as e:  # noqa: BLE001 - reported below, in one line
            if mngr.save_error is None:
                mngr.save_error = e
        if mngr.save_error is None:
            _after_commit(mngr)
    if mngr.save_error is not None:
        e, mngr.save_error = mngr.save_error, None
        step, mngr._pending_step = mngr._pending_step, None
        raise CheckpointSaveError(_save_message(mngr, step, e)) from None


def finish(mngr: ocp.CheckpointManager, *, raise_errors: bool = True) -> None:
    """Waits for pending saves and their manifests. A failed save raises CheckpointSaveError, or
    (``raise_errors=False``, while another error propagates) is logged in one line."""
    try:
        check_save(mngr, wait=True)
    except CheckpointSaveError as e:
        if raise_errors:
            raise
        logging.error("%s", e)
    finally:
        if isinstance(mngr, _Manager) and mngr._manifest_thread is not None:
            mngr._manifest_thread.join()
            mngr._manifest_thread = None


def _check_writable(mngr, step) -> None:
    """A local checkpoint directory that became read-only (or unwritable) is refused before Orbax
    starts a save that would fail in its threads (and wait minutes for their signals)."""
    directory = str(mngr.directory)
    if is_remote(directory) or os.access(directory, os.W_OK):
        return
    readonly = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    n = errno_lib.EROFS if readonly else errno_lib.EACCES
    raise CheckpointSaveError(_save_message(mngr, step, OSError(n, os.strerror(n), directory)))


def _after_commit(mngr: _Manager) -> None:
    step, mngr._pending_step = mngr._pending_step, None
    if step is None or jax.process_index() != 0 or is_remote(str(mngr.directory)):
        return  # remote (gs://, ...) steps carry no manifest: see the module doc
    if mngr._manifest_thread is not None:
        mngr._manifest_thread.join()
    step_dir = os.path.join(str(mngr.directory), str(step))
    mngr._manifest_thread = threading.Thread(
        target=_write_manifest_logged, args=(step_dir,), name=f"manifest-{step}", daemon=False
    )
    mngr._manifest_thread.start()


def _write_manifest_logged(step_dir: str) -> None:
    try:
        write_manifest(step_dir)
    except FileNotFoundError:  # the step was removed by retention meanwhile
        pass
    except OSError as e:
        logging.warning("Checksum manifest of %s not written: %s", step_dir, e)


# ---------------------------------------------------------------------------- save errors

_FIX = {
    errno_lib.ENOSPC: "free disk space (or lower config.train.keep) and resume",
    errno_lib.EDQUOT: "free space within your quota (or lower config.train.keep) and resume",
    errno_lib.EROFS: "the filesystem is read-only: remount it read-write or use another --workdir",
    errno_lib.EACCES: "make the workdir writable for this user (permissions) or use another "
    "--workdir",
    errno_lib.EPERM: "make the workdir writable for this user (permissions) or use another "
    "--workdir",
    errno_lib.EIO: "an I/O error of the disk: check the device, then resume",
}
_ERRNO_TEXT = {os.strerror(n): n for n in _FIX}


def _chain(e):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _save_errno(e) -> int | None:
    """The errno of a save failure (an OSError in the chain, or TensorStore's message)."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno:
            return x.errno
        for text, n in _ERRNO_TEXT.items():
            if text in str(x):
                return n
    return None


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _save_message(mngr, step, e) -> str:
    n = _save_errno(e)
    path = next(
        (x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename),
        os.path.join(str(mngr.directory), str(step) if step is not None else ""),
    )
    code = f"errno {n} {errno_lib.errorcode.get(n, '?')}: {os.strerror(n)}" if n else "no errno"
    fix = _FIX.get(n, "check the filesystem of the workdir")
    return (
        f"Checkpoint save of step {step} to {path} failed ({code}); {fix}. The previous "
        f"checkpoint ({_latest_committed(mngr)}) is intact. [{type(e).__name__}: {_first_line(e)}]"
    )


def _latest_committed(mngr) -> str:
    try:
        steps = _step_dirs(str(mngr.directory))
    except OSError:
        return "unknown"
    return f"step {max(steps)}" if steps else "none yet"


# ---------------------------------------------------------------------------- checksums


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST_FILE and not name.startswith(f".{MANIFEST_FILE}"):
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str) -> str:
    """Writes ``<step_dir>/nag_jax_sha256.json``: {relative file: [size, sha256]} of every file
    of a committed step, atomically (a temporary file renamed into place). Returns its path."""
    manifest = {
        rel: [os.path.getsize(p), sha256_file(p)]
        for rel in _files(step_dir)
        for p in [os.path.join(step_dir, rel)]
    }
    path = os.path.join(step_dir, MANIFEST_FILE)
    tmp = os.path.join(step_dir, f".{MANIFEST_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"sha256": manifest}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify_step(step_dir: str) -> bool:
    """Checks every file of a step against its manifest. Returns False when the step has no
    manifest (unverifiable); raises CorruptCheckpointError naming the first bad file."""
    if not os.path.isdir(step_dir):
        raise CorruptCheckpointError(f"{step_dir} is missing")
    if not os.listdir(step_dir):
        raise CorruptCheckpointError("the step folder is empty")
    path = os.path.join(step_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            manifest = json.load(f)["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"its checksum manifest is unreadable ({e})") from None
    for rel, (size, digest) in sorted(manifest.items()):
        p = os.path.join(step_dir, rel)
        if not os.path.exists(p):
            raise CorruptCheckpointError(f"file {rel} is missing")
        if os.path.getsize(p) != size:
            raise CorruptCheckpointError(
                f"file {rel} has {os.path.getsize(p)} bytes, {size} were written (truncated?)"
            )
        if sha256_file(p) != digest:
            raise CorruptCheckpointError(f"file {rel} does not match its sha256 (corrupt bytes)")
    return True


# ---------------------------------------------------------------------------- restore


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _step_dirs(directory: str) -> list[int]:
    return [int(d) for d in os.listdir(directory) if d.isdigit()]


def restore(
    mngr: ocp.CheckpointManager,
    state_like: TrainState,
    data_iter=None,
    *,
    step: int | None = None,
) -> TrainState:
    """Restores the latest (or ``step``) checkpoint into arrays shaped/sharded like ``state_like``.

    ``state_like`` may hold real arrays or ``jax.ShapeDtypeStruct``s with shardings. The data
    iterator, when given and saved, is moved to the saved position in place.

    Each step is verified against its checksum manifest first. Without ``step``, a step that is
    corrupt or incomplete is renamed ``<step>.corrupt`` (a warning names it and why) and the next
    older one is tried; NoRestorableCheckpointError names every step when none restores. With
    ``step``, CorruptCheckpointError is raised instead (nothing is renamed). A checkpoint of
    another model raises ValueError naming the mismatched params (nothing is renamed).
    """
    directory = str(mngr.directory)
    steps = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
    if not steps or steps == [None]:
        raise FileNotFoundError(f"No checkpoint in {directory}.")
    failures = []
    for s in steps:
        try:
            state = _restore_step(mngr, s, state_like, data_iter)
        except CorruptCheckpointError as e:
            reason = str(e)
        else:
            if failures:
                mngr.reload()  # forget the steps set aside
            return state
        if step is not None:
            raise CorruptCheckpointError(
                f"checkpoint step {s} in {directory} is corrupt or incomplete: {reason}"
            )
        aside = _set_aside(directory, s)
        logging.warning(
            "Checkpoint step %d in %s is corrupt or incomplete (%s); moved aside to %s, trying "
            "the previous step.",
            s,
            directory,
            reason,
            aside,
        )
        failures.append(f"step {s}: {reason}")
    mngr.reload()
    raise NoRestorableCheckpointError(
        f"No checkpoint in {directory} restores ({'; '.join(failures)}). Each was moved aside "
        f"to <step>{CORRUPT_SUFFIX} (nothing deleted). Restore a copy of the checkpoints, or "
        "start again: a new run in this workdir starts from step 0."
    )


def _restore_step(mngr, step, state_like, data_iter) -> TrainState:
    directory = str(mngr.directory)
    step_dir = os.path.join(directory, str(step))
    remote = is_remote(directory)
    verified = False if remote else verify_step(step_dir)
    if not verified and not remote:
        logging.warning(
            "Checkpoint step %d in %s has no checksum manifest (written by an older version, or "
            "the run was killed right after the save): restoring it unverified.",
            step,
            directory,
        )
    missing = [k for k in TREE_ITEMS if not _has_item(mngr, step, k)]
    if missing:
        raise CorruptCheckpointError(f"item(s) {', '.join(missing)} missing")
    try:
        meta = mngr.item_metadata(step)
        saved_params = meta["params"]
        saved_params = getattr(saved_params, "tree", saved_params)
    except Exception as e:  # noqa: BLE001 - unreadable metadata: the step is damaged
        raise CorruptCheckpointError(
            f"its metadata is unreadable ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not saved_params:
        raise CorruptCheckpointError("params/_METADATA is missing or empty")
    check_params_match(state_like.params, saved_params, source=step_dir)
    items = dict(
        params=ocp.args.StandardRestore(_abstract(state_like.params)),
        ema_params=ocp.args.StandardRestore(_abstract(state_like.ema_params)),
        opt_state=ocp.args.StandardRestore(_abstract(state_like.opt_state)),
        meta=ocp.args.StandardRestore(_abstract({"step": state_like.step, "rng": state_like.rng})),
    )
    if data_iter is not None and hasattr(data_iter, "set_state") and _has_item(mngr, step, "data"):
        import grain

        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        r = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - TensorStore / JSON / Orbax errors of damaged files
        raise CorruptCheckpointError(
            f"restore failed ({type(e).__name__}: {_first_line(e)})"
        ) from None
    logging.info(
        "Restored checkpoint step %d from %s%s",
        step,
        directory,
        " (checksums verified)" if verified else "",
    )
    return TrainState(
        step=r["meta"]["step"],
        params=r["params"],
        ema_params=r["ema_params"],
        opt_state=r["opt_state"],
        rng=r["meta"]["rng"],
    )


def _set_aside(directory: str, step: int) -> str:
    """Renames ``<step>`` to ``<step>.corrupt`` (``.corrupt.1``, ... if taken); process 0 only."""
    src = as_path(directory) / str(step)
    dst, i = src.parent / f"{step}{CORRUPT_SUFFIX}", 0
    while dst.exists():
        i += 1
        dst = src.parent / f"{step}{CORRUPT_SUFFIX}.{i}"
    if jax.process_index() == 0:
        src.rename(dst)
    return str(dst)


def _has_item(mngr, step, name) -> bool:
    return (as_path(str(mngr.directory)) / str(step) / name).is_dir()


# ---------------------------------------------------------------------------- run config


def config_to_dict(config) -> dict:
    """ConfigDict -> JSON-able dict (unknown objects become their repr)."""
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def _flatten(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_MISSING = object()


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys that differ between two config dicts, as ``"a.b: old -> new"`` lines."""
    fo, fn = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(fo) | set(fn)):
        a, b = fo.get(k, _MISSING), fn.get(k, _MISSING)
        if a != b:
            show = lambda v: "(absent)" if v is _MISSING else repr(v)  # noqa: E731
            out.append(f"{k}: {show(a)} -> {show(b)}")
    return out


def check_or_write_config(config, workdir: str) -> None:
    """Writes workdir/config.json, or checks an existing one describes the same model.

    A workdir that holds another run's config (a different model) raises ValueError naming the
    differing fields; other differences (num_steps, lr, ...) are allowed and logged by dotted key
    (old -> new); a changed global batch size gets its own warning.
    """
    path = as_path(workdir) / CONFIG_FILE
    new = config_to_dict(config)
    if path.exists():
        old = json.loads(path.read_text())
        old_m, new_m = old.get("model", {}), new.get("model", {})
        diffs = [
            f"model.{k}: workdir {old_m.get(k)!r} vs config {new_m.get(k)!r}"
            for k in MODEL_KEYS
            if old_m.get(k) != new_m.get(k)
        ]
        if diffs:
            raise ValueError(
                f"Workdir {workdir} holds another run (its {CONFIG_FILE} describes a different "
                "model):\n  " + "\n  ".join(diffs) + "\nUse a new --workdir, or the config that "
                "wrote this one."
            )
        changed = changed_keys(old, new)
        if changed:
            logging.warning(
                "Resuming %s with a changed config (workdir %s -> now): %s",
                workdir,
                CONFIG_FILE,
                "; ".join(changed),
            )
        old_b = old.get("data", {}).get("global_batch_size")
        new_b = new.get("data", {}).get("global_batch_size")
        if old_b != new_b:
            logging.warning(
                "data.global_batch_size changed on resume: %s -> %s. Steps from here on see %s "
                "examples each (the step count, schedules and the data position are per step).",
                old_b,
                new_b,
                new_b,
            )
        return
    if jax.process_index() == 0:
        write_json(str(path), new)
