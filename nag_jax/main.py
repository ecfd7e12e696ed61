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

import sys

MIN_PYTHON = (3, 11)  # jax, jaxlib, flax, orbax and grain at the pinned versions need it


def require_python(version_info=None) -> None:
    """Exits with one ``error:`` line (status 2) on a Python older than MIN_PYTHON, before any
    dependency is imported (they would fail with a traceback, or pip already refused)."""
    v = tuple(sys.version_info if version_info is None else version_info)
    if v[:2] < MIN_PYTHON:
        print(
            f"error: nag_jax needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (jax, flax, orbax "
            f"and grain require it); this is Python {v[0]}.{v[1]} ({sys.executable}). Create the "
            "environment with python3.11 or newer: python3.11 -m venv .venv (README, Install).",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)


require_python()

import importlib  # noqa: E402 - after the Python check, which must run first
import os  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nag_jax.config import schema  # noqa: E402
from nag_jax.errors import RunStopped, UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Tracebacks for user errors and the full config in the log."
)

USAGE_EXIT = 2  # the status of every user error (as argparse)


def run(config, workdir: str):
    """Completes and validates ``config`` once (nag_jax.config.schema.resolve) and runs
    ``config.mode``'s job ``nag_jax.jobs.<mode>.run(config, workdir)`` with it."""
    config = schema.resolve(config)
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


def split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--config.KEY=None`` (or ``--config.KEY=``) for an optional key (schema default None:
    ``schema.optional_keys``) -> (argv without it, [KEY, ...]) to set to None after parsing
    (ml_collections would read the text "None" as a path, or fail to parse it as a number).
    Other keys keep their argument, so unknown keys and required values get their usual error."""
    optional = schema.optional_keys()
    out, keys = [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        key = name[len("--config.") :] if name.startswith("--config.") else None
        if eq and key in optional and value.strip() in ("None", "none", ""):
            keys.append(key)
        else:
            out.append(arg)
    return out, keys


def set_none(config, keys: list[str]) -> None:
    """Sets each dotted key of ``config`` to None."""
    for key in keys:
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = None


def _with_resolved_config(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_path(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


# ----------------------------------------------------------------------------------------------
# --help: the project's own usage first

HELP_ARGS = ("-h", "--help", "-help", "--h", "-?", "--helpshort")

COMMON_COMMANDS = """\
  # the built-in demo: NAG fine-tune + none / CFG / NAG / CFG+NAG table (CPU, minutes)
  nag-jax --config=configs/demo.py --workdir=runs/demo
  # convert a released checkpoint (PyTorch .pt, or hf://facebook/DiT-XL-2-256) to Orbax
  nag-convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
  # sample a grid + .npz from it
  nag-jax --config=configs/sample_sit_xl.py --workdir=runs/sample \\
      --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema
  # NAG fine-tune (one host, a TPU pod: launch/tpu_pod.sh, SLURM GPUs: launch/slurm_gpu.sh)
  nag-jax --config=configs/sit_xl_nag_finetune.py --workdir=runs/sit_xl_nag \\
      --config.model.weights=ckpt/sit_xl2_256 --config.data.data_dir=data/in256_latents
  # FID-50k of a checkpoint
  nag-jax --config=configs/eval_sit_xl.py --workdir=runs/eval \\
      --config.model.weights=runs/sit_xl_nag/checkpoints --config.vae.path=ckpt/sd-vae-ft-ema \\
      --config.eval.inception_path=fid.npz --config.eval.reference=VIRTUAL_imagenet256_labeled.npz
"""


def _mode_lines() -> list[str]:
    """The modes table of this module's docstring (the one description of each mode)."""
    lines = []
    for line in (__doc__ or "").splitlines():
        words = line.split()
        if line.startswith("    ") and words and words[0] in schema.MODES:
            lines.append("  " + line.strip())
    return lines


