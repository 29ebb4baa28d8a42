"""`atlas metrics SOURCE --out REPORT_DIR`: routing metrics of an atlas, read through `datasets` only."""

from __future__ import annotations

import click


@click.argument("source")
@click.option("--model", "models", multiple=True, help="Model slug (repeatable); default: every model.")
@click.option("--revision", default=None, help="Hub revision of SOURCE (hub ids only).")
@click.option(
    "--target",
    type=click.Choice(["first", "last", "all"]),
    default="last",
    show_default=True,
    help="Target sub-token: first, last (in a causal model the first position that has seen the whole word), "
    "or all (kappa averaged over all sub-token pairs).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory (created).")
@click.option(
    "--min-count",
    default=5,
    show_default=True,
    type=click.IntRange(1),
    help="Token-id specialisation: minimum occurrences of a token id.",
)
@click.option(
    "--bootstrap",
    "n_bootstrap",
    default=2000,
    show_default=True,
    type=click.IntRange(0),
    help="Bootstrap resamples.",
)
@click.option(
    "--permutations",
    "n_permutations",
    default=999,
    show_default=True,
    type=click.IntRange(0),
    help="Within-lemma label permutations for the p-values.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="datasets cache (default: the HF cache).",
)
def _metrics(source, models, revision, target, out, min_count, n_bootstrap, n_permutations, seed, cache_dir):
    """Compute the routing metrics of the atlas SOURCE (an atlas directory or a hub dataset id).

    Writes metrics.json, report.md and PNG figures into REPORT_DIR: sense-pair overlap (chance-corrected
    κ, with context-overlap and null-model controls), substitution overlap, scale, token-id specialisation,
    expert load / entropy / co-activation, reasoning-trace nPMI, and a routing-only sense probe. No model,
    tokenizer or WordNet is needed.
    """
    # Heavy imports here: the CLI group imports every command module at start-up.
    from atlas_build.metrics import MetricsOptions, run_metrics, summarize
    from atlas_build.metrics.source import SourceError

    options = MetricsOptions(
        target=target, min_count=min_count, n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed
    )
    try:
        metrics = run_metrics(
            source, out, models=list(models) or None, revision=revision, options=options, cache_dir=cache_dir
        )
    except SourceError as error:
        raise click.ClickException(str(error)) from error
    click.echo(summarize(metrics))
    click.echo(f"wrote {out}/metrics.json, {out}/report.md and {len(metrics['figures'])} figure(s)")


command = click.command("metrics")(_metrics)
