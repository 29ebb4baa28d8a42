"""`atlas intervene ATLAS --plan PLAN.json`: run pre-registered interventions; `atlas intervene plan ATLAS`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_NONE_SURVIVES = 0  # a null result is a result, not an error


class InterveneGroup(click.Group):
    """`atlas intervene ATLAS --plan P` runs a plan; `atlas intervene plan ATLAS` proposes one."""

    def parse_args(self, ctx, args):
        # ATLAS first means "run": route it to the `run` subcommand, keeping `plan` as the other one.
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("intervene", cls=InterveneGroup)
def command() -> None:
    """Causal tests: ablate or transplant experts through the family's router, against random baselines.

    `atlas intervene ATLAS --plan PLAN.json [--model M] [--out DIR]` runs the plan's hypotheses on the
    atlas's own labelled texts and records them as the `interventions` config (with the plan's sha256);
    `atlas intervene plan ATLAS --out PLAN.json` proposes a plan from the atlas's own routing.
    """


@command.command("run")
@click.argument("atlas", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--plan", "plan_path", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@click.option("--model", default=None, help="Checkpoint to use [default: the atlas's recorded model].")
@click.option("--slug", default=None, help="The routing config, when the atlas has several models.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write the result rows as DIR/interventions-<plan>.json.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--no-record", is_flag=True, help="Report only: leave the atlas as it is.")
def run(
    atlas: Path, plan_path: Path, model, slug, out, device: str, batch_size: int, no_record: bool
) -> None:
    """Run PLAN on ATLAS and record the results (one row per hypothesis x intervention x outcome)."""
    from atlas_build.intervene.session import intervene_atlas

    result = intervene_atlas(
        atlas,
        plan_path,
        model=model,
        slug=slug,
        device=device,
        batch_size=batch_size,
        record=not no_record,
        log=lambda line: click.echo(line, err=True),
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"interventions-{result.plan.name}.json"
        target.write_text(json.dumps(result.rows, indent=1, default=str) + "\n", encoding="utf-8")
    for line in result.verdicts:
        click.echo(line)
    null = " (RANDOM-INIT model: a null result is expected)" if result.random_init else ""
    click.echo(
        f"verdict: {len(result.survivors)} of {len(result.plan.hypotheses)} hypotheses of plan "
        f"{result.plan.name!r} survive{null}" + ("; recorded in interventions" if result.recorded else "")
    )
    sys.exit(EXIT_NONE_SURVIVES)


@command.command("plan")
@click.argument("atlas", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the plan (refused if the file exists).",
)
@click.option("--name", default=None, help="The plan's name [default: the file's stem].")
@click.option("--slug", default=None, help="The routing config, when the atlas has several models.")
@click.option("--per-layer", type=int, default=1, show_default=True, help="Experts per hypothesis.")
@click.option(
    "--layers", default=None, help="Comma-separated decoder layers to propose for [default: every MoE layer]."
)
@click.option("--draws", type=int, default=None, help="Random baseline draws per intervention [default: 39].")
@click.option(
    "--max-texts", type=int, default=None, help="A seeded sample of at most N texts per hypothesis."
)
def plan(atlas: Path, out: Path, name, slug, per_layer: int, layers, draws, max_texts) -> None:
    """Propose a plan from ATLAS's own routing: per MoE layer, the most sense-selective expert(s) and those
    whose co-routing best separates same- from different-sense pairs. Edit it before running it, never after."""
    from atlas_build.intervene.examples import InterveneError
    from atlas_build.intervene.session import propose_plan

    if out.exists():
        raise InterveneError(f"{out} exists: a plan is never overwritten (choose another --out)")
    try:
        wanted = None if layers is None else [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise InterveneError(f"--layers must be comma-separated integers, got {layers!r}") from None
    settings = {
        key: value
        for key, value in (("baseline_draws", draws), ("max_texts", max_texts))
        if value is not None
    }
    proposed = propose_plan(
        atlas, name=name or out.stem, slug=slug, per_layer=per_layer, layers=wanted, settings=settings
    )
    # What was proposed is checked as any plan is, before it is written.
    from atlas_build.intervene.plan import parse_plan

    parse_plan(proposed, "", "the proposed plan")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(proposed, indent=2) + "\n", encoding="utf-8")
    click.echo(
        f"wrote {out}: {len(proposed['hypotheses'])} hypotheses; run `atlas intervene {atlas} --plan {out}`"
    )
