"""`atlas metrics SOURCE --out REPORT_DIR`: routing metrics of an atlas, read through `datasets` only;
`atlas metrics calibrate DIR --out OUT`: the controls checked on planted copies of the atlas."""

from __future__ import annotations

from pathlib import Path

import click

from atlas_build.commands._errors import ErrorPathGroup
from atlas_build.commands._options import METRICS_SEED

_BOOTSTRAP = click.option(
    "--bootstrap",
    "n_bootstrap",
    default=2000,
    show_default=True,
    type=click.IntRange(0),
    help="Bootstrap resamples.",
)
_PERMUTATIONS = click.option(
    "--permutations",
    "n_permutations",
    default=999,
    show_default=True,
    type=click.IntRange(0),
    help="Within-lemma label permutations for the p-values.",
)
_CACHE = click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="datasets cache (default: the HF cache).",
)


def source_error(error: Exception) -> Exception:
    """The metrics' reading errors on the CLI's one error path: altered files are a damaged atlas (exit 3)."""
    from atlas_build.errors import AtlasError, DamagedAtlasError
    from atlas_build.metrics.provenance.verify import IntegrityError

    kind = DamagedAtlasError if isinstance(error, IntegrityError) else AtlasError
    return kind(str(error))


class _MetricsGroup(ErrorPathGroup):
    """`atlas metrics SOURCE ...` runs the metrics; `atlas metrics calibrate ...` the calibration."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["compute", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("atlas metrics", "SOURCE --out REPORT_DIR [OPTIONS] | calibrate DIR --out OUT")


@click.group("metrics", cls=_MetricsGroup)
def command():
    """Routing metrics of an atlas, from the dataset alone.

    `atlas metrics SOURCE --out REPORT_DIR` (see `atlas metrics compute --help`) computes them;
    `atlas metrics calibrate DIR --out OUT` checks the controls on planted copies of the atlas.
    """


@command.command("compute")
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
@_BOOTSTRAP
@_PERMUTATIONS
@click.option("--seed", default=0, show_default=True, type=METRICS_SEED)
@_CACHE
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not check the data files against manifest.json (the report then says they were not checked).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Also calibrate the controls on planted truth over this atlas's own sense pairs (first model): "
    "plant x control matrix, per-layer false-positive rates, power; recorded in metrics.json 'calibration'.",
)
@click.option(
    "--calibration-seeds",
    default=10,
    show_default=True,
    type=click.IntRange(2),
    help="Noise replicates of the calibration's false-positive rates.",
)
@click.option(
    "--calibration-resamples",
    default=200,
    show_default=True,
    type=click.IntRange(50),
    help="Bootstrap resamples of every calibration fit.",
)
def compute(
    source,
    models,
    revision,
    target,
    out,
    min_count,
    n_bootstrap,
    n_permutations,
    seed,
    cache_dir,
    no_verify,
    calibrate,
    calibration_seeds,
    calibration_resamples,
):
    """Compute the routing metrics of the atlas SOURCE (an atlas directory or a hub dataset id).

    Writes metrics.json, report.md and PNG figures into REPORT_DIR: sense-pair overlap (chance-corrected
    κ, raw and under the named controls: context words, token identity, a random-init null model, all),
    substitution overlap, scale, token-id specialisation (ours and OLMoE's definition), expert load /
    entropy / co-activation against router-aware baselines, reasoning-trace nPMI, and a calibrated
    routing-only sense probe. The data files are checked against manifest.json first. No model, tokenizer
    or WordNet is needed.
    """
    _check_source(source, revision)
    # Heavy imports here: the CLI group imports every command module at start-up.
    from atlas_build.atlas.manifest import refuse_inside_release
    from atlas_build.metrics import MetricsOptions, run_metrics, summarize
    from atlas_build.metrics.provenance.source import SourceError

    refuse_inside_release(Path(out), f"writing the metrics report {out}")
    options = MetricsOptions(
        target=target,
        min_count=min_count,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        seed=seed,
        verify=not no_verify,
        calibrate=calibrate,
        calibration_seeds=calibration_seeds,
        calibration_resamples=calibration_resamples,
    )
    try:
        metrics = run_metrics(
            source, out, models=list(models) or None, revision=revision, options=options, cache_dir=cache_dir
        )
    except SourceError as error:
        raise source_error(error) from error
    click.echo(summarize(metrics))
    if no_verify:
        click.echo("warning: the data files were NOT checked against manifest.json (--no-verify)")
    click.echo(f"wrote {out}/metrics.json, {out}/report.md and {len(metrics['figures'])} figure(s)")


def _check_source(source: str, revision: str | None) -> None:
    """Refuse, in one line, a SOURCE that cannot be an atlas before anything is read or written."""
    path = Path(source)
    if path.exists():
        if revision is not None:
            raise click.UsageError(
                f"--revision {revision!r} names a hub revision, and {source} is a local folder (read as it is): "
                "leave --revision out, or pass a hub dataset id"
            )
        if not path.is_dir():
            raise click.UsageError(f"{source} is a file: pass an atlas directory or a hub dataset id")
        if not (path / "manifest.json").is_file() and not (path / "models").is_dir():
            raise click.UsageError(
                f"{source} is not an atlas (no manifest.json, no models config): pass a folder written by "
                "`atlas build`, or a hub dataset id"
            )
        return
    if "@" in source:
        repo, _, rev = source.partition("@")
        raise click.UsageError(
            f"{source!r}: "
            + ("the revision after '@' is empty" if not rev else f"give the revision as --revision {rev}")
            + f"; the dataset id is {repo!r}"
        )
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise click.UsageError(
            f"{source} does not exist: pass an atlas directory or a hub dataset id (org/name)"
        )


def _layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        layers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated decoder layer ids, got {value!r}", param_hint="'--layers'"
        ) from None
    if not layers:
        raise click.BadParameter(
            f"no layer id in {value!r}: give decoder layers such as 2,4, or leave --layers out (every other)",
            param_hint="'--layers'",
        )
    if min(layers) < 0:
        raise click.BadParameter(f"layer ids are >= 0, got {value!r}", param_hint="'--layers'")
    return layers


def _outside(source: str, out: str) -> None:
    """`--out` of calibrate is a new folder outside SOURCE: files inside an atlas make it fail `atlas verify`."""
    root, target = Path(source).resolve(), Path(out).resolve()
    if target == root or root in target.parents:
        raise click.BadParameter(
            f"{out} is inside the atlas {source}, whose files `atlas verify` checks: write the planted copies "
            "to a folder outside it",
            param_hint="'--out'",
        )


@command.command("calibrate")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New directory for the copies.")
@click.option("--model", default=None, help="Model slug of the sense plant (default: the first).")
@click.option(
    "--layers", default=None, help="Decoder layers of the sense plant, e.g. 2,4 (default: every other)."
)
@click.option(
    "--strength",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Sense plant probability q.",
)
@click.option(
    "--plant",
    "plants",
    multiple=True,
    type=click.Choice(["sense", "token_identity", "context_words", "noise"]),
    help="Plant (repeatable; default: all four).",
)
@_BOOTSTRAP
@_PERMUTATIONS
@click.option("--seed", default=0, show_default=True, type=METRICS_SEED)
@_CACHE
@click.option(
    "--calibration-seeds",
    default=10,
    show_default=True,
    type=click.IntRange(2),
    help="Noise replicates of the in-memory false-positive rates.",
)
@click.option(
    "--calibration-resamples",
    default=200,
    show_default=True,
    type=click.IntRange(50),
    help="Bootstrap resamples of every in-memory calibration fit.",
)
def calibrate(
    source,
    out,
    model,
    layers,
    strength,
    plants,
    n_bootstrap,
    n_permutations,
    seed,
    cache_dir,
    calibration_seeds,
    calibration_resamples,
):
    """Plant known routing into copies of the local atlas SOURCE and report what each control recovers.

    Plants: a sense effect at chosen layers; sense-blind routing by token identity; sense-blind routing by
    context words; pure noise. Writes OUT/plant-<name>/ (complete atlases), OUT/calibration.json and
    OUT/calibration.md, with the in-memory calibration (plant x control matrix with confounds that are not
    the controls' keys, per-layer false-positive rates, power) as calibration.json "summary".
    """
    from atlas_build.atlas.manifest import refuse_inside_release
    from atlas_build.metrics import MetricsOptions
    from atlas_build.metrics.calibration.matrix import CalibrationOptions
    from atlas_build.metrics.calibration.plants import (
        PLANTS,
        PlantOptions,
        render_calibration,
    )
    from atlas_build.metrics.calibration.plants import (
        calibrate as run_calibration,
    )
    from atlas_build.metrics.provenance.source import SourceError

    refuse_inside_release(Path(out), f"writing the calibration copies {out}")

    _outside(source, out)
    layer_ids = _layers(layers)
    try:
        report = run_calibration(
            source,
            out,
            plants=tuple(plants) or PLANTS,
            plant_options=PlantOptions(model=model, layers=layer_ids, strength=strength, seed=seed),
            metrics_options=MetricsOptions(n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed),
            cache_dir=cache_dir,
            calibration_options=CalibrationOptions(
                seeds=calibration_seeds, n_resamples=calibration_resamples, seed=seed
            ),
        )
    except SourceError as error:
        raise source_error(error) from error
    click.echo(render_calibration(report))
    click.echo(
        f"wrote {out}/calibration.json, {out}/calibration.md and {len(report['plants'])} planted atlas(es)"
    )
