"""The sha256 manifest of a checkpoint folder: the ONE verification of stored weights.

``<folder>/nag_jax_sha256.json`` = ``{"sha256": {relative file: [size, sha256]}}`` for every file
of a training step (``checkpoints/<step>/``, written by ``nag_jax.training.checkpoint`` inside
Orbax's temporary folder, before the step is committed by its rename) or of a converted
checkpoint (``nag_jax.storage.weights.save_params``, inside the temporary folder of its atomic
publish). Both readers use :func:`verify`: the training resume (``checkpoint.restore``) and the
weights loader (``nag_jax.storage.weights.load_params``: sample, eval, demo, sweep, noise_shift,
fine-tuning's ``model.weights``, ``nag-convert to-torch`` / ``inspect``).

Why a manifest: Orbax 0.12.8 checksums only the index of each zarr3 shard (crc32c), not the chunk
data, so flipped bytes in an array file restore silently.

A folder without a manifest (written by an older version, a remote ``gs://`` store, a tree
written by other tools) cannot be verified here: its readers restore it and then refuse it when
any leaf holds a NaN/Inf (:func:`check_finite`). A manifest that cannot be read or has the wrong
shape is a corrupt folder, like a file that does not match (:class:`CorruptCheckpointError`).

Every message names the file and what is wrong with it, in one line.

It lives in ``nag_jax.storage`` (beside the weights loader), not in ``nag_jax.training``: the
loader must not import training (training imports storage; no cycle between packages).
"""

from __future__ import annotations

import json
import os

from nag_jax.errors import RunStopped
from nag_jax.storage.paths import as_path

MANIFEST_FILE = "nag_jax_sha256.json"


def sha256_file(path, *, bar=None, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file (local or remote, nag_jax.storage.paths), read in ``chunk``-byte
    blocks; ``bar``: an object whose ``update(n)`` gets the bytes read (a progress bar). The one
    sha256 of the project (``nag_jax.utils.sha256_file`` adds the converter's progress bar)."""
    import hashlib

    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


class CorruptCheckpointError(RunStopped, ValueError):
    """Stored weights are corrupt or incomplete: a file that fails its checksum or is missing, a
    malformed manifest, unreadable arrays, NaN/Inf values. One line that names the file. (A
    RunStopped: ``nag-jax`` exits 1; a ValueError: ``nag-convert`` reports it as a user error.)"""


def files(folder: str) -> list[str]:
    """Every file under ``folder`` (relative paths, sorted), the manifest and its temp excluded."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST_FILE and not name.startswith(f".{MANIFEST_FILE}"):
                out.append(rel)
    return sorted(out)


def write(folder: str) -> str:
    """Writes ``<folder>/nag_jax_sha256.json`` ({relative file: [size, sha256]} of every file),
    atomically (a temporary file fsynced and renamed into place). Returns its path."""
    entries = {
        rel: [os.path.getsize(p), sha256_file(p)]
        for rel in files(folder)
        for p in [os.path.join(folder, rel)]
    }
    path = os.path.join(folder, MANIFEST_FILE)
    tmp = os.path.join(folder, f".{MANIFEST_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"sha256": entries}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read(folder: str) -> dict[str, tuple[int, str]] | None:
    """The manifest of ``folder`` as {relative file: (size, sha256)}; None when there is none.
    Raises CorruptCheckpointError naming the manifest when it is unreadable or of the wrong shape
    (not ``{"sha256": {str: [int, str]}}``)."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(
            f"{path}: the checksum manifest is unreadable ({type(e).__name__}: {e})"
        ) from None
    entries = data.get("sha256") if isinstance(data, dict) else None
    bad = not isinstance(entries, dict) or not all(
        isinstance(k, str)
        and isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], int)
        and not isinstance(v[0], bool)
        and isinstance(v[1], str)
        for k, v in entries.items()
    )
    if bad:
        raise CorruptCheckpointError(
            f'{path}: the checksum manifest is malformed (expected {{"sha256": {{file: [size, '
            f"sha256]}}}}, found {json.dumps(data)[:80]})"
        )
    return {k: (v[0], v[1]) for k, v in entries.items()}


def verify(folder: str, *, under: tuple[str, ...] = ()) -> bool:
    """Checks the files of ``folder`` against its manifest; True when verified, False when the
    folder has no manifest (unverifiable). ``under``: only the entries inside these subfolders
    (e.g. ``("ema_params",)`` of a training step; the manifest itself is read and checked whole).

    Raises CorruptCheckpointError naming the first bad file (missing, wrong size, wrong sha256), a
    malformed manifest, or a missing / empty folder.
    """
    if not os.path.isdir(folder):
        raise CorruptCheckpointError(f"{folder} is missing")
    if not os.listdir(folder):
        raise CorruptCheckpointError(f"{folder}: the folder is empty")
    entries = read(folder)
    if entries is None:
        return False
    prefixes = tuple(u.rstrip("/") + "/" for u in under)
    for rel, (size, digest) in sorted(entries.items()):
        if prefixes and not rel.startswith(prefixes):
            continue
        p = os.path.join(folder, rel)
        if not os.path.exists(p):
            raise CorruptCheckpointError(f"{p} is missing (listed in {MANIFEST_FILE})")
        if os.path.getsize(p) != size:
            raise CorruptCheckpointError(
                f"{p} has {os.path.getsize(p)} bytes, {size} were written (truncated?)"
            )
        if sha256_file(p) != digest:
            raise CorruptCheckpointError(f"{p} does not match its sha256 (corrupt bytes)")
    return True


def check_finite(tree, *, source: str) -> None:
    """Raises CorruptCheckpointError naming ``source`` and the first leaf (its '/'-joined path)
    that holds a NaN or Inf. For restored trees that no manifest verified. Leaves may be numpy or
    (sharded, also multi-host) jax arrays: one jitted reduction for all jax leaves, so every
    process gets the same answer."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nag_jax.parallel import path_str

    leaves = [
        (path_str(path), x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    host = [(name, x) for name, x in leaves if isinstance(x, np.ndarray)]
    dev = [(name, x) for name, x in leaves if not isinstance(x, np.ndarray)]
    bad = [name for name, x in host if not np.isfinite(x).all()]
    if dev:
        ok = jax.jit(lambda xs: jnp.stack([jnp.isfinite(a).all() for a in xs]))([x for _, x in dev])
        ok = np.asarray(jax.device_get(ok))
        bad += [name for (name, _), good in zip(dev, ok) if not good]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CorruptCheckpointError(
            f"{source}: {bad[0]}{more} holds NaN/Inf values; it has no checksum manifest to "
            "verify it against (corrupt bytes, or the weights of a diverged run)"
        )
