"""Helpers of the bring-your-own-corpus tests (test_wic, test_swords, test_jsonl, test_text).

The model is the built-in tiny-deepseek-v3, which is RANDOM-INIT: its routing carries no finding; the tests check
the plumbing (rows, spans, validation, metrics per corpus), never a sense effect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from atlas_build.builder import BuildConfig, run_build

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = "tiny-deepseek-v3"
ROUTING = f"routing-{MODEL}"


def build(out: Path, corpus: str, **inputs):
    """One build of `corpus` into `out` with the tiny model (small shards, so resuming is exercised)."""
    return run_build(
        BuildConfig(model=MODEL, out=out, corpus=corpus, progress=False, texts_per_shard=8, **inputs),
        log=lambda *_: None,
    )


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the build state (the lock comes and goes), by relative path."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != ".atlas"
    }


def validate(root: Path, **options):
    from atlas_build.models import load_tokenizer
    from validation import run_validation

    return run_validation(root, tokenizer_loader=load_tokenizer, **options)


def statuses(report, config: str) -> dict[str, str]:
    return {r.check: r.status for r in report.results if r.config == config}


def failures(report) -> list[str]:
    return [
        f"{r.config} {r.check} {r.status}: {r.failing_examples}"
        for r in report.results
        if r.status != "passed"
    ]


def read(root: Path, config: str):
    return pq.read_table(sorted((root / config).glob(f"{config}-*.parquet")))


def rewrite(root: Path, config: str, change) -> None:
    """Replace `config`'s rows with `change(rows)` in place (one file, same schema): a planted defect."""
    files = sorted((root / config).glob(f"{config}-*.parquet"))
    table = pq.read_table(files)
    rows = change(table.to_pylist())
    for path in files:
        path.unlink()
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), files[0])


def copy_atlas(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def cli(*args: str):
    from click.testing import CliRunner

    from atlas_build.cli import main

    return CliRunner().invoke(main, list(args))


def no_model(monkeypatch):
    """Fail the test if the build loads a model (bad input must be refused before that)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("atlas_build.builder.steps.make_engine", refuse)


def refused_cleanly(result, *fragments: str) -> str:
    """A CLI result that failed with one line naming `fragments`, and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def metrics_of(root: Path):
    """`compute_metrics` on the atlas (few resamples: the estimates, not the intervals, are compared)."""
    from atlas_build.metrics import MetricsOptions, compute_metrics

    return compute_metrics(root, options=MetricsOptions(n_bootstrap=50, n_permutations=19)).metrics


def last_target_experts(root: Path, corpus: str) -> dict[str, list[set[int]]]:
    """Per text of `corpus`: the expert sets, per MoE layer, of its last target token (read with pyarrow)."""
    routing = read(root, ROUTING).to_pandas()
    rows = routing[(routing.corpus == corpus) & routing.is_target].sort_values(["source_id", "token_index"])
    last = rows.groupby("source_id").tail(1)
    return {
        sid: [set(layer.tolist()) for layer in experts]
        for sid, experts in zip(last.source_id, last.experts, strict=True)
    }


def kappa(a: list[set[int]], b: list[set[int]], top_k: int, n_experts: int) -> list[float]:
    """Per layer: (|A ∩ B| − k²/N) / (k − k²/N)."""
    chance = top_k * top_k / n_experts
    return [(len(x & y) - chance) / (top_k - chance) for x, y in zip(a, b, strict=True)]


def layer_mean_of_means(values: list[list[float]]) -> float:
    """Mean over layers of the per-layer mean over rows."""
    n_layers = len(values[0])
    return sum(sum(v[layer] for v in values) / len(values) for layer in range(n_layers)) / n_layers
