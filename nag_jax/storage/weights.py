"""Weights I/O: the one on-disk layout for model params, the one loader, the one atomic publish.

Every job reads weights through :func:`load_params` (as the DiT release's ``find_model`` accepts
every checkpoint it knows). It returns ``(params, metadata)`` for each layout the project writes:

    DEST/params/ + DEST/metadata/   a converted checkpoint (``python -m nag_jax.convert
                                    to-orbax`` or :func:`save_params`): an Orbax composite
                                    checkpoint; ``params`` a float32 tree, ``metadata`` JSON
                                    (family, model, input_size, ..., see nag_jax.convert.common)
    DIR/<step>/ema_params/          a training run's ``checkpoints/`` directory (or the workdir
                                    above it, or one ``<step>/``): the latest step's EMA params
                                    (``item="params"`` for the raw ones); metadata {}
    DIR/params/ (no metadata/)      a params tree beside other files, e.g. a converted VAE
                                    (``config.json`` + ``params/``); metadata {}
    DIR/                            a bare Orbax params tree, or a ``{"params": tree}`` wrapper
                                    (Orbax Inception weights of earlier versions); metadata {}

Arrays come back as numpy on the host CPU (also on GPU/TPU machines) unless an abstract
``target`` (``jax.ShapeDtypeStruct`` leaves with shardings) asks for device arrays.

Integrity: every read goes through :func:`verify` (the one check, ``nag_jax.storage.manifest``):
a folder with a sha256 manifest (training steps, converted checkpoints of this version) is
checked file by file before anything is restored, and one without (older versions, remote
stores, trees of other tools) is restored and then refused if any leaf holds a NaN/Inf. Either
failure is a one-line ``manifest.CorruptCheckpointError`` naming the file; nothing is computed on
it. :func:`save_params` writes the manifest inside the temporary folder, before the publish.

Writes go through :func:`atomic_publish`: the output is built under a temporary sibling name and
renamed into place, so a killed or failing write never leaves a partial checkpoint at ``dest``.
The temporary sibling is ``.NAME.tmp-<pid>@<host>-XXXXXXXX``: removed on failure, and a leftover
of a killed process (dead pid, this host) is removed by the next write or check of ``dest``.
User paths go through ``nag_jax.storage.paths.as_path`` (a ``gs://`` destination is kept as a URI).

Param trees are nested dicts; paths are flattened with ``flax.traverse_util.flatten_dict`` (tuple
keys, or ``sep="/"`` for ``"blocks_0/attn/qkv/kernel"`` strings) everywhere in the project.
No time convention enters here (weights only). The runtime reads weights through this module and
never imports ``nag_jax.convert`` (the PyTorch side).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping

import numpy as np
from absl import logging
from flax import traverse_util

from nag_jax.errors import UserError
from nag_jax.storage import manifest
from nag_jax.storage.paths import as_path, is_remote
from nag_jax.storage.workdir import pid_alive

FORMAT_VERSION = 1
PARAMS_ITEM = "params"
METADATA_ITEM = "metadata"
TRAINING_ITEMS = ("ema_params", "params")


class CheckpointError(UserError, ValueError):
    """Bad weights input or destination: the message names the value, what was expected and the
    fix. (``nag_jax.convert`` raises it too, as ``ConversionError``.)"""


class DestinationExistsError(CheckpointError, FileExistsError):
    """The destination of a write exists and ``force`` was not given."""


# ----------------------------------------------------------------------------------------------
# Atomic publish


def _tmp_prefix(dest: str) -> str:
    return f".{os.path.basename(dest)}.tmp-"


_TMP_OWNER = re.compile(r"^(\d+)@(.+)-[^-]+$")  # "<pid>@<host>-<random>" after the prefix


def clean_stale_tmp(dest: str) -> list[str]:
    """Removes the temporary siblings of ``dest`` (``.NAME.tmp-<pid>@<host>-*``) left by killed
    writes: those of a dead pid on this host. Returns the removed paths. A leftover without a
    recorded owner (written by an older version) is named in a warning, not removed."""
    dest = str(as_path(dest))
    parent, prefix = os.path.dirname(dest), _tmp_prefix(dest)
    if is_remote(dest) or not os.path.isdir(parent):
        return []
    removed, host = [], socket.gethostname()
    for name in sorted(os.listdir(parent)):
        if not name.startswith(prefix):
            continue
        path = os.path.join(parent, name)
        owner = _TMP_OWNER.match(name[len(prefix) :])
        if owner is None:
            logging.warning(
                "%s looks like the leftover of a killed conversion of %s (no owner recorded); "
                "delete it if no conversion to that destination is running.",
                path,
                dest,
            )
        elif owner.group(2) == host and not pid_alive(int(owner.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            logging.warning("Removed %s: the leftover of a killed write (pid %s).", path, owner[1])
            removed.append(path)
    return removed


def check_destination(dest: str, force: bool) -> None:
    """Raises DestinationExistsError when ``dest`` exists and ``force`` is False; removes the
    leftovers of killed writes to ``dest`` (:func:`clean_stale_tmp`)."""
    dest = str(as_path(dest))
    clean_stale_tmp(dest)
    exists = as_path(dest).exists() if is_remote(dest) else os.path.lexists(dest)
    if exists and not force:
        raise DestinationExistsError(
            f"destination {dest} already exists; pass --force to replace it (the old one is "
            "removed only after the new one is complete) or choose another path."
        )


def atomic_publish(write_fn: Callable[[str], None], dest: str, force: bool = False) -> str:
    """Runs ``write_fn(tmp_path)`` on a temporary sibling of ``dest``, then renames it into place.

    ``write_fn`` creates ``tmp_path`` (a file or a directory). With ``force`` an existing ``dest``
    is first renamed aside and deleted only after the new one is in place; on any failure the
    temporary output is removed and ``dest`` is left untouched. Returns the absolute ``dest``.
    A remote ``dest`` (gs://, ...) is written locally first, then uploaded (one object at a time:
    a file is replaced atomically, a directory is not).
    """
    dest = str(as_path(dest))
    check_destination(dest, force)
    if is_remote(dest):
        return _publish_remote(write_fn, dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    prefix = f"{_tmp_prefix(dest)}{os.getpid()}@{socket.gethostname()}-"
    tmp_root = tempfile.mkdtemp(prefix=prefix, dir=parent)
    tmp = os.path.join(tmp_root, "out")
    old = None
    try:
        write_fn(tmp)
        if os.path.lexists(dest):
            old = os.path.join(tmp_root, "old")
            os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            if old is not None:
                os.rename(old, dest)  # put the previous one back
            raise
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return dest


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _publish_remote(write_fn: Callable[[str], None], dest: str) -> str:
    with tempfile.TemporaryDirectory(prefix="nag_jax_upload-") as local:
        tmp = os.path.join(local, "out")
        write_fn(tmp)
        target = as_path(dest)
        if os.path.isdir(tmp):
            for root, _, names in os.walk(tmp):
                for name in names:
                    src = os.path.join(root, name)
                    out = target / os.path.relpath(src, tmp)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(_read_bytes(src))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_read_bytes(tmp))
    return dest


def write_json(path: str, obj, *, force: bool = False) -> str:
    """Writes ``obj`` as indented, key-sorted JSON at ``path`` through :func:`atomic_publish`."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)

    return atomic_publish(write, path, force)


