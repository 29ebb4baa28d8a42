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
