"""The one home for paths a user gives (workdir, data, latents, checkpoints, eval chunks and
results, VAE and Inception weights): local paths and remote URIs (``gs://``, ``s3://``, ``az://``,
``hf://``) through ``etils.epath``.

Rule: never ``os.path.abspath`` a user path (it turns ``gs://bucket/run`` into
``./gs:/bucket/run``). Call :func:`as_path` once where the path enters, then use the
``epath.Path`` API (``/``, ``exists``, ``open``, ``mkdir``, ``rename``) or ``str(path)`` for
libraries that take URIs (Orbax, TensorStore, tf.io.gfile).
"""

from __future__ import annotations

import os

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path) -> bool:
    """True for a URI that epath serves through a remote backend (gs://, s3://, az://, hf://)."""
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def as_path(path) -> epath.Path:
    """A user path as an ``epath.Path``: a remote URI is kept as given; a local path has ``~``
    expanded and is made absolute (symlinks are not resolved, so a dangling link is still seen
    as itself). Raises ValueError for an empty path."""
    if isinstance(path, epath.Path) and (is_remote(path) or os.path.isabs(os.fspath(path))):
        return path
    text = os.fspath(path)
    if not text:
        raise ValueError("empty path: give a local directory or a gs:// / s3:// URI")
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def atomic_write(path, write, mode: str = "wb") -> str:
    """Writes the file at user path ``path`` (local or remote) through ``write(f)`` on an open
    file, atomically: into a temporary sibling that is renamed into place, so a reader never sees
    a partial file and a failed write leaves the old one. Creates the parent folder; returns
    ``str(path)``."""
    out = as_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        with tmp.open(mode) as f:
            write(f)
        tmp.replace(out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return str(out)
