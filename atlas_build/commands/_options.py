"""Options shared by the commands that load a model (not a command: no module-level `command`)."""

from __future__ import annotations

import click

DTYPE_CHOICES = ["float32", "bfloat16", "float16", "auto"]
# Every seed option: numpy's RandomState and torch.manual_seed take seeds below 2**32; the metrics derive
# seeds up to `seed + 6` (MetricsOptions.seeds), so theirs stay 8 below.
SEED = click.IntRange(0, 2**32 - 1)
METRICS_SEED = click.IntRange(0, 2**32 - 9)


def model_loading_options(function):
    """--revision, --device, --device-map, --dtype, --trust-remote-code: how a checkpoint is loaded."""
    for option in reversed(
        [
            click.option("--revision", default=None, help="Hub revision of the model."),
            click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
            click.option(
                "--device-map", default=None, help="e.g. auto: spread a large checkpoint over the GPUs."
            ),
            click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="float32", show_default=True),
            click.option(
                "--trust-remote-code", is_flag=True, help="Run the checkpoint's own code (off unless given)."
            ),
        ]
    ):
        function = option(function)
    return function


# `--tokenizer [SLUG=]DIR` of validate and publish: the atlas names a local checkpoint by a portable id, so
# its tokenizer is given as a folder where the token checks run (they fail without one, never pass silently).
TOKENIZER = click.option(
    "--tokenizer",
    "tokenizers",
    multiple=True,
    metavar="[SLUG=]DIR",
    help="A local tokenizer directory for the token checks, for every model or for routing-SLUG (repeatable): "
    "where the tokenizer the atlas names cannot be loaded here (offline), those checks fail without one.",
)


def tokenizer_dirs(values: tuple[str, ...]) -> dict:
    """`--tokenizer` values -> {slug or None: directory}; a value that is not a directory is a usage error."""
    from pathlib import Path

    dirs: dict = {}
    for given in values:
        slug, _, folder = given.partition("=") if "=" in given else (None, "", given)
        path = Path(folder)
        if not path.is_dir():
            raise click.BadParameter(
                f"{folder} is not a directory holding a tokenizer", param_hint="--tokenizer"
            )
        dirs[slug or None] = path
    return dirs
