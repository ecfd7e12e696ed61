"""Orbax checkpoints of the train state, the run's config and the data-iterator position.

Layout of a workdir:
  workdir/config.json                 the run's config (written once; checked on every start)
  workdir/checkpoints/<step>/         one composite Orbax checkpoint per saved step, items
      params, ema_params, opt_state   float32 trees (sharded arrays restore to their shardings)
      meta                            {"step": int32, "rng": uint32[2]}
      data                            grain iterator state, one JSON per process
Writes are async and atomic (Orbax writes a tmp dir and renames it when complete), so a killed
process leaves the previous complete checkpoint intact; unfinished tmp dirs are cleaned on start.
Retention: the last ``keep`` plus every ``keep_every``-th step (Orbax preservation policies).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from nag_jax.parallel import path_str
from nag_jax.training.state import TrainState

CONFIG_FILE = "config.json"
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
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_handlers=handlers
    )


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iter=None, *, force=False) -> bool:
    """Starts an (async) save of ``state`` at ``state.step``; returns whether it saves."""
    step = int(jax.device_get(state.step))
    items = dict(
        params=ocp.args.StandardSave(state.params),
        ema_params=ocp.args.StandardSave(state.ema_params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
    )
    if data_iter is not None and hasattr(data_iter, "get_state"):
        import grain

        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _flat_shapes(tree) -> dict[str, tuple]:
    return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def param_mismatch(expected, found) -> list[str]:
    """Human-readable differences between two param trees' paths and shapes."""
    exp, got = _flat_shapes(expected), _flat_shapes(found)
    out = [f"missing in checkpoint: {k} {exp[k]}" for k in sorted(set(exp) - set(got))]
    out += [f"unexpected in checkpoint: {k} {got[k]}" for k in sorted(set(got) - set(exp))]
    out += [
        f"shape of {k}: checkpoint {got[k]} vs model {exp[k]}"
        for k in sorted(set(exp) & set(got))
        if exp[k] != got[k]
    ]
    return out


def check_params_match(
    expected, found, *, source: str, hint: str = "Use the config that wrote it, or a new workdir."
) -> None:
    """Raises ValueError naming mismatched params when ``found`` does not fit ``expected``."""
    diffs = param_mismatch(expected, found)
    if diffs:
        shown = "\n  ".join(diffs[:30])
        more = f"\n  ... {len(diffs) - 30} more" if len(diffs) > 30 else ""
        raise ValueError(
            f"The checkpoint at {source} was written for a different model ({len(diffs)} "
            f"mismatched params):\n  {shown}{more}\n{hint}"
        )


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
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {mngr.directory}.")
    meta = mngr.item_metadata(step)
    saved_params = meta["params"]
    saved_params = getattr(saved_params, "tree", saved_params)
    check_params_match(state_like.params, saved_params, source=f"{mngr.directory}/{step}")
    items = dict(
        params=ocp.args.StandardRestore(_abstract(state_like.params)),
        ema_params=ocp.args.StandardRestore(_abstract(state_like.ema_params)),
        opt_state=ocp.args.StandardRestore(_abstract(state_like.opt_state)),
        meta=ocp.args.StandardRestore(_abstract({"step": state_like.step, "rng": state_like.rng})),
    )
    if data_iter is not None and hasattr(data_iter, "set_state") and _has_item(mngr, step, "data"):
        import grain

        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    r = mngr.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint step %d from %s", step, mngr.directory)
    return TrainState(
        step=r["meta"]["step"],
        params=r["params"],
        ema_params=r["ema_params"],
        opt_state=r["opt_state"],
        rng=r["meta"]["rng"],
    )


def _has_item(mngr, step, name) -> bool:
    return os.path.isdir(os.path.join(str(mngr.directory), str(step), name))


# ---------------------------------------------------------------------------- run config


def config_to_dict(config) -> dict:
    """ConfigDict -> JSON-able dict (unknown objects become their repr)."""
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def check_or_write_config(config, workdir: str) -> None:
    """Writes workdir/config.json, or checks an existing one describes the same model.

    A workdir that holds another run's config (a different model) raises ValueError naming the
    differing fields; other differences (num_steps, lr, ...) are allowed and logged.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    new = config_to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
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
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            logging.warning("Resuming %s with changed config sections: %s", workdir, changed)
        return
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(new, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def load_params(path: str):
    """Reads model params as numpy arrays from any checkpoint layout of the project.

    The one loader behind fine-tuning (``train.init_from``), sampling and evaluation. Accepts:
    - a converted checkpoint (``python -m nag_jax.convert to-orbax``: ``params`` + ``metadata``
      items), read through ``nag_jax.convert.common.load_params``;
    - a training ``checkpoints/`` directory of this module (its latest step's EMA params);
    - a bare params tree or a ``{"params": tree}`` wrapper saved with Orbax.
    """
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist; convert a release first with "
            "`python -m nag_jax.convert to-orbax SRC DEST --family SiT|DiT` or point at a training "
            "workdir's checkpoints/ directory."
        )
    if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(
        os.path.join(path, "metadata")
    ):
        from nag_jax.convert.common import load_params as load_converted

        return load_converted(path)[0]
    steps = [d for d in os.listdir(path) if d.isdigit()]
    if steps and os.path.isdir(os.path.join(path, max(steps, key=int), "ema_params")):
        path = os.path.join(path, max(steps, key=int), "ema_params")
    # Restore onto the host CPU with an explicit target: a tree saved on another device topology
    # (e.g. 8 devices, read on 1) cannot be restored with the shardings it was saved with.
    from nag_jax.convert.common import params_tree_metadata

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), params_tree_metadata(path)
    )
    tree = ocp.StandardCheckpointer().restore(path, target)
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    return jax.tree.map(np.asarray, tree)
