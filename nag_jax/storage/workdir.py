"""The one home for workdir checks and the workdir lock (training, evaluation and sampling jobs).

A job calls :func:`locked` around its work::

    with workdir.locked(path, job="train"):   # checks the path, creates it, takes the lock
        ...

The lock is ``<workdir>/.nag_jax.lock``: an OS lock (``fcntl.flock``, exclusive, non-blocking)
on that file, held for the whole job, plus a JSON record of the holder (host, pid, job, start
time) written into it. A second job on the same workdir fails at once with
:class:`WorkdirLockedError` naming the holder. The kernel drops a flock when its process dies,
so a lock left by a killed job is simply taken over (a warning names the dead holder). Where
flock is not supported (some network filesystems) the record alone decides: a record of a dead
pid on this host is stale and taken over; a live pid, or another host's record, is refused.

Guarantees by filesystem (also in the README, "Checkpoints"):
  local disks, tmpfs                 full (flock is exact, a dead holder never blocks)
  NFS v4, Lustre, GCS-fuse, ...      flock where the mount supports it (NFS v4 maps it to byte
                                     locks across clients); otherwise the host/pid record
  gs://, s3:// URIs                  no lock at all (object stores have no lock): a warning says
                                     so; do not start two jobs on one remote workdir

In a multi-process (multi-host) job only process 0 takes the lock: the processes of one job share
the workdir by design.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time

from absl import logging

from nag_jax.errors import RunStopped
from nag_jax.storage.paths import as_path, is_remote

LOCK_FILE = ".nag_jax.lock"


class WorkdirError(RunStopped, ValueError):
    """The workdir cannot be used (a dangling link, a file, another job holds it)."""


class WorkdirLockedError(WorkdirError):
    """Another live job holds the workdir lock."""


def check_workdir(path) -> str:
    """Checks a local workdir path and creates it; returns it as a string (remote URIs as given).

    Raises WorkdirError for a dangling symlink (naming its target) or a path that is a file.
    """
    p = as_path(path)
    if is_remote(p):
        p.mkdir(parents=True, exist_ok=True)
        return str(p)
    text = os.fspath(p)
    if os.path.islink(text) and not os.path.exists(text):
        raise WorkdirError(
            f"workdir {text} is a symlink to {os.readlink(text)}, which does not exist; create "
            "the target directory (e.g. mount the disk) or point --workdir elsewhere."
        )
    if os.path.exists(text) and not os.path.isdir(text):
        raise WorkdirError(f"workdir {text} is a file, not a directory; choose another --workdir.")
    os.makedirs(text, exist_ok=True)
    return text


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` of this host exists (the workdir lock's and the weights'
    temporary files' test for a dead owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_holder(path) -> dict:
    """The holder record of ``<workdir>/.nag_jax.lock`` ({} when absent or unreadable)."""
    try:
        with open(os.path.join(os.fspath(path), LOCK_FILE)) as f:
            rec = json.loads(f.read() or "{}")
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(rec: dict) -> str:
    if not rec:
        return "an unknown process (no holder record)"
    started = rec.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    job, pid, host = rec.get("job", "?"), rec.get("pid"), rec.get("host")
    return f"{job} job, pid {pid} on host {host}, since {when}"


class WorkdirLock:
    """An exclusive lock on a local workdir (see the module doc); ``release()`` frees it."""

    def __init__(self, directory: str, job: str):
        self.directory = directory
        self.job = job
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd = None

    def acquire(self) -> WorkdirLock:
        # The flock is held on a read-only descriptor (a long-lived writable one would, e.g.,
        # block a remount read-only); the record is written through a short-lived one.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            flocked = self._flock(fd)
            previous = read_holder(self.directory)
            me = {"host": socket.gethostname(), "pid": os.getpid()}
            if flocked is False:  # another live process holds the OS lock
                raise WorkdirLockedError(self._busy(previous))
            if previous and (previous.get("host"), previous.get("pid")) != tuple(me.values()):
                stale = previous.get("host") == me["host"] and not pid_alive(
                    int(previous.get("pid") or 0)
                )
                if flocked is None and not stale:  # no OS lock: the record decides
                    raise WorkdirLockedError(self._busy(previous))
                logging.warning(
                    "Workdir lock %s: taking over from %s (%s).",
                    self.path,
                    _describe(previous),
                    "process gone" if stale else "it no longer holds the lock",
                )
            record = dict(me, job=self.job, started=time.time())
            with open(self.path, "w") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _flock(self, fd) -> bool | None:
        """True: locked; False: held by another process; None: flock unsupported here."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                logging.warning(
                    "Workdir lock %s: this filesystem does not support flock (%s); relying on the "
                    "host/pid record only.",
                    self.path,
                    os.strerror(e.errno),
                )
                return None
            raise

    def _busy(self, rec: dict) -> str:
        return (
            f"workdir {self.directory} is in use by {_describe(rec)} (lock {self.path}); wait "
            "for it to finish, stop it, or use another --workdir. (If that process is gone and "
            f"the filesystem has no locks, delete {self.path}.)"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError), open(self.path, "w"):
            pass  # no record of a finished holder
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


_held: dict[str, list] = {}  # directory -> [lock, depth]: re-entrant within one process
_held_guard = threading.Lock()


@contextlib.contextmanager
def locked(path, *, job: str):
    """Checks and creates ``path`` (:func:`check_workdir`), holds its lock for the block and
    yields the workdir as a string. Re-entrant within one process (a job inside a job); only
    process 0 of a multi-process job locks; a remote URI is not locked (a warning says so).
    A job that fails before writing anything into a workdir it created leaves no workdir."""
    import jax

    existed = os.path.lexists(os.fspath(as_path(path))) or is_remote(path)
    directory = check_workdir(path)
    if is_remote(directory):
        logging.warning(
            "Workdir %s is remote: no workdir lock exists for object stores; do not start a "
            "second job on it.",
            directory,
        )
        yield directory
        return
    if jax.process_index() != 0:
        yield directory
        return
    with _held_guard:
        entry = _held.get(directory)
        if entry is None:
            entry = _held[directory] = [WorkdirLock(directory, job).acquire(), 0]
        entry[1] += 1
    failed = True
    try:
        yield directory
        failed = False
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].release()
                del _held[directory]
                if failed and not existed and os.listdir(directory) == [LOCK_FILE]:
                    os.remove(os.path.join(directory, LOCK_FILE))
                    os.rmdir(directory)
