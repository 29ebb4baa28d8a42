"""`atlas validate DIR`: the quality gate every atlas passes before it is published."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from atlas_build.commands._options import TOKENIZER, tokenizer_dirs
from atlas_build.errors import EXIT_BAD_INPUT, EXIT_CHECKS_FAILED

EXIT_FAILED = EXIT_CHECKS_FAILED  # the atlas has defects
EXIT_NOT_AN_ATLAS = EXIT_BAD_INPUT  # nothing to validate (missing directory, no manifest)


@click.command("validate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the report [default: DIR/validation.json].",
)
@click.option(
    "--examples",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Failing examples shown per check.",
)
@click.option("--problems-only", is_flag=True, help="List only the checks that did not pass.")
@click.option(
    "--no-hashes", is_flag=True, help="Skip recomputing sha256 of the data files (row counts still checked)."
)
@click.option(
    "--no-tokenizer",
    is_flag=True,
    help="Skip the token-strings and tokenization checks (no tokenizer is loaded; the report says so).",
)
@TOKENIZER
def command(
    directory: Path,
    json_path: Path | None,
    examples: int,
    problems_only: bool,
    no_hashes: bool,
    no_tokenizer: bool,
    tokenizers: tuple[str, ...],
) -> None:
    """Validate the atlas in DIRECTORY: schema, keys, references, routing rules, manifest checksums.

    Also checks what the atlas claims: the card against the manifest and a fresh rendering, the random-init
    labels, the manifest's derived sections, a fresh tokenization of the texts (tokenizers are loaded
    without running any code of theirs). Prints one line per (config, check) with a few failing examples,
    writes DIR/validation.json (never into a published release: pass --json elsewhere), and exits 0 only
    when every check passes (1 when some check fails, 2 when DIRECTORY is not an atlas).
    """
    from atlas_build.atlas.manifest import ManifestError, published_release, refuse_published_release
    from atlas_build.commands.verify import classify, format_table, temp_files
    from atlas_build.models import checkpoint_marker, load_tokenizer
    from validation import AtlasNotFoundError, run_validation, verify_files
    from validation.runner import REPORT_NAME

    tokenizer_folders = tokenizer_dirs(tokenizers)
    if tokenizer_folders and no_tokenizer:
        raise click.UsageError("--tokenizer and --no-tokenizer contradict each other: pass one")
    report_path = json_path or directory / REPORT_NAME
    release = published_release(directory) if directory.is_dir() else None
    if release is not None and json_path is None:
        report_path = None  # a published release is validated, never written into
    elif release is not None:
        target = report_path.resolve().parent
        if target == directory.resolve() or directory.resolve() in target.parents:
            refuse_published_release(directory, f"writing {report_path}")

    # `atlas verify` first: damaged or unfinished files make every later check meaningless.
    try:
        damaged = classify(verify_files(directory, hashes=not no_hashes)) + temp_files(directory)
    except (ManifestError, OSError):
        damaged = []  # not an atlas: run_validation says so below
    if damaged:
        click.echo("atlas verify: the files do not match manifest.json")
        click.echo(format_table(damaged))
        click.echo(
            "Rerun an interrupted build to finish it, or rebuild the damaged configs. Validating anyway:\n",
            err=True,
        )
    try:
        report = run_validation(
            directory,
            hashes=not no_hashes,
            tokenizers=not no_tokenizer,
            tokenizer_loader=load_tokenizer,
            checkpoint_marker=checkpoint_marker,
            tokenizer_dirs=tokenizer_folders,
        )
    except AtlasNotFoundError as error:
        click.echo(f"error: {error}", err=True)
        # A damaged or unsafe manifest keeps its own code (atlas_build/errors.py); a wrong path is bad input.
        sys.exit(getattr(error.__cause__, "exit_code", EXIT_NOT_AN_ATLAS))
    click.echo(report.render_table(max_examples=examples, only_problems=problems_only))
    for line in routed_lines(report):
        click.echo(line)
    if report_path is None:
        click.echo(f"report not written: {directory} is a published release (pass --json PATH to keep it)")
    else:
        click.echo(f"report written to {report.write(report_path)}")
    sys.exit(0 if report.passed else EXIT_FAILED)


def routed_lines(report) -> list[str]:
    """One line per model when the models routed different corpora (`corpus-coverage` details), else none."""
    routed = {
        r.config: r.details
        for r in report.results
        if r.check == "corpus-coverage" and isinstance(r.details.get("routed_corpora"), list)
    }
    if len({tuple(d["routed_corpora"]) for d in routed.values()}) <= 1:
        return []
    return [
        f"{config} routed {', '.join(d['routed_corpora']) or 'nothing'}"
        + (
            f"; not routed: {', '.join(d['not_routed'])} (its metrics leave them out)"
            if d.get("not_routed")
            else ""
        )
        for config, d in sorted(routed.items())
    ]
