"""Failed checkpoint saves in one line: the errno, the path, the fix, the step that is intact.

``message(directory, step, exc)`` is the text of ``checkpoint.CheckpointSaveError``. Orbax reports
a failed background save from each of its threads with full tracebacks, and its event loops
print "Event loop is closed" tracebacks while they shut down (822 lines for one full disk);
:data:`QUIET` (a logging filter) and :class:`QuietShutdown` (a sys.stderr wrapper) drop that
noise, ``nag-jax --verbose`` keeps it (``QUIET.verbose``).
"""

from __future__ import annotations

import errno as errno_lib
import logging as py_logging
import os
import sys
import threading

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
_ERRNO_TEXT["RESOURCE_EXHAUSTED: Error writing"] = errno_lib.ENOSPC  # TensorStore's full disk


def _chain(e):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = getattr(e, "__cause__", None) or getattr(e, "__context__", None)


def save_errno(e) -> int | None:
    """The errno of a save failure (an OSError in the chain, or TensorStore's message)."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno:
            return x.errno
        for text, n in _ERRNO_TEXT.items():
            if text in str(x):
                return n
    return None


def first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def message(directory: str, step, e) -> str:
    """One line for a failed save of ``step`` under ``directory`` (a checkpoints folder)."""
    n = save_errno(e)
    path = next(
        (x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename),
        os.path.join(str(directory), str(step) if step is not None else ""),
    )
    code = f"errno {n} {errno_lib.errorcode.get(n, '?')}: {os.strerror(n)}" if n else "no errno"
    fix = _FIX.get(n, "check the filesystem of the workdir")
    return (
        f"Checkpoint save of step {step} to {path} failed ({code}); {fix}. The previous "
        f"checkpoint ({latest_committed(directory)}) is intact. [{type(e).__name__}: "
        f"{first_line(e)}]"
    )


def latest_committed(directory: str) -> str:
    """ "step N" of the latest committed step in ``directory`` ("none yet", "unknown")."""
    try:
        steps = [int(d) for d in os.listdir(str(directory)) if d.isdigit()]
    except OSError:
        return "unknown"
    return f"step {max(steps)}" if steps else "none yet"


class _QuietSaveErrors(py_logging.Filter):
    """Orbax logs a failed background save from each of its threads, with full tracebacks; the
    run reports the failure in one line (CheckpointSaveError). Drops those records (Orbax's
    records whose exception carries a save errno) and the "Event loop is closed" tracebacks its
    threads print while they shut down (:class:`QuietShutdown`).
    ``verbose`` (nag-jax --verbose) keeps everything."""

    verbose = False

    def filter(self, record) -> bool:
        if self.verbose:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        orbax = "/orbax/" in (record.pathname or "") or "/orbax/" in text  # asyncio: its tasks
        if orbax and record.levelno >= py_logging.WARNING and (save_errno(exc) or save_errno(text)):
            return False
        return not _loop_closed(exc)


def _loop_closed(exc) -> bool:
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


class QuietShutdown:
    """A sys.stderr wrapper (installed with the checkpoint manager, unless verbose): drops the
    tracebacks that end in "RuntimeError: Event loop is closed" (TensorStore callbacks into
    Orbax's event loops, closed after a failed save, printed straight to stderr, one per pending
    write); everything else passes unchanged, a line at a time. Each thread's text is followed
    on its own (a traceback of one thread is not cut by a line another thread prints)."""

    NOISE = "RuntimeError: Event loop is closed"

    def __init__(self, stream):
        self.stream = stream
        self._partial: dict[int, str] = {}
        self._block: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        me = threading.get_ident()
        with self._lock:
            *lines, self._partial[me] = (self._partial.get(me, "") + text).split("\n")
            for line in lines:
                self._line(me, line + "\n")
        return len(text)

    def _line(self, me: int, line: str) -> None:
        block = self._block.get(me)
        if block is None:
            if line.startswith("Traceback (most recent call last):"):
                self._block[me] = [line]
            else:
                self.stream.write(line)
            return
        block.append(line)
        if not line.startswith((" ", "\t")):  # the exception line ends the traceback
            del self._block[me]
            if not line.startswith(self.NOISE):
                self.stream.write("".join(block))

    def flush(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if me not in self._block and self._partial.get(me):
                self.stream.write(self._partial.pop(me))
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def quiet_shutdown() -> None:
    if not QUIET.verbose and not isinstance(sys.stderr, QuietShutdown):
        sys.stderr = QuietShutdown(sys.stderr)


QUIET = _QuietSaveErrors()
