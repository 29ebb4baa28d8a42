"""`atlas audit DIR [--model M] [--sample N] [--seed S]`: re-route a sample with the model, compare the rows."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from atlas_build.commands._options import SEED
from atlas_build.errors import EXIT_CHECKS_FAILED

EXIT_BELOW_THRESHOLD = EXIT_CHECKS_FAILED


@click.command("audit")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--model",
    default=None,
    help="Checkpoint to audit against (built-in name, directory or hub id) [default: the recorded model].",
)
@click.option("--slug", default=None, help="The routing config to audit, when the atlas has several models.")
# --sample and --threshold are checked by `audit_atlas` itself (one line each: "--sample must be at least 1").
@click.option("--sample", type=int, default=None, help="Texts to re-route [default: 200; all when fewer].")
@click.option("--seed", type=SEED, default=None, help="Seed of the sample [default: 0].")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Least share of token-layers with identical expert sets that passes [default: 1.0].",
)
@click.option(
    "--order-threshold",
    type=float,
    default=None,
    help="Least share of token-layers with experts in identical order (ties tolerated) [default: 1.0].",
)
@click.option(
    "--weights-threshold",
    type=float,
    default=None,
    help="Least share of token-layers whose weights agree within the dtypes' tolerance [default: 1.0].",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--no-record", is_flag=True, help="Report only: leave manifest.json and the card as they are.")
def command(
    directory: Path,
    model: str | None,
    slug: str | None,
    sample: int | None,
    seed: int | None,
    threshold: float | None,
    order_threshold: float | None,
    weights_threshold: float | None,
    device: str,
    batch_size: int,
    no_record: bool,
) -> None:
    """Re-route a seeded sample of DIRECTORY's texts with the model and compare with the atlas's rows.

    Always with the hf engine as the reference, whatever engine built the atlas, and without running any
    code of the checkpoint. Per token and MoE layer it compares the expert sets, their order and the
    weights (within the dtypes' tolerance), each with its own threshold and an exact 95% confidence
    interval on its mismatch rate, prints the first mismatching rows, records the result in manifest.json
    and the card (`atlas publish --require-audit` asks for it), and exits 1 when any part is below its
    threshold, naming it.
    """
    from atlas_build.audit.reroute import (
        DEFAULT_ORDER_THRESHOLD,
        DEFAULT_SAMPLE,
        DEFAULT_THRESHOLD,
        DEFAULT_WEIGHTS_THRESHOLD,
        audit_atlas,
    )

    result = audit_atlas(
        directory,
        model=model,
        slug=slug,
        sample=DEFAULT_SAMPLE if sample is None else sample,
        seed=0 if seed is None else seed,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        order_threshold=DEFAULT_ORDER_THRESHOLD if order_threshold is None else order_threshold,
        weights_threshold=DEFAULT_WEIGHTS_THRESHOLD if weights_threshold is None else weights_threshold,
        device=device,
        batch_size=batch_size,
        record=not no_record,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(f"{result.config}: {result.summary()}")
    if result.checkpoint_matches is False:
        click.echo(
            f"note: the checkpoint audited ({result.checkpoint_sha256}) is not the one recorded in the models row"
        )
    for line in result.first_mismatches:
        click.echo(f"  mismatch: {line}")
    verdict = "PASSED" if result.passed else f"FAILED ({', '.join(result.failed_parts)})"
    shares = ", ".join(
        f"{name} {100 * part['share']:.2f}% (threshold {100 * part['threshold']:.2f}%)"
        for name, part in result.parts.items()
        if part.get("checked", True)
    )
    click.echo(f"{verdict}: {shares}" + ("" if no_record else "; recorded in manifest.json"))
    sys.exit(0 if result.passed else EXIT_BELOW_THRESHOLD)
