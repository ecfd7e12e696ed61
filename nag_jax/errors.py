"""The one base class of user-facing errors: bad input a user can fix (a path, a config value, a
checkpoint of the wrong kind), as opposed to a bug in the code.

``nag-jax`` (nag_jax.main) and ``nag-convert`` (nag_jax.convert) print such an error as one
``error: ...`` line that names the value and the fix, with exit status 2, and no traceback
(``--verbose`` shows it). Anything else keeps its traceback. Raise a subclass from jobs:
``nag_jax.storage.weights.CheckpointError`` (weights and conversion),
:class:`ConfigError` (config values; also ``nag_jax.config.schema.ConfigError``),
:class:`MissingDependencyError` (an optional dependency, naming its extra).
:class:`RunStopped` is the other one-line kind: a run that cannot go on (exit status 1).

No imports here: every module may depend on this one.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message names the value and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that does not fit: not allowed by the schema (nag_jax.config.schema), or
    not by the job's input (weights of another model, no weights or VAE where needed); the
    message names the key, the value and the fix. A ValueError, so ``except ValueError`` still
    catches it. Defined here so the library raises it without importing the schema."""


class RunStopped(RuntimeError):
    """A job stopped for a reason its one-line message states completely (path, cause, fix): the
    workdir is locked by another job, a save failed (disk full, read-only), no checkpoint step
    restores. ``nag_jax.main`` prints it as one ``error:`` line with exit status 1 (the input was
    fine; the run could not go on), no traceback unless ``--verbose``."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, what: str, module: str, extra: str, hint: str = ""):
        super().__init__(
            f"{what} needs {module}, which is not installed: pip install 'nag_jax[{extra}]'"
            + (f" ({hint})" if hint else "")
        )
        self.module, self.extra = module, extra


def require(module: str, *, what: str, extra: str, hint: str = ""):
    """``importlib.import_module(module)``, or MissingDependencyError naming ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or module.split(".")[0] != e.name.split(".")[0]:
            raise  # the module exists but one of ITS imports is missing: a real error
        raise MissingDependencyError(what, module.split(".")[0], extra, hint) from None
