"""`atlas build`: route a corpus through a model into an atlas directory (resumable)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("build")
@click.option(
    "--model", required=True, help="Built-in name (tiny-deepseek-v3), checkpoint directory or hub id."
)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Atlas directory.")
@click.option("--corpus", type=click.Choice(["wordnet", "traces"]), default="wordnet", show_default=True)
@click.option(
    "--max-lemmas", type=click.IntRange(min=1), default=None, help="Keep N polysemous lemmas (default all)."
)
@click.option("--wordnet-dir", default=None, help="WordNet 3.0 dict directory (default: auto-detect).")
@click.option("--traces", "traces", default=None, help="Traces JSONL to import (with --corpus traces).")
@click.option("--engine", default="hf", show_default=True, help="hf (transformers) or vllm.")
@click.option("--revision", default=None, help="Hub revision of the model.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--device-map", default=None, help="e.g. auto: spread a large checkpoint over the GPUs.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "auto"]),
    default="float32",
    show_default=True,
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for sampling pairs and random-init twins."
)
@click.option(
    "--weights-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True
)
@click.option("--slug", default=None, help="Name of the model's routing config (default: from the model id).")
@click.option(
    "--random-init", is_flag=True, help="Route a seeded random-init twin of the architecture (a null model)."
)
@click.option("--trust-remote-code", is_flag=True, help="Run the checkpoint's own code (off unless given).")
@click.option("--texts-per-shard", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--executor", default="local", show_default=True, help="local or ray.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(**options) -> None:
    """Route a corpus through MODEL and write (or resume) the atlas in OUT."""
    from atlas_build.build import BuildConfig, run_build

    progress = not options.pop("no_progress")
    config = BuildConfig(progress=progress, **options)
    stats = run_build(config, log=click.echo)
    rate = f"{stats.tokens_per_s:,.0f} tokens/s" if stats.tokens else "nothing new to route"
    click.echo(
        f"done: {stats.texts} texts, {stats.tokens} tokens routed ({rate}), "
        f"{stats.shards_written} shards written, {stats.shards_skipped} resumed; "
        f"atlas: {stats.files} files, {stats.bytes / 1e6:.1f} MB in {config.out}"
    )
