"""``python -m nag_jax.convert <command> ...``: the ``nag-convert`` CLI (``convert/cli.py``)."""

from nag_jax.convert.cli import cli, discover, main

__all__ = ["cli", "discover", "main"]

if __name__ == "__main__":
    cli()