# ----------------------------------------------------------------------------------------------
# Writing


def save_tree(directory: str, tree: Mapping) -> None:
    """Writes a params tree as a bare Orbax (StandardSave) checkpoint at a NEW ``directory``
    (a building block for a write function of :func:`atomic_publish`)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(as_path(directory)), tree)
        ckptr.wait_until_finished()


def save_params(directory: str, params: Mapping, metadata: Mapping, *, force: bool = False):
    """Writes ``params`` (nested dict of arrays) + JSON ``metadata`` as an Orbax composite
    checkpoint at ``directory`` (items ``params`` and ``metadata``) with its sha256 manifest,
    atomically; refuses an existing directory unless ``force``."""
    import orbax.checkpoint as ocp

    meta = dict(metadata)
    meta.setdefault("format_version", FORMAT_VERSION)

    def write(tmp):
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
            ckpt.save(
                tmp,
                ocp.args.Composite(
                    **{
                        PARAMS_ITEM: ocp.args.StandardSave(params),
                        METADATA_ITEM: ocp.args.JsonSave(meta),
                    }
                ),
            )
        manifest.write(tmp)  # before the publish: the checkpoint never exists without it

    atomic_publish(write, directory, force)


# ----------------------------------------------------------------------------------------------
# Reading


def _is_tree(directory) -> bool:
    """True for a directory holding one Orbax tree (StandardSave / PyTreeSave)."""
    return (as_path(directory) / "_METADATA").is_file()


def _latest_step(directory, item: str) -> str | None:
    root = as_path(directory)
    steps = [d.name for d in root.iterdir() if d.name.isdigit() and (d / item).is_dir()]
    return max(steps, key=int) if steps else None


def resolve(path: str, item: str = "ema_params") -> tuple[str, str]:
    """-> (directory of the params tree, layout name) for any layout :func:`load_params` reads.

    ``item``: which tree of a training checkpoint ("ema_params" or "params"). Raises
    FileNotFoundError for a missing path and CheckpointError for a directory of no known layout.
    Local paths are made absolute; remote URIs (gs://, ...) are kept (``nag_jax.storage.paths``).
    """
    if item not in TRAINING_ITEMS:
        raise CheckpointError(f"item={item!r}; expected one of {TRAINING_ITEMS}.")
    root = as_path(path)
    path = str(root)
    if not root.exists():
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist; convert a release first with "
            "`python -m nag_jax.convert to-orbax SRC DEST --family SiT` (or --family DiT) or point "
            "at a training workdir (or its checkpoints/ directory)."
        )
    params_dir = root / PARAMS_ITEM
    if params_dir.is_dir() and (root / METADATA_ITEM).is_dir():
        return str(params_dir), "converted"
    if (root / item).is_dir() and _is_tree(root / item):
        return str(root / item), "training"  # one step of a training checkpoint
    for base in (root, root / "checkpoints"):
        if base.is_dir() and (step := _latest_step(base, item)) is not None:
            return str(base / step / item), "training"
    if params_dir.is_dir() and _is_tree(params_dir):
        return str(params_dir), "params_dir"
    if root.is_dir() and _is_tree(root):
        return path, "tree"
    found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "(a file)"
    raise CheckpointError(
        f"{path} is not a converted checkpoint (params/ + metadata/), a training checkpoints/ "
        f"directory (<step>/{item}/) or an Orbax params tree (found: {found}); create one with "
        "`python -m nag_jax.convert to-orbax SRC DEST --family SiT`."
    )


def params_tree_metadata(path: str):
    """Nested dict of Orbax ArrayMetadata (shape, dtype) of the params at ``path`` (any layout of
    :func:`load_params`); no arrays are read."""
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().metadata(resolve(path)[0])
    tree = getattr(tree, "item_metadata", tree)
    return getattr(tree, "tree", tree)


def read_metadata(path: str) -> dict:
    """The JSON metadata of a converted checkpoint (cheap: no arrays are read); {} for layouts
    without metadata."""
    tree_dir, layout = resolve(path)
    meta_file = as_path(tree_dir).parent / METADATA_ITEM / METADATA_ITEM
    if layout != "converted" or not meta_file.exists():
        return {}
    return json.loads(meta_file.read_text())


def verify(path: str, item: str = "ema_params") -> bool:
    """Checks the weights at ``path`` (any layout of :func:`load_params`) against their sha256
    manifest: True when verified, False when there is none (a remote store, an older version, a
    tree of other tools: :func:`load_params` then checks the values for NaN/Inf). Raises
    ``manifest.CorruptCheckpointError`` naming the first file that fails, or a malformed
    manifest. Only the files of the tree read are hashed (``<step>/ema_params/`` of a training
    step, ``params/`` + ``metadata/`` of a converted checkpoint)."""
    tree_dir, layout = resolve(path, item)
    if is_remote(tree_dir):
        return False
    if os.path.exists(os.path.join(tree_dir, manifest.MANIFEST_FILE)):
        return manifest.verify(tree_dir)
    parent, name = os.path.split(tree_dir.rstrip("/"))
    if os.path.exists(os.path.join(parent, manifest.MANIFEST_FILE)):
        under = (name, METADATA_ITEM) if layout == "converted" else (name,)
        return manifest.verify(parent, under=under)
    return False


def load_params(path: str, *, target=None, item: str = "ema_params") -> tuple[dict, dict]:
    """Reads model params from any layout of the project -> ``(params, metadata)``.

    Args:
      path: a converted checkpoint, a training workdir or its ``checkpoints/`` directory, a
        directory with a ``params/`` tree, or a bare Orbax params tree (see the module doc).
      target: optional abstract tree (``jax.ShapeDtypeStruct`` leaves with shardings) to restore
        sharded on devices; by default the params are restored onto the host CPU and returned as
        (read-only) numpy arrays, also on GPU/TPU machines.
      item: for a training checkpoint, "ema_params" (default: the weights to sample with) or
        "params".
    Returns:
      params: nested dict (a ``{"params": tree}`` wrapper is removed).
      metadata: the converter's metadata dict; {} for layouts that carry none.
    Raises:
      manifest.CorruptCheckpointError (one line naming the file): a file fails the manifest, the
      manifest is malformed, or (no manifest) the arrays are unreadable or hold NaN/Inf.
    """
    import jax
    import orbax.checkpoint as ocp

    tree_dir, _ = resolve(path, item)
    verified = verify(path, item)
    metadata = read_metadata(path)
    abstract = params_tree_metadata(tree_dir)
    wrapped = isinstance(abstract, Mapping) and set(abstract) == {PARAMS_ITEM}
    host = target is None
    if host:
        cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), abstract
        )
    elif wrapped:
        target = {PARAMS_ITEM: target}
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(tree_dir, target)
    except Exception as e:  # noqa: BLE001 - TensorStore / JSON errors of damaged files
        if host and not verified and isinstance(e, (ValueError, OSError, RuntimeError)):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise manifest.CorruptCheckpointError(
                f"{tree_dir}: the weights are unreadable ({type(e).__name__}: {first})"
            ) from None
        raise
    if wrapped:
        tree = tree[PARAMS_ITEM]
    params = jax.tree.map(np.asarray, dict(tree)) if host else dict(tree)
    if not verified:
        manifest.check_finite(params, source=tree_dir)
    return params, metadata


# ----------------------------------------------------------------------------------------------
# Checking a tree against the model's


def param_mismatch(expected: Mapping, found: Mapping) -> list[str]:
    """Human-readable differences between two param trees' paths and shapes (nested or
    '/'-flattened dicts; leaves are arrays, ShapeDtypeStructs or Orbax ArrayMetadata)."""
    exp = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(found, sep="/").items()}
    out = [f"missing in checkpoint: {k} {exp[k]}" for k in sorted(set(exp) - set(got))]
    out += [f"unexpected in checkpoint: {k} {got[k]}" for k in sorted(set(got) - set(exp))]
    out += [
        f"shape of {k}: checkpoint {got[k]} vs model {exp[k]}"
        for k in sorted(set(exp) & set(got))
        if exp[k] != got[k]
    ]
    return out


def check_params_match(
    expected: Mapping,
    found: Mapping,
    *,
    source: str,
    hint: str = "Use the config that wrote it, or a new workdir.",
    error: type[Exception] = ValueError,
) -> None:
    """Raises ``error`` naming every mismatched param when ``found`` does not fit ``expected``."""
    diffs = param_mismatch(expected, found)
    if diffs:
        shown = "\n  ".join(diffs[:30])
        more = f"\n  ... {len(diffs) - 30} more" if len(diffs) > 30 else ""
        raise error(
            f"The checkpoint at {source} was written for a different model ({len(diffs)} "
            f"mismatched params):\n  {shown}{more}\n{hint}"
        )
