"""`atlas build`: route a corpus through a model into an atlas directory (resumable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from atlas_build.commands._options import SEED, model_loading_options


@click.command("build")
@click.option(
    "--model", required=True, help="Built-in name (tiny-deepseek-v3), checkpoint directory or hub id."
)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Atlas directory.")
@click.option(
    "--corpus",
    type=click.Choice(["wordnet", "traces", "wic", "swords", "jsonl", "text"]),
    default="wordnet",
    show_default=True,
    help="wordnet (built in), traces, or your own: wic, swords, jsonl (a probe set), text (unlabelled).",
)
@click.option(
    "--max-lemmas", type=click.IntRange(min=1), default=None, help="Keep N polysemous lemmas (default all)."
)
@click.option("--wordnet-dir", default=None, help="WordNet 3.0 dict directory (default: auto-detect).")
@click.option("--traces", "traces", default=None, help="Traces JSONL to import (with --corpus traces).")
@click.option(
    "--wic", default=None, help="--corpus wic: the unzipped WiC_dataset directory (*.data.txt, *.gold.txt)."
)
@click.option("--swords", default=None, help="--corpus swords: a SWORDS file (swords-v1.1_dev.json.gz).")
@click.option(
    "--texts",
    default=None,
    help="--corpus jsonl: the probe set (JSONL); --corpus text: a JSONL file or a save_to_disk dataset directory.",
)
@click.option(
    "--text-column", default=None, help="--corpus text: the column holding the text (default: text)."
)
@click.option("--engine", default="hf", show_default=True, help="hf (transformers) or vllm.")
@model_loading_options
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="Seed for sampling pairs and random-init twins.",
)
@click.option(
    "--model-id",
    default=None,
    help="Name recorded for the model (default: hub id, checkpoint folder name or built-in name).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads (default: 1 for small models, else the CPUs this process may use).",
)
@click.option(
    "--engine-arg",
    "engine_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="vllm engine: keyword argument of vllm.LLM (repeatable), e.g. enforce_eager=false; VALUE is JSON or text.",
)
@click.option(
    "--weights-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True
)
@click.option(
    "--scores",
    type=click.IntRange(min=1),
    default=None,
    help="Also store, per token and MoE layer, the top-M experts by the router's selection score and those "
    "scores (M >= top-k; hf engine; default: off).",
)
@click.option(
    "--router-inputs",
    default=None,
    metavar="LAYERS",
    help="Also store the router's input vector of every token at these MoE layers: all, or decoder layers "
    "like 3,5,10-12 (hf engine; default: none).",
)
@click.option(
    "--router-input-dim",
    type=int,
    default=None,
    metavar="D",
    help="Project the stored router inputs to D dimensions (seeded Gaussian JL, seed --seed); 0 keeps the "
    "full vector. Default 256.",
)
@click.option(
    "--replace-routing",
    is_flag=True,
    help="Rebuild a model already in the atlas with other --scores / --weights-dtype: its routing of every "
    "corpus is replaced by this build's (without it, such a rebuild is refused).",
)
@click.option("--slug", default=None, help="Name of the model's routing config (default: from the model id).")
@click.option(
    "--random-init", is_flag=True, help="Route a seeded random-init twin of the architecture (a null model)."
)
@click.option("--texts-per-shard", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--executor", default="local", show_default=True, help="local or ray.")
@click.option(
    "--tensor-parallel-size",
    type=click.IntRange(min=1),
    default=None,
    help="vllm engine: GPUs per model replica (8 for DeepSeek-R1 on one 8-GPU node).",
)
@click.option(
    "--ray-address",
    default=None,
    help="ray executor: cluster address (auto, ray://head:10001); default starts Ray on this machine.",
)
@click.option(
    "--shards",
    "ray_workers",
    type=click.IntRange(min=1),
    default=None,
    help="ray executor: workers (actors, one engine each) the shards are spread over; default: as many as fit.",
)
@click.option(
    "--gpus-per-worker", type=click.FloatRange(min=0), default=None, help="ray executor: GPUs per worker."
)
@click.option(
    "--cpus-per-worker", type=click.FloatRange(min=0), default=None, help="ray executor: CPUs per worker."
)
@click.option(
    "--shard-retries",
    type=click.IntRange(min=0),
    default=None,
    help="ray executor: extra attempts of a failed shard (default 2).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(**options) -> None:
    """Route a corpus through MODEL and write (or resume) the atlas in OUT."""
    from atlas_build.builder import BuildConfig, run_build
    from atlas_build.errors import BuildOptionsError

    progress = not options.pop("no_progress")
    engine_kwargs = {}
    llm_kwargs = parse_engine_args(options.pop("engine_args"))
    if llm_kwargs:
        if options["engine"] != "vllm":
            raise BuildOptionsError(
                "--engine-arg passes arguments to vllm.LLM: it is an option of --engine vllm"
            )
        engine_kwargs["llm_kwargs"] = llm_kwargs
    tensor_parallel_size = options.pop("tensor_parallel_size")
    if tensor_parallel_size is not None:
        if options["engine"] != "vllm":
            raise BuildOptionsError("--tensor-parallel-size is an option of --engine vllm")
        engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
    ray_options = {
        key: options.pop(option)
        for option, key in (
            ("ray_address", "address"),
            ("ray_workers", "workers"),
            ("gpus_per_worker", "gpus_per_worker"),
            ("cpus_per_worker", "cpus_per_worker"),
            ("shard_retries", "max_retries"),
        )
    }
    ray_options = {key: value for key, value in ray_options.items() if value is not None}
    if ray_options and options["executor"] != "ray":
        raise BuildOptionsError(
            "--ray-address, --shards, --gpus-per-worker, --cpus-per-worker and --shard-retries are options "
            "of --executor ray"
        )
    config = BuildConfig(
        progress=progress, engine_kwargs=engine_kwargs, executor_options=ray_options, **options
    )
    try:
        stats = run_build(config, log=click.echo)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: nothing is half-written. Run the same command again to resume: the finished shards "
            f"in {config.out} are kept",
            err=True,
        )
        sys.exit(130)
    rate = f"{stats.tokens_per_s:,.0f} tokens/s" if stats.tokens else "nothing new to route"
    click.echo(
        f"done: {stats.texts} texts, {stats.tokens} tokens routed ({rate}), "
        f"{stats.shards_written} shards written, {stats.shards_skipped} resumed; "
        f"atlas: {stats.files} files, {stats.bytes / 1e6:.1f} MB in {config.out}"
    )


def parse_engine_args(pairs: tuple[str, ...]) -> dict:
    """`("enforce_eager=false", "max_num_batched_tokens=8192")` -> `{"enforce_eager": False, ...}`.

    VALUE is read as JSON when it parses (numbers, true/false, null, lists), else kept as text.
    """
    from atlas_build.errors import BuildOptionsError

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise BuildOptionsError(
                f"--engine-arg {pair!r} is not KEY=VALUE (e.g. --engine-arg enforce_eager=false)"
            )
        if key in out:
            raise BuildOptionsError(f"--engine-arg {key} is given twice")
        try:
            out[key] = json.loads(value)
        except (ValueError, RecursionError):
            out[key] = value
    return out
