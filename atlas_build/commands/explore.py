"""`atlas explore DIR --out SITE`: a static explorer site of the atlas (offline, no server)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("explore")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Site folder: new, empty, or an earlier `atlas explore` site (replaced).",
)
@click.option(
    "--metrics",
    "metrics_path",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="metrics.json of `atlas metrics` [default: DIRECTORY/metrics/metrics.json when present].",
)
def command(directory: Path, out: Path, metrics_path: Path | None) -> None:
    """Write a static site of the atlas in DIRECTORY into OUT: open OUT/index.html in a browser.

    Lemma index with search; per lemma its examples by sense and, for every model, layers x experts
    heatmaps of the target token's routing (per sense and per example) and same- vs different-sense
    overlap per layer, a trained model beside its random-init twin; per model the metrics and controls of
    metrics.json, expert load and co-activation. Read from the atlas alone; works from file:// offline.
    """
    from atlas_build.atlas.manifest import refuse_inside_release
    from atlas_build.explore import build_site

    refuse_inside_release(out, f"writing the explorer site {out}")

    report = build_site(directory, out, metrics_path=metrics_path)
    click.echo(f"wrote the explorer site {out}: {report.summary()}")
    click.echo(f"open {(out / 'index.html').resolve().as_uri()}")
