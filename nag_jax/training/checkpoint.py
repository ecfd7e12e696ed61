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

Sampling, evaluation and fine-tuning read these checkpoints' params (latest EMA by default)
through the one weights loader, ``nag_jax.weights.load_params``.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from nag_jax.training.state import TrainState
from nag_jax.weights import check_params_match, write_json

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
        write_json(path, new)
