"""`atlas publish DIR --version X.Y.Z (--to PATH | --repo-id ORG/NAME) [--dry-run]`: a versioned release."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from atlas_build.commands._options import TOKENIZER, tokenizer_dirs


@click.command("publish")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--version", "version", required=True, help="Semantic version MAJOR.MINOR.PATCH; tagged vX.Y.Z."
)
@click.option(
    "--to",
    "to",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of local releases: writes PATH/vX.Y.Z/ and updates PATH/releases.json.",
)
@click.option("--repo-id", default=None, help="Hub dataset ORG/NAME: uploads the release and tags it vX.Y.Z.")
@click.option("--private", is_flag=True, default=False, help="Create the Hub repo as private (if it is new).")
@click.option("--dry-run", is_flag=True, help="Validate and print what would be published and what changed.")
@click.option(
    "--require-audit",
    is_flag=True,
    help="Refuse unless every routing config passed `atlas audit` on its current files.",
)
@TOKENIZER
def command(
    directory: Path,
    version: str,
    to: Path | None,
    repo_id: str | None,
    private: bool,
    dry_run: bool,
    require_audit: bool,
    tokenizers: tuple[str, ...],
) -> None:
    """Publish the atlas in DIRECTORY as version X.Y.Z, after it passes validation.

    A version is published once and never changes: an existing version is refused. The release holds the
    data, the card, manifest.json, validation.json, CHANGELOG.md (diffed against the previous release) and
    scripts/ to recompute the metrics. The Hub token is never an option: HfApi reads HF_TOKEN or the saved
    `hf auth login`.
    """
    from atlas_build.publish import publish
    from atlas_build.publish.staging import run_validation_gate

    folders = tokenizer_dirs(tokenizers)
    extra = {"validate": lambda root: run_validation_gate(root, tokenizer_dirs=folders)} if folders else {}
    result = publish(
        directory,
        version,
        to=to,
        repo_id=repo_id,
        dry_run=dry_run,
        private=private or None,
        log=click.echo,
        require_audit=require_audit,
        **extra,
    )
    if result.dry_run:
        click.echo(f"dry run: would publish {result.tag} of {directory} to {result.destination}")
        click.echo(
            f"previous release: {('v' + result.previous) if result.previous else 'none (first release)'}"
        )
        click.echo("validation: passed")
    folders = Counter(f.split("/")[0] if "/" in f else "." for f in result.files)
    click.echo(
        f"{len(result.files)} files: "
        + ", ".join(
            f"{name}/ {n}" if name != "." else f"{n} at the top" for name, n in sorted(folders.items())
        )
    )
    click.echo("")
    click.echo(result.changelog_entry.rstrip())
    if result.dry_run:
        click.echo("")
        click.echo("dry run: nothing was written")
