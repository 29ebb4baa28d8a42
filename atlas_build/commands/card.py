"""`atlas card DIR`: regenerate the dataset card (README.md, LICENSE.md) from the atlas itself."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("card")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--repo-id",
    default=None,
    help="Hub dataset id the card's load snippets name [default: the directory's absolute path].",
)
@click.option("--revision", default=None, help="Hub revision the load snippets pass (with --repo-id).")
def command(directory: Path, repo_id: str | None, revision: str | None) -> None:
    """Regenerate DIRECTORY/README.md (the dataset card) and DIRECTORY/LICENSE.md.

    The card is read from the atlas: manifest (configs, rows, builds, corpus counts), Parquet schemas, the
    models rows, DIRECTORY/validation.json (`atlas validate DIRECTORY`) and, when present,
    DIRECTORY/metrics/metrics.json (`atlas metrics DIRECTORY --out DIRECTORY/metrics`).
    """
    from atlas_build.atlas.manifest import refuse_inside_release
    from dataset_cards.render import LICENSE_FILE, CardContext, write_card

    refuse_inside_release(directory, "rewriting its card")

    context = CardContext(repo_ref=repo_id, revision=revision if repo_id else None, hub_id=repo_id)
    path = write_card(directory, context=context)
    click.echo(f"wrote {path} and {directory / LICENSE_FILE}")
    if not (directory / "validation.json").exists():
        click.echo(
            f"note: no validation.json yet; run `atlas validate {directory}` and then `atlas card` again"
        )
