"""The CLI's one error path, shared by the `atlas` group and the command groups that tests invoke alone."""

from __future__ import annotations

import sys

import click


def one_line(message) -> str:
    """A message on one line (the CLI never prints a multi-line error)."""
    return " ".join(str(message).split("\n")).strip()


class ErrorPathGroup(click.Group):
    """`error: <message>` on one line, no traceback, and the exit code of the error's kind
    (`atlas_build/errors.py`: 2 bad input, 3 damaged atlas, 4 refused). click's usage errors keep click's
    own usage text and exit 2."""

    def invoke(self, ctx):
        from atlas_build.errors import EXIT_BAD_INPUT, AtlasError

        try:
            return super().invoke(ctx)
        except AtlasError as error:
            click.echo(f"error: {one_line(error)}", err=True)
            sys.exit(error.exit_code)
        except click.UsageError:
            raise
        except click.ClickException as error:
            click.echo(f"error: {one_line(error.format_message())}", err=True)
            sys.exit(EXIT_BAD_INPUT)
