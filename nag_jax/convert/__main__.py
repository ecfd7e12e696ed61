"""``python -m nag_jax.convert <command> ...``: checkpoint conversion CLI.

    python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT
    python -m nag_jax.convert to-torch ckpt/sit_xl2_256 SiT-XL-2-256.pt
    python -m nag_jax.convert inspect ckpt/sit_xl2_256

Adding a subcommand (e.g. ``inception``, ``vae``): drop a module into ``nag_jax/convert/`` that
defines, at module level,

    COMMAND = "vae"                        # the subcommand name
    HELP = "one line for --help"
    def add_arguments(parser): ...         # argparse arguments of the subcommand
    def run(args) -> int: ...              # does the work; returns the exit status

and nothing else is needed: every module of the package with a ``COMMAND`` attribute is
registered (discovered with pkgutil; modules are imported only to read those four names, so keep
heavy imports inside ``run``). User errors (``nag_jax.errors.UserError``: ``ConversionError``,
``CheckpointError``; ValueError / FileNotFoundError / FileExistsError; a missing optional
dependency such as torch, named with its pip extra) are printed as one ``error:`` line with exit
status 2; ``--verbose`` shows their traceback. Installed as the ``nag-convert`` console script.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from nag_jax.errors import MissingDependencyError, UserError

_SKIP = {"__main__", "common"}

# Optional dependencies of the converters -> the pip extra that installs them.
EXTRAS = {"torch": "convert", "safetensors": "convert", "tensorflow": "data"}
TORCH_CPU = "CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu"


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
        p.set_defaults(_module=mod)
    return parser


def main(argv=None) -> int:
    commands = discover()
    args = build_parser(commands).parse_args(argv)
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


if __name__ == "__main__":
    cli()