def _config_lines(width: int = 100) -> list[str]:
    """``configs/NAME.py``: the first line of each packaged config's docstring."""
    import ast

    folder = packaged_configs_dir()
    if not folder:
        return []
    names = sorted(f for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")
    pad = max(len(n) for n in names) + 2 if names else 0
    out = []
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
        except (OSError, SyntaxError):
            doc = ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        line = f"  {name:<{pad}}{first}"
        out.append(line if len(line) <= width else line[: width - 3] + "...")
    return out


def usage() -> str:
    """``nag-jax --help``: usage, the common commands, the modes and the packaged configs."""
    return "\n".join(
        [
            "usage: nag-jax --config=configs/NAME.py[:VARIANT] --workdir=DIR "
            "[--config.KEY=VALUE ...] [--verbose]",
            "       (python -m nag_jax.main is the same program)",
            "",
            "NAG (Noise Awareness Guidance) for DiT and SiT in JAX: train, fine-tune, sample and "
            "evaluate;",
            "the config's `mode` picks the job. One program for a CPU, GPUs or a TPU pod.",
            "",
            "Common commands:",
            COMMON_COMMANDS.rstrip("\n"),
            "",
            "Modes (config.mode):",
            *_mode_lines(),
            "",
            "Configs (--config=configs/NAME.py: the current directory's, else the packaged ones):",
            *_config_lines(),
            "",
            "Flags:",
            "  --config=FILE[:VARIANT]  an ml_collections config file (its docstring has its "
            "commands)",
            "  --config.KEY=VALUE       override any key (e.g. --config.sample.cfg_scale=1.5); "
            "every key,",
            "                           its default and its check: nag_jax/config/schema.py",
            "  --workdir=DIR            checkpoints, samples and logs (local or gs://)",
            "  --verbose                tracebacks for user errors and the full config in the log",
            "  --helpfull               every absl flag (logging, JAX)",
            "",
            "Checkpoint conversion: nag-convert --help. Documentation: README.md and docs/.",
        ]
    )


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
        fix = f" {hint}" if hint else " See the keys in nag_jax/config/schema.py."
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
_READS_DATA = ("train", "noise_shift")  # the modes that read config.data's dataset


def check_inputs(config, workdir: str | None) -> None:
    """Everything checkable before JAX starts: the workdir flag, the schema (values, mode), and
    that the input paths given exist. Raises UserError (ConfigError, FileNotFoundError-like
    CheckpointError) with the fix."""
    from nag_jax.storage import paths

    if not workdir:
        raise UserError("--workdir=DIR is required (checkpoints, samples and logs go there).")
    check_workdir(workdir)
    schema.validate(config)
    weights_path = config.model.weights
    if weights_path and not paths.is_remote(weights_path):
        from nag_jax.storage import weights

        try:
            weights.resolve(weights_path)
        except FileNotFoundError as e:
            raise UserError(f"config.model.weights: {e}") from None
    if config.mode in _READS_DATA and config.data.name == "latents" and config.data.data_dir:
        from nag_jax.data import latents

        latents.check_readable(config.data.data_dir)  # gs:// latents: the copy command
    for dotted in _INPUT_PATHS:
        section, key = dotted.split(".")
        value = config[section][key]
        if value and not paths.is_remote(value) and not os.path.exists(os.path.expanduser(value)):
            raise UserError(
                f"config.{dotted}={value!r} does not exist (from {os.getcwd()}); fix the path or "
                f"unset it (--config.{dotted}=None)."
            )


def check_workdir(workdir: str) -> None:
    """The workdir check of every mode, before JAX starts, creating nothing: a local path that
    is a file or a dangling symlink (``nag_jax.storage.workdir.check_workdir``'s messages, the
    one home of the check, which each job runs again when it creates the directory), or one
    that cannot be created (a parent that is a file, no write permission) is one line. Remote
    URIs are left to the job (no bucket round trip here)."""
    from nag_jax.storage import paths
    from nag_jax.storage import workdir as workdir_lib

    if paths.is_remote(workdir):
        return
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.isdir(path):
        return
    if os.path.lexists(path):  # a file or a dangling link: check_workdir raises before creating
        try:
            workdir_lib.check_workdir(path)
        except workdir_lib.WorkdirError as e:
            raise UserError(str(e)) from None
        return
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        reason = f"{parent} is a file, not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        reason = f"{parent} is not writable"
    else:
        return
    raise UserError(f"--workdir={workdir} cannot be created: {reason}; choose another --workdir.")


def check_devices(config, devices) -> None:
    """A config meant for accelerators (bf16 / fp16 compute: the releases' FSDP configs) on a
    host whose JAX sees only CPUs is almost always a CPU jaxlib installed over the accelerator
    build: UserError, unless ``config.parallel.allow_cpu``."""
    if config.get("mode") == "compile":  # compiling for a pod from a CPU host is the point
        return
    if config.parallel.allow_cpu or config.model.dtype == "float32":
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


def _positional_error(extra: list[str]) -> str:
    return (
        f"unexpected argument {extra[0]!r}: nag-jax takes only flags "
        "(--config=configs/NAME.py --workdir=DIR --config.KEY=VALUE); see nag-jax --help"
    )


def main(argv):
    if len(argv) > 1:
        _error_exit(_positional_error(argv[1:]))
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
            from nag_jax.training import save_errors

            save_errors.QUIET.verbose = True  # Orbax's tracebacks of a failed save come back
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


# ----------------------------------------------------------------------------------------------
# Multi-process jobs: a lost peer in one line


def _multiprocess() -> bool:
    from nag_jax import parallel  # jax is imported, not started

    return parallel.multiprocess_env()


SUPERVISED = "NAG_JAX_SUPERVISED"
# The distributed runtime's own report of a lost process (it then aborts with a native stack).
_LOST_PEER = (
    "Polled an error from coordination service",
    "Use error polling to propagate the following error",
    "stopped sending heartbeats",
    "Terminating process because the JAX distributed service detected fatal errors",
)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervising parent dies (kill -9 of the process a
    scheduler started must not leave the job running)."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _lost_tasks(lines: list[str]) -> str:
    """ ", process(es) 1 stopped sending heartbeats" from the runtime's report, if it names them
    (the process ids follow the line "The following tasks are unhealthy ...")."""
    for i, line in enumerate(lines):
        if "tasks are unhealthy" in line and i + 1 < len(lines):
            ids = lines[i + 1].strip()
            if ids.replace(",", "").replace(" ", "").isdigit():
                return f"; process(es) {ids} stopped sending heartbeats"
    return ""


def supervise(argv: list[str]) -> int:
    """Runs this job as a child process and forwards its output, so that a process that loses a
    peer (killed, crashed: JAX's distributed runtime then aborts it with a page of native stack,
    after the heartbeat timeout) ends with ONE line and exit status 1 instead. SIGTERM is passed
    on to the child (a terminal's Ctrl-C reaches it directly); the child dies with this process
    (kill -9 included). Only for multi-process jobs without ``--verbose``
    (nag_jax.parallel.multiprocess_env); the child's stdout and stderr come out on stdout."""
    import signal
    import subprocess

    env = dict(os.environ, **{SUPERVISED: "1"})
    child = subprocess.Popen(
        [sys.executable, "-m", "nag_jax.main", *argv[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent,
    )
    # The child shares the process group: a terminal's Ctrl-C reaches it directly (forwarding it
    # too would be a second Ctrl-C: an abort); SIGTERM is forwarded (a second one is harmless).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda s, _f: child.send_signal(s))
    lost, held = None, []
    for line in child.stdout:
        if lost is None and any(m in line for m in _LOST_PEER):
            lost = line.strip()
        if lost is None:
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            held.append(line)
    rc = child.wait()
    if lost is not None and rc != 0:
        print(
            "error: this process stopped: the distributed runtime lost another process (killed, "
            f"crashed or unreachable{_lost_tasks(held)}). The last committed checkpoint is "
            "intact; restart every process to resume.",
            file=sys.stderr,
            flush=True,
        )
        return 1
    sys.stdout.writelines(held)
    return rc if rc >= 0 else 128 - rc


def cli(argv: list[str] | None = None) -> None:
    """The ``nag-jax`` console script: resolves ``--config``, parses the flags (config file and
    overrides) with user errors as one line, then runs ``main`` under absl."""
    argv = list(sys.argv if argv is None else argv)
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv)
    if any(a in HELP_ARGS for a in argv[1:]):  # the project's usage, before absl's flag dump
        print(usage(), flush=True)
        sys.exit(0)
    if not verbose and not os.environ.get(SUPERVISED) and _multiprocess():
        sys.exit(supervise(argv))
    app.define_help_flags()  # --helpfull (app.run defines it too late for us)
    try:
        argv, none_keys = split_none_overrides(_with_resolved_config(argv))
        rest = flags.FLAGS(argv)
        if len(rest) > 1:  # absl would print its whole usage for a stray word
            raise UserError(_positional_error(rest[1:]))
        if _CONFIG.value is not None:  # a config file that failed to load raises here
            set_none(_CONFIG.value, none_keys)
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
