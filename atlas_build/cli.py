"""`atlas`: the command line. Each command lives in `atlas_build/commands/<name>.py` as `command`.

Commands are discovered from that folder, so adding one touches no shared file; each keeps its heavy
imports inside the function, so `atlas --help` stays fast and never imports torch, vllm or ray.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from atlas_build import __version__
from atlas_build.commands._errors import ErrorPathGroup, one_line


class AtlasGroup(ErrorPathGroup):
    """The `atlas` group: every command's errors take the one path of `commands/_errors.py`."""


@click.group(cls=AtlasGroup)
@click.version_option(__version__, prog_name="routing-atlas")
def main() -> None:
    """routing-atlas: build, validate and publish datasets of MoE routing."""


def _discover() -> None:
    from atlas_build import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            main.add_command(command)


_discover()


def run() -> None:
    """The `atlas` console script: `main`, with an unexpected exception (a bug) as one line and exit 70."""
    import os

    from atlas_build.errors import EXIT_INTERNAL

    try:
        main()
    except Exception as error:  # click handles its own exceptions and SystemExit inside main()
        if os.environ.get("ATLAS_TRACEBACK"):
            raise
        click.echo(
            f"internal error (a bug in routing-atlas {__version__}; please report it): "
            f"{type(error).__name__}: {one_line(error)}. Run with ATLAS_TRACEBACK=1 for the traceback.",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    run()
