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
data, so flipped bytes in an array file restore silently; hence the sha256 manifest
(``nag_jax.storage.manifest``, the one verification, also used by the weights loader). It is
written by process 0 inside Orbax's temporary step folder, after every process has written its
shards and before the rename that commits the step (:class:`_ManifestTemporaryPath`), so a local
step committed by this version always carries its manifest: a kill at any moment leaves either
an uncommitted temporary folder (cleaned on start) or a complete, verifiable step.
:func:`restore` verifies a step (process 0 decides, every process follows), restores it, and
checks that a step without a manifest (older versions, remote ``gs://`` stores) holds no NaN/Inf;
a step that fails any of this (a file, a malformed manifest, unreadable arrays, NaN/Inf) is
renamed ``<step>.corrupt`` with a one-line warning and the next older step is tried. A checkpoint
of another model is not "corrupt": it stops the run with the mismatched params
(``weights.check_params_match``).

Save failures (full disk, read-only or unwritable workdir) are caught at the step after the
async write fails (:func:`check_save`, a flag read; no I/O) and stop the run with one line
naming the path, the errno and the fix (:class:`CheckpointSaveError`; the text and the quieting
of Orbax's noise: ``nag_jax.training.save_errors``). With several processes they agree first, so
a save that fails on one host stops every host.

Sampling, evaluation and fine-tuning read these checkpoints' params (latest EMA by default)
through the one weights loader, ``nag_jax.storage.weights.load_params``.
"""

from __future__ import annotations

import asyncio
import errno as errno_lib
import logging as py_logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from nag_jax.errors import RunStopped
from nag_jax.storage import manifest
from nag_jax.storage.manifest import MANIFEST_FILE, CorruptCheckpointError
from nag_jax.storage.paths import as_path, is_remote
from nag_jax.storage.weights import check_params_match
from nag_jax.training import save_errors
from nag_jax.training.state import TrainState

CORRUPT_SUFFIX = ".corrupt"
TREE_ITEMS = ("params", "ema_params", "opt_state", "meta")
__all__ = [
    "CORRUPT_SUFFIX",
    "MANIFEST_FILE",
    "CheckpointSaveError",
    "CorruptCheckpointError",
    "NoRestorableCheckpointError",
    "check_save",
    "create_manager",
    "finish",
    "restore",
    "save",
    "verify_step",
]


class CheckpointSaveError(RunStopped):
    """A checkpoint could not be written (disk full, read-only or unwritable workdir)."""


class NoRestorableCheckpointError(RunStopped):
    """Every checkpoint step of a workdir failed to verify or restore."""


# ---------------------------------------------------------------------------- manager


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager that keeps the error of a failed async save (Orbax's finalize thread
    logs it and drops it)."""

    save_error: BaseException | None = None
    _pending_step: int | None = None

    def check_for_errors(self):
        try:
            super().check_for_errors()
        except BaseException as e:
            if self.save_error is None:
                self.save_error = e
            raise


class _ManifestTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Orbax's atomic rename commit, with the sha256 manifest written into the temporary step
    folder first: the manifest is part of the step from the moment the step exists.

    ``finalize`` of the step folder (``<step>``; its items' folders commit first, inside it)
    runs on the primary process once every process has written its files (Orbax's barrier), in
    the save's background thread. It is Orbax 0.12.8's ``finalize`` with one line
    added (``manifest.write`` before the rename): the step metadata's commit time and the commit
    marker are written first, so the manifest covers every file of the committed step.
    """

    async def finalize(self):
        if self._snapshot is not None or not self._final_path.name.isdigit():
            return await super().finalize()  # an item folder inside the step (or a snapshot)
        atomicity = ocp.path.atomicity
        store = self._checkpoint_metadata_store
        if store:
            await asyncio.to_thread(store.wait_until_finished)
            await asyncio.to_thread(
                store.update,
                file_path=atomicity.checkpoint_metadata.step_metadata_file_path(self._tmp_path),
                commit_timestamp_nsecs=time.time_ns(),
            )
            await asyncio.to_thread(store.wait_until_finished)
        commit = self.get() / atomicity.COMMIT_SUCCESS_FILE
        await atomicity.async_path.write_text(
            commit, f"Checkpoint commit was successful to {self._final_path}"
        )
        await asyncio.to_thread(manifest.write, str(self._tmp_path))
        logging.info("Renaming %s to %s", self._tmp_path, self._final_path)
        await atomicity.async_path.rename(self._tmp_path, self._final_path)


def create_manager(
    directory: str, *, keep: int = 3, keep_every: int | None = None, async_save: bool = True
) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the last ``keep`` steps plus every ``keep_every``-th step;
    local steps are committed with their sha256 manifest (:class:`_ManifestTemporaryPath`)."""
    policies = [ocm.LatestN(max(1, int(keep or 1)))]
    if keep_every:
        policies.append(ocm.EveryNSteps(int(keep_every)))
    remote = is_remote(str(directory))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
        temporary_path_class=None if remote else _ManifestTemporaryPath,
    )
    import grain

    handlers = {k: ocp.StandardCheckpointHandler() for k in TREE_ITEMS}
    handlers["data"] = grain.checkpoint.CheckpointHandler()
    quiet = save_errors.QUIET
    for name in ("absl", "asyncio", "concurrent.futures"):
        logger = py_logging.getLogger(name)
        if quiet not in logger.filters:
            logger.addFilter(quiet)
    save_errors.quiet_shutdown()  # before any save: a failed one is noisy in its threads
    return _Manager(str(as_path(directory)), options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iter=None, *, force=False) -> bool:
    """Starts an (async) save of ``state`` at ``state.step``; returns whether it saves.

    Raises CheckpointSaveError (one line: path, errno, fix) when this or the previous save failed
    (on any process: the processes agree, so all of them stop).
    """
    step = int(jax.device_get(state.step))
    error = None
    try:
        check_save(mngr, wait=True)  # Orbax waits for the previous save anyway
        _check_writable(mngr, step)
    except CheckpointSaveError as e:
        error = e
    _agree_on_save_error(mngr, step, error)
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
        if save_errors.save_errno(e) is None:
            raise
        raise CheckpointSaveError(save_errors.message(mngr.directory, step, e)) from None
    if saved and isinstance(mngr, _Manager):
        mngr._pending_step = step
    check_save(mngr, wait=not mngr._options.enable_async_checkpointing)
    return saved


def _agree_on_save_error(mngr, step, error: CheckpointSaveError | None) -> None:
    """Multi-process: a save error on one process stops every process (each raises a one-line
    CheckpointSaveError; those without their own error name the process that has one)."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(error is not None)], np.int32))
    failed = [i for i, f in enumerate(np.asarray(flags).reshape(-1)) if f]
    if error is not None:
        raise error
    if failed:
        raise CheckpointSaveError(
            f"Checkpoint save of step {step} failed on process(es) {failed} (their log names "
            f"the path and the errno); every process stops. The previous checkpoint "
            f"({save_errors.latest_committed(mngr.directory)}) is intact."
        )


def check_save(mngr: ocp.CheckpointManager, *, wait: bool = False) -> None:
    """Cheap, after every step: raises CheckpointSaveError (one line) when an async save has
    failed. ``wait``: block until the save in flight is done (before the next save, at the end).
    With several processes only ``wait=True`` raises (in :func:`save` / :func:`finish`, where
    the processes agree, so all of them stop together)."""
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
            mngr._pending_step = None
    if mngr.save_error is not None:
        if not wait and jax.process_count() > 1:
            return  # the next save (or finish) stops every process together
        e, mngr.save_error = mngr.save_error, None
        step, mngr._pending_step = mngr._pending_step, None
        raise CheckpointSaveError(save_errors.message(mngr.directory, step, e)) from None


def finish(mngr: ocp.CheckpointManager, *, raise_errors: bool = True) -> None:
    """Waits for pending saves (each commits with its manifest). A failed save raises
    CheckpointSaveError, or (``raise_errors=False``, while another error propagates) is logged in
    one line."""
    error = None
    try:
        check_save(mngr, wait=True)
    except CheckpointSaveError as e:
        error = e
    if raise_errors:  # every process got here: they agree (a failure on one stops all)
        step = int(mngr.latest_step() or 0)
        _agree_on_save_error(mngr, step, error)
    elif error is not None:
        logging.error("%s", error)


def _check_writable(mngr, step) -> None:
    """A local checkpoint directory that became read-only (or unwritable) is refused before Orbax
    starts a save that would fail in its threads (and wait minutes for their signals)."""
    directory = str(mngr.directory)
    if is_remote(directory) or os.access(directory, os.W_OK):
        return
    readonly = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    n = errno_lib.EROFS if readonly else errno_lib.EACCES
    raise CheckpointSaveError(
        save_errors.message(mngr.directory, step, OSError(n, os.strerror(n), directory))
    )


# ---------------------------------------------------------------------------- restore


def verify_step(step_dir: str) -> bool:
    """Checks every file of a step against its manifest (``nag_jax.storage.manifest.verify``).
    Returns False when the step has no manifest (unverifiable); raises CorruptCheckpointError
    naming the first bad file, or the manifest when it is malformed."""
    return manifest.verify(step_dir)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _step_dirs(directory: str) -> list[int]:
    return [int(d) for d in os.listdir(directory) if d.isdigit()]


def _multi() -> bool:
    return jax.process_count() > 1


def _from_process0(values: np.ndarray) -> np.ndarray:
    """Process 0's ``values`` on every process (same shape and dtype everywhere)."""
    if not _multi():
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(values))


def _text_from_process0(text: str, size: int = 2048) -> str:
    raw = np.zeros(size, np.uint8)
    data = text.encode()[:size]
    raw[: len(data)] = np.frombuffer(data, np.uint8)
    out = _from_process0(raw)
    return bytes(out[out != 0].tolist()).decode(errors="replace")


def _failed_processes(failed: bool) -> list[int]:
    """The processes where ``failed`` is True (every process gets the same list)."""
    if not _multi():
        return [0] if failed else []
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(failed)], np.int32))
    return [i for i, f in enumerate(np.asarray(flags).reshape(-1)) if f]


