"""Entry point: ``nag-jax --config=configs/NAME.py --workdir=DIR`` (or ``python -m nag_jax.main``).

``config.mode`` picks the job (nag_jax.config.schema.MODES); ``--config.a.b=value`` overrides any
field (ml_collections); the config is checked against the one schema (nag_jax.config.schema)
before the job starts, so a bad value fails here, naming the key and its choices:

    train           train or fine-tune (nag_jax.training.loop)
    demo            the built-in demo: NAG fine-tune of the shipped base, none/CFG/NAG/CFG+NAG
    sample          sample a grid + .npz from converted or trained weights (nag_jax.jobs.sample)
    eval            sample N images and score them (nag_jax.jobs.eval)
    lab             the noise-shift lab report (nag_jax.analysis.lab)
    study           the demo's fuller NAG study (nag_jax.jobs.study)
    noise_shift     noise-shift diagnosis of any checkpoint, Fig. 4 (nag_jax.jobs.noise_shift)
    encode_latents  encode an image dataset to SD-VAE latent shards (nag_jax.jobs.encode_latents)
    sweep           guidance grid (s_cfg, w_nag, DoG, intervals), one compiled sampler
    compile         AOT-compile train step + sampler for a pod: memory, FLOPs (jobs.compile)

Each job module is imported only when its mode runs, so the core needs none of the others'
dependencies (TensorFlow, torch).

``--config=configs/NAME.py`` is read from the current directory when it is there, else from the
configs packaged with nag_jax (``nag_jax.configs``: the repository's ``configs/``), so an
installed package runs the README's commands from any directory.

User errors (a missing config file, an unknown override, a bad mode or value, a missing
checkpoint, any ``nag_jax.errors.UserError``) print one ``error: ...`` line with the fix and exit
with status 2, before JAX starts where they can be found before; ``--verbose`` shows their
traceback and the full config. Real bugs keep their traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nag_jax.config import schema
from nag_jax.errors import RunStopped, UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Tracebacks for user errors and the full config in the log."
)

USAGE_EXIT = 2  # the status of every user error (as argparse)


def run(config, workdir: str):
    """Validates ``config`` (nag_jax.config.schema) and runs ``config.mode``'s job
    ``nag_jax.jobs.<mode>.run(config, workdir)``."""
    schema.validate(config)
    return importlib.import_module(schema.MODES[config.mode]).run(config, workdir)


class _QuietLibraries:
    """Drops INFO records of orbax / grain internals (and JAX's backend probing) so progress
    lines stay readable; their warnings and errors pass."""

    NOISY = ("/orbax/", "/grain/", "/etils/", "/jax/_src/xla_bridge.py")

    def filter(self, record) -> bool:
        return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


# ----------------------------------------------------------------------------------------------
# Config files: the current directory, else the packaged copy


def packaged_configs_dir() -> str | None:
    """The configs shipped with nag_jax: ``nag_jax.configs`` of an installed package, else the
    ``configs/`` beside the ``nag_jax`` package of a checkout; None if neither exists."""
    import importlib.util

    spec = importlib.util.find_spec("nag_jax.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    return here if os.path.isdir(here) else None


def resolve_config_path(value: str) -> str:
    """``--config`` value -> an existing file (keeping a ``:variant`` suffix). ``configs/NAME.py``
    (or ``NAME.py``, ``NAME``) missing from the current directory is taken from the packaged
    configs. Raises UserError naming the packaged configs."""
    path, sep, variant = value.partition(":")
    if os.path.isfile(path):
        return value
    packaged = packaged_configs_dir()
    name = os.path.basename(path)
    name = name if name.endswith(".py") else name + ".py"
    if packaged and os.path.dirname(path) in ("", "configs"):
        candidate = os.path.join(packaged, name)
        if os.path.isfile(candidate):
            return candidate + sep + variant
    names = sorted(f[:-3] for f in os.listdir(packaged) if f.endswith(".py")) if packaged else []
    raise UserError(
        f"config file {path!r} not found (from {os.getcwd()}); give the path of a config file, "
        f"or a packaged one: --config=configs/NAME.py with NAME in {names}"
    )


def _with_resolved_config(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_path(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


# ----------------------------------------------------------------------------------------------
# Flag errors as one line


def _flag_error_message(e: Exception, argv: list[str]) -> str:
    """One line for an exception raised while parsing the flags (config file + overrides)."""
    text = str(e).strip()
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: unknown key in an override
        text = text.strip("'\"").replace("\\'", "'").replace("\\n", "\n")
        lines = [s.strip().strip("'\"") for s in text.splitlines() if s.strip()]
        key = lines[0].strip("'\"") if lines else "?"
        given = [a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        hint = next((s for s in lines[1:] if s.lower().startswith("did you mean")), "")
        where = given[0] if given else f"--config.…{key}"
        fix = f" {hint}" if hint else " See the keys in nag_jax/schema.py."
        return f"unknown config override {where}: no key {key!r}.{fix}"
    if isinstance(e, flags.Error):
        first = text.splitlines()[0] if text else type(e).__name__
        if "Error whilst parsing config file" in text:  # the config file raised: its last line
            last = [s for s in text.splitlines() if s.strip()][-1].strip()
            return f"{first} {last} (--verbose: the traceback)"
        if first.startswith("Unknown command line flag"):
            return f"{first}; flags are --config, --workdir, --verbose and --config.KEY=VALUE"
        return first
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''} (--verbose: the traceback)"


def _error_exit(message: str, status: int = USAGE_EXIT) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ----------------------------------------------------------------------------------------------
# Checks before JAX starts


# Paths that must exist when given (local ones; remote URIs are checked by their readers).
_INPUT_PATHS = ("vae.path", "eval.inception_path", "eval.samples")


def check_inputs(config, workdir: str | None) -> None:
    """Everything checkable before JAX starts: the workdir flag, the schema (values, mode), and
    that the input paths given exist. Raises UserError (ConfigError, FileNotFoundError-like
    CheckpointError) with the fix."""
    from nag_jax.storage import paths

    if not workdir:
        raise UserError("--workdir=DIR is required (checkpoints, samples and logs go there).")
    schema.validate(config)
    weights_path = config.model.weights
    if weights_path and not paths.is_remote(weights_path):
        from nag_jax.storage import weights

        try:
            weights.resolve(weights_path)
        except FileNotFoundError as e:
            raise UserError(f"config.model.weights: {e}") from None
    for dotted in _INPUT_PATHS:
        section, key = dotted.split(".")
        value = config[section][key]
        if value and not paths.is_remote(value) and not os.path.exists(os.path.expanduser(value)):
            raise UserError(
                f"config.{dotted}={value!r} does not exist (from {os.getcwd()}); fix the path or "
                f"unset it (--config.{dotted}=None)."
            )


def check_devices(config, devices) -> None:
    """A config meant for accelerators (bf16 / fp16 compute: the releases' FSDP configs) on a
    host whose JAX sees only CPUs is almost always a CPU jaxlib installed over the accelerator
    build: UserError, unless ``config.parallel.allow_cpu``."""
    if config.parallel.allow_cpu or config.model.dtype == "float32" or config.mode == "compile":
        return
    if all(d.platform == "cpu" for d in devices):
        raise UserError(
            f"config.model.dtype={config.model.dtype!r} is an accelerator config, but JAX sees "
            f"only CPU devices ({len(devices)} x cpu): install the accelerator build "
            "(pip install -e '.[cuda12]' or '.[tpu]', see the README) or pass "
            "--config.parallel.allow_cpu=True to run on the CPU anyway."
        )


def _user_errors():
    """The exception types reported as one line: the project's UserError, and a missing file
    (the project's FileNotFoundErrors name the path and the fix)."""
    return (UserError, FileNotFoundError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        if config is None:
            raise UserError("--config=configs/NAME.py is required (see configs/).")
        check_inputs(config, workdir)
        import jax

        from nag_jax import parallel

        logging.get_absl_handler().addFilter(_QuietLibraries())
        # Multi-host: jax.distributed must be initialised before any backend call.
        parallel.maybe_initialize_distributed()
        devices = jax.devices()
        check_devices(config, devices)
        logging.info(
            "nag_jax %s: JAX %s on %d x %s (%d process%s)",
            config.mode,
            jax.__version__,
            len(devices),
            devices[0].device_kind,
            jax.process_count(),
            "" if jax.process_count() == 1 else "es",
        )
        if _VERBOSE.value:
            logging.info("Config (mode=%s):\n%s", config.mode, config)
        else:
            logging.info(
                "Config: model %s, workdir %s (--verbose prints every key)",
                config.model.name,
                workdir,
            )
        run(config, workdir)
    except _user_errors() as e:
        if _VERBOSE.value:
            raise
        _error_exit(str(e))
    except RunStopped as e:  # a complete one-line reason (lock, failed save, corrupt checkpoints)
        if _VERBOSE.value:
            raise
        logging.error("%s", e)
        _error_exit(str(e), status=1)


def cli(argv: list[str] | None = None) -> None:
    """The ``nag-jax`` console script: resolves ``--config``, parses the flags (config file and
    overrides) with user errors as one line, then runs ``main`` under absl."""
    argv = list(sys.argv if argv is None else argv)
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv)
    app.define_help_flags()  # --help / --helpfull (app.run defines them too late for us)
    try:
        argv = _with_resolved_config(argv)
        rest = flags.FLAGS(argv)
        _ = _CONFIG.value  # a config file that failed to load raises here
    except UserError as e:
        if verbose:
            raise
        _error_exit(str(e))
    except Exception as e:  # noqa: BLE001 - flag parsing only sees the user's input
        if verbose:
            raise
        _error_exit(_flag_error_message(e, argv))
    app.run(main, argv=argv, flags_parser=lambda _: rest)


if __name__ == "__main__":
    cli()
