"""The run's config in its workdir: ``workdir/config.json`` written once, checked on every start.

A resume with a config of another model (``MODEL_KEYS`` differ) is refused in one line; other
changed keys are logged as dotted ``key: old -> new`` lines, a changed global batch size with its
own warning.
"""

from __future__ import annotations

import json

import jax
from absl import logging

from nag_jax.config.schema import ConfigError
from nag_jax.storage.paths import as_path
from nag_jax.storage.weights import write_json

CONFIG_FILE = "config.json"
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

    A workdir that holds another run's config (a different model) raises ConfigError (one line)
    naming the differing fields; other differences (num_steps, lr, ...) are allowed and logged
    by dotted key (old -> new); a changed global batch size gets its own warning.
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
            raise ConfigError(
                f"workdir {workdir} holds another run (its {CONFIG_FILE} describes a different "
                f"model: {'; '.join(diffs)}); use a new --workdir, or the config that wrote it."
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
