"""The `text-coverage` check: every text of every corpus a model routed has its routing rows, as many as its
tokenizer gives.

Which corpora a model routed comes from the manifest's build records of that model (`builds[]`, through
`routed_text_configs`), joined with every corpus its routing rows name: a build routes a whole corpus config,
so a corpus with some of its texts routed must have all of them. All routing rows of one text can be deleted
with the manifest totals and the card recomputed; every other check reads rows, so only this one counts the
texts that have none.

Token counts: where the model's tokenizer is loaded, a plain text's rows (not a trace's: generated tokens
need not re-tokenize) must number what a fresh tokenization of its text gives (special tokens added, as the
engines route). Without a tokenizer only presence is checked, and the `tokenization` check says why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import ROUTING_PREFIX, TEXT_CONFIGS, TEXT_ID_COLUMN, TRACES
from atlas_build.atlas.texts import routed_text_configs
from validation.ledger import Ledger

CHECK = "text-coverage"
ENCODE_BATCH = 256
MAX_KEPT = 100  # examples gathered per config (the ledger keeps fewer): memory stays flat on a broken atlas


def routed_corpora(manifest: Manifest, config: str, row_counts: Counter) -> list[str]:
    """The text configs the model of `config` routed: its build records' and those its rows name."""
    slug = config[len(ROUTING_PREFIX) :]
    named = {corpus for corpus, _ in row_counts}
    recorded = set(routed_text_configs(manifest.builds, slug))
    return [c for c in TEXT_CONFIGS if c in recorded | named]


def rows_per_text(paths: list[Path]) -> Counter:
    """(corpus, source_id) -> its number of routing rows, over the files of one routing config."""
    counts: Counter = Counter()
    for path in paths:
        table = pq.read_table(path, columns=["corpus", "source_id"])
        grouped = table.group_by(["corpus", "source_id"]).aggregate([([], "count_all")])
        counts.update(
            dict(
                zip(
                    zip(grouped["corpus"].to_pylist(), grouped["source_id"].to_pylist(), strict=True),
                    grouped["count_all"].to_pylist(),
                    strict=True,
                )
            )
        )
    return counts


def check_coverage(
    config: str,
    paths: list[Path],
    manifest: Manifest,
    text_files: dict[str, list[Path]],
    tokenizer: Any,
    ledger: Ledger,
) -> None:
    """Every text of every corpus the model of `config` routed has rows in `config`, as many as its
    tokenizer gives (when loaded)."""
    ledger.declare(config, CHECK)
    counts = rows_per_text(paths)
    corpora = routed_corpora(manifest, config, counts)
    ledger.declare(config, CHECK, corpora=corpora, token_counts_checked=tokenizer is not None)
    checked = failing = 0
    examples: list[str] = []
    for corpus in corpora:
        files = text_files.get(corpus) or []
        if not files:
            checked, failing = checked + 1, failing + 1
            examples.append(
                f"{corpus}: the model's build record says it routed {corpus}, the atlas holds none"
            )
            continue
        pending: list[tuple[str, str]] = []
        slug = config[len(ROUTING_PREFIX) :]
        for path in files:
            # Traces are each model's own (formatted with its chat template): only this model's are owed.
            columns = [TEXT_ID_COLUMN[corpus], "text"] + (["model_slug"] if corpus == TRACES else [])
            table = pq.read_table(path, columns=columns)
            owners = table.column("model_slug").to_pylist() if corpus == TRACES else [slug] * table.num_rows
            for text_id, text, owner in zip(
                table.column(0).to_pylist(), table.column(1).to_pylist(), owners, strict=True
            ):
                if owner != slug:
                    continue
                checked += 1
                have = counts.get((corpus, text_id), 0)
                if have == 0:
                    failing += 1
                    if len(examples) < MAX_KEPT:
                        examples.append(f"{corpus}:{text_id} has no routing rows in {config}")
                elif tokenizer is not None and corpus != TRACES:
                    pending.append((text_id, text))
                if len(pending) >= ENCODE_BATCH:
                    failing += _count_problems(corpus, pending, counts, tokenizer, config, examples)
                    pending = []
        failing += _count_problems(corpus, pending, counts, tokenizer, config, examples)
    ledger.count(config, CHECK, "texts routed whole", checked, failing)
    ledger.add_examples(config, CHECK, examples)


def _count_problems(corpus, pending, counts, tokenizer, config, examples) -> int:
    """How many of `pending` (id, text) have another number of rows than their fresh tokenization."""
    if not pending:
        return 0
    encoded = tokenizer([text for _, text in pending], add_special_tokens=True)["input_ids"]
    bad = 0
    for (text_id, _), ids in zip(pending, encoded, strict=True):
        have = counts[(corpus, text_id)]
        if have != len(ids):
            bad += 1
            if len(examples) < MAX_KEPT:
                examples.append(
                    f"{corpus}:{text_id} has {have} routing rows in {config}, its tokenizer gives {len(ids)} tokens"
                )
    return bad
