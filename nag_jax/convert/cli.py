"""``nag-convert <command> ...`` (``python -m nag_jax.convert``): the checkpoint conversion CLI.

    nag-convert to-orbax --src SiT-XL-2-256.pt --dst ckpt/sit_xl2_256 --family SiT
    nag-convert to-torch --src ckpt/sit_xl2_256 --dst SiT-XL-2-256.pt
    nag-convert vae --src sd-vae-ft-ema --dst sd-vae-ft-ema-flax
    nag-convert inspect --src ckpt/sit_xl2_256

One style for every command: ``--src`` (and ``--dst`` where a command writes). The same values
may be given as positional arguments, source first (``nag-convert to-orbax A.pt OUT``, the
earlier style); positionals fill the paths not given as options, in order.

Adding a subcommand: drop a module into ``nag_jax/convert/`` that defines, at module level,

    COMMAND = "vae"                        # the subcommand name
    HELP = "one line for --help"
    def add_arguments(parser): ...         # argparse arguments (--src / --dst required options)
    def run(args) -> int: ...              # does the work; returns the exit status

and nothing else is needed: every module of the package with a ``COMMAND`` attribute is
registered (discovered with pkgutil; modules are imported only to read those four names, so keep
heavy imports inside ``run``). User errors (``nag_jax.errors.UserError``: ``ConversionError``,
``CheckpointError``; ValueError / FileNotFoundError / FileExistsError; a missing optional
dependency such as torch, named with its pip extra) are printed as one ``error:`` line with exit
status 2; ``--verbose`` shows their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from nag_jax.errors import MissingDependencyError, UserError

_SKIP = {"__main__", "cli", "common"}

# Optional dependencies of the converters -> the pip extra that installs them.
EXTRAS = {"torch": "convert", "safetensors": "convert", "tensorflow": "data"}
TORCH_CPU = "CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu"
PATH_OPTIONS = ("src", "dst")  # in positional order


def discover() -> dict:
    """{command name: module} for every module of nag_jax.convert that defines COMMAND."""
    import nag_jax.convert as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as e:  # noqa: BLE001 - one broken module must not hide the others
            print(f"warning: nag_jax.convert.{info.name} not loaded: {e}", file=sys.stderr)
            continue
        name = getattr(mod, "COMMAND", None)
        if name:
            if name in found:
                raise RuntimeError(f"subcommand {name!r} defined by {found[name]} and {mod}")
            found[name] = mod
    return found


def accept_positional_paths(p: argparse.ArgumentParser) -> list[tuple[str, bool]]:
    """For each ``--src`` / ``--dst`` option of ``p``: the same value may come as a positional
    argument (source first). The options become optional for argparse; :func:`resolve_paths`
    enforces them after parsing. -> [(name, required)] in positional order."""
    found = []
    for name in PATH_OPTIONS:
        option = next((a for a in p._actions if f"--{name}" in a.option_strings), None)
        if option is None:
            continue
        found.append((name, option.required))
        option.required = False
        p.add_argument(
            f"_{name}_positional",
            nargs="?",
            metavar=name.upper(),
            help=f"the same as --{name} (the earlier, positional style)",
        )
    return found


def resolve_paths(p: argparse.ArgumentParser, args: argparse.Namespace, paths) -> None:
    """Fills ``args.src`` / ``args.dst`` not given as options from the positional arguments, in
    order (``to-orbax --src A.pt OUT`` sets dst); argparse's one-line usage error (exit 2) when
    a required one is missing or a positional is left over."""
    given = [getattr(args, f"_{name}_positional") for name, _ in paths]
    for name, _ in paths:
        delattr(args, f"_{name}_positional")
    positional = [v for v in given if v is not None]
    for name, required in paths:
        if getattr(args, name) is None and positional:
            setattr(args, name, positional.pop(0))
        if getattr(args, name) is None and required:
            p.error(f"the following arguments are required: --{name} (or {name.upper()})")
    if positional:
        p.error(f"unrecognized arguments: {' '.join(positional)} (the --src/--dst are given)")


def build_parser(commands: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nag-convert", description="DiT/SiT (and friends) checkpoint tools."
    )
    parser.add_argument(
        "--verbose", action="store_true", help="tracebacks for user errors (bad input)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(commands):
        mod = commands[name]
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=mod.__doc__)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        mod.add_arguments(p)
        p.set_defaults(_module=mod, _parser=p, _paths=accept_positional_paths(p))
    return parser


def parse_args(argv=None, commands: dict | None = None) -> argparse.Namespace:
    """The parsed command line, ``--src``/``--dst`` resolved (argparse exits 2 on bad usage)."""
    args = build_parser(discover() if commands is None else commands).parse_args(argv)
    resolve_paths(args._parser, args, args._paths)
    del args._parser, args._paths
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in EXTRAS or args.verbose:
            raise
        hint = TORCH_CPU if root == "torch" else ""
        err = MissingDependencyError(f"nag-convert {args.command}", root, EXTRAS[root], hint)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def cli() -> None:
    """The ``nag-convert`` console script."""
    sys.exit(main())
