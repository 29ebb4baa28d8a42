"""`atlas traces`: make and check reasoning-trace files (the input of `atlas build --corpus traces`)."""

from __future__ import annotations

from pathlib import Path

import click

from atlas_build.commands._options import SEED, model_loading_options


@click.group("traces")
def command() -> None:
    """Reasoning traces: DiscoveryWorld runs and imported JSONL files."""


@command.command("check")
@click.argument("traces_file", type=click.Path(path_type=Path))
def check(traces_file: Path) -> None:
    """Check TRACES_FILE (JSONL: id, prompt, reasoning, answer, meta) without building anything."""
    from atlas_build.corpora.markers import find_markers
    from atlas_build.corpora.traces import read_traces

    traces = read_traces(traces_file)
    markers = sum(len(find_markers(t.reasoning)) for t in traces)
    click.echo(f"{traces_file}: {len(traces)} traces, {markers} reasoning markers in their reasoning")


@command.command("scenarios")
def list_scenarios() -> None:
    """List the DiscoveryWorld scenarios and their difficulties."""
    from atlas_build.corpora.discoveryworld import scenarios

    for name, levels in scenarios().items():
        click.echo(f"{name}\t{', '.join(levels)}")


@command.command("discoveryworld")
@click.option(
    "--model", required=True, help="Built-in name (tiny-deepseek-v3), checkpoint directory or hub id."
)
@click.option(
    "--scenario", required=True, help="DiscoveryWorld scenario, e.g. Tutorial (see `atlas traces scenarios`)."
)
@click.option("--difficulty", default="Normal", show_default=True, help="Easy, Normal or Challenge.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Most steps to play."
)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Traces JSONL to write.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Scenario and NPC seed.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop starting new steps after this long.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most tokens the model writes per step (reasoning and answer).",
)
@click.option(
    "--history",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Past actions shown in the prompt.",
)
@click.option(
    "--max-prompt-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Shorten longer step prompts (drop nearby objects, then history); default: fit the context only.",
)
@model_loading_options
@click.option("--random-init", is_flag=True, help="Play with a seeded random-init twin of the architecture.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def discoveryworld(**options) -> None:
    """Play DiscoveryWorld with MODEL as the agent; write one trace per step to --out.

    Each step the model reads the observation, reasons (greedy, at most --max-new-tokens) and answers
    with a JSON action; unparsable or invalid actions are recorded and the run goes on. Route the file
    with `atlas build --model MODEL --corpus traces --traces OUT --out ATLAS`.
    """
    import json
    import os
    import tempfile

    from atlas_build.atlas.manifest import refuse_inside_release
    from atlas_build.corpora.discoveryworld import (
        EngineAgent,
        RunOptions,
        RunSummary,
        require_discoveryworld,
        resolve_scenario,
        run_episode,
    )
    from atlas_build.corpora.traces import TraceFormatter
    from atlas_build.engines.hf import HFEngine

    refuse_inside_release(options["out"], f"writing traces to {options['out']}")
    from atlas_build.errors import AtlasError

    out: Path = options["out"]
    if out.exists() and (out.is_dir() or not options["overwrite"]):
        raise AtlasError(
            f"{out} exists: pass --overwrite to replace it" if out.is_file() else f"{out} is a directory"
        )
    require_discoveryworld()
    # Before loading the model: a typo in the scenario should not cost a model load.
    scenario, difficulty = resolve_scenario(options["scenario"], options["difficulty"])
    engine = HFEngine(
        options["model"],
        revision=options["revision"],
        dtype=options["dtype"],
        device=options["device"],
        device_map=options["device_map"],
        trust_remote_code=options["trust_remote_code"],
        random_init=options["random_init"],
        seed=options["seed"],
    )
    if engine.is_random_init:
        click.echo(
            f"note: {options['model']} is RANDOM-INIT: its traces are gibberish (plumbing, not findings)"
        )
    run = RunOptions(
        scenario=scenario,
        difficulty=difficulty,
        steps=options["steps"],
        seed=options["seed"],
        max_seconds=options["max_seconds"],
        history=options["history"],
        context=engine.max_length,
        max_new_tokens=options["max_new_tokens"],
        max_prompt_tokens=options["max_prompt_tokens"],
        model=options["model"],
    )
    summary = RunSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in run_episode(
                EngineAgent(engine, options["max_new_tokens"]),
                TraceFormatter(engine.tokenizer),
                run,
                count_tokens=lambda text: len(engine.tokenizer(text)["input_ids"]),
                log=click.echo,
                summary=summary,
            ):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if summary.steps == 0:
            raise AtlasError(f"no step was played ({summary.stopped}): nothing written")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        engine.close()
    click.echo(
        f"done: {summary.steps} steps, {summary.valid_actions} valid actions, score {summary.score:.3f} "
        f"({summary.stopped}, {summary.seconds:.1f} s); wrote {out}\n"
        f"route it: atlas build --model {options['model']} --corpus traces --traces {out} --out ATLAS_DIR"
        + (" --random-init" if options["random_init"] else "")
    )
