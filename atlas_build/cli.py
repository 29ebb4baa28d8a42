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


class AtlasGroup(click.Group):
    """Turns user-facing errors (`errors.AtlasError`) into a message and exit code 2, no traceback."""

    def invoke(self, ctx):
        from atlas_build.errors import AtlasError

        try:
            return super().invoke(ctx)
        except AtlasError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


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

if __name__ == "__main__":
    main()