def _barrier(name: str) -> None:
    if _multi():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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

    Each step is verified against its checksum manifest first, and a step without one is checked
    for NaN/Inf after the restore. Without ``step``, a step that fails (a file, a malformed
    manifest, unreadable arrays, NaN/Inf) is renamed ``<step>.corrupt`` (a warning names it and
    why) and the next older one is tried; NoRestorableCheckpointError names every step when none
    restores. With ``step``, CorruptCheckpointError is raised instead (nothing is renamed). A
    checkpoint of another model raises ValueError naming the mismatched params (nothing is
    renamed). ``mngr.restored`` = (step, verified) of the step restored.

    Several processes make one decision: process 0 lists the steps and verifies the manifest, and
    broadcasts what it found; a restore that fails on any process fails on all; every process
    reaches a barrier before process 0 renames a step aside, and another after.
    """
    directory = str(mngr.directory)
    if step is not None:
        steps = [int(step)]
    else:
        listed = sorted(mngr.all_steps(), reverse=True)[:255] if jax.process_index() == 0 else []
        raw = np.full(256, -1, np.int64)
        raw[: len(listed)] = listed
        steps = [int(x) for x in _from_process0(raw) if x >= 0]
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {directory}.")
    failures = []
    for s in steps:
        try:
            state, verified = _restore_step(mngr, s, state_like, data_iter)
        except CorruptCheckpointError as e:
            reason = str(e)
        else:
            if failures:
                mngr.reload()  # forget the steps set aside
            mngr.restored = (s, verified)
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


def _verify_on_process0(step_dir: str) -> bool:
    """Process 0 verifies the step's manifest; every process gets its verdict (True: verified,
    False: no manifest) or raises the same CorruptCheckpointError."""
    status, reason = 0, ""
    if jax.process_index() == 0:
        try:
            status = 1 if verify_step(step_dir) else 0
        except CorruptCheckpointError as e:
            status, reason = 2, str(e)
    status = int(_from_process0(np.asarray([status], np.int32))[0])
    if status == 2:
        raise CorruptCheckpointError(_text_from_process0(reason))
    return status == 1


def _restore_step(mngr, step, state_like, data_iter) -> tuple[TrainState, bool]:
    directory = str(mngr.directory)
    step_dir = os.path.join(directory, str(step))
    remote = is_remote(directory)
    verified = False if remote else _verify_on_process0(step_dir)
    if not verified:
        logging.warning(
            "Checkpoint step %d in %s has no checksum manifest (written by an older version, or "
            "stored remotely): restoring it, then checking that it holds no NaN/Inf.",
            step,
            directory,
        )
    missing = [k for k in TREE_ITEMS if not _has_item(mngr, step, k)]
    if missing:
        raise CorruptCheckpointError(f"{step_dir}: item(s) {', '.join(missing)} missing")
    try:
        meta = mngr.item_metadata(step)
        saved_params = meta["params"]
        saved_params = getattr(saved_params, "tree", saved_params)
    except Exception as e:  # noqa: BLE001 - unreadable metadata: the step is damaged
        raise CorruptCheckpointError(
            f"{step_dir}: its metadata is unreadable "
            f"({type(e).__name__}: {save_errors.first_line(e)})"
        ) from None
    if not saved_params:
        raise CorruptCheckpointError(f"{step_dir}/params/_METADATA is missing or empty")
    check_params_match(state_like.params, saved_params, source=step_dir)
    items = dict(
        params=ocp.args.StandardRestore(_abstract(state_like.params)),
        ema_params=ocp.args.StandardRestore(_abstract(state_like.ema_params)),
        opt_state=ocp.args.StandardRestore(_abstract(state_like.opt_state)),
        meta=ocp.args.StandardRestore(_abstract({"step": state_like.step, "rng": state_like.rng})),
    )
    if data_iter is not None and hasattr(data_iter, "set_state") and _has_item(mngr, step, "data"):
        import grain

        if _data_saved_for_this_process_count(step_dir):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    r, error = None, ""
    try:
        r = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - TensorStore / JSON / Orbax errors of damaged files
        error = f"{step_dir}: restore failed ({type(e).__name__}: {save_errors.first_line(e)})"
    failed = _failed_processes(bool(error))
    if failed:
        raise CorruptCheckpointError(
            error or f"{step_dir}: restore failed on process(es) {failed} (see their log)"
        )
    if not verified:
        trees = {k: r[k] for k in ("params", "ema_params", "opt_state")}
        manifest.check_finite(trees, source=step_dir)
    logging.info(
        "Restored checkpoint step %d from %s%s",
        step,
        directory,
        " (checksums verified)" if verified else " (no manifest; every value finite)",
    )
    state = TrainState(
        step=r["meta"]["step"],
        params=r["params"],
        ema_params=r["ema_params"],
        opt_state=r["opt_state"],
        rng=r["meta"]["rng"],
    )
    return state, verified


def _data_saved_for_this_process_count(step_dir: str) -> bool:
    """Whether the step holds this process's data-iterator position (grain writes one JSON per
    process: ``process_<i>-of-<n>.json``). A step saved by another number of processes restores
    (params, optimizer, step, rng) with the data pipeline starting afresh, and a warning."""
    i, n = jax.process_index(), jax.process_count()
    data = os.path.join(step_dir, "data")
    if os.path.exists(os.path.join(data, f"process_{i}-of-{n}.json")):
        return True
    saved = sorted(f for f in os.listdir(data) if f.startswith("process_"))
    logging.warning(
        "Checkpoint %s was saved by another number of processes (%s; now %d): the train state "
        "restores, the data pipeline starts afresh (its position is per process).",
        step_dir,
        ", ".join(saved) or "none",
        n,
    )
    return False


def _set_aside(directory: str, step: int) -> str:
    """Renames ``<step>`` to ``<step>.corrupt`` (``.corrupt.1``, ... if taken) on process 0,
    between two barriers: no process still reads the step, and none goes on before it moved."""
    src = as_path(directory) / str(step)
    dst, i = src.parent / f"{step}{CORRUPT_SUFFIX}", 0
    while dst.exists():
        i += 1
        dst = src.parent / f"{step}{CORRUPT_SUFFIX}.{i}"
    _barrier(f"nag_jax_set_aside_{step}")
    if jax.process_index() == 0:
        src.rename(dst)
    _barrier(f"nag_jax_set_aside_{step}_done")
    return str(dst)


def _has_item(mngr, step, name) -> bool:
    return (as_path(str(mngr.directory)) / str(step) / name).is_dir()
