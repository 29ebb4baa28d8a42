"""SYNTHETIC atlases for the metrics tests: custom senses, several models, substitutions and traces.

Everything is written in the real schema with the atlas writer, so the metrics read it exactly as they read
a built atlas (through `datasets.load_dataset`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_table
from atlas_build.atlas.schema import (
    MODELS,
    MODELS_SCHEMA,
    SENSE_PAIRS,
    SENSE_PAIRS_SCHEMA,
    SENSES,
    SENSES_SCHEMA,
    SUBSTITUTIONS,
    SUBSTITUTIONS_SCHEMA,
    TRACES,
    TRACES_SCHEMA,
    routing_config_name,
    routing_schema,
)
from atlas_build.atlas.store import write_config
from atlas_build.atlas.synthetic import random_routing, synthetic_models_row, synthetic_pairs


@dataclass
class Tokens:
    """Every routed token of the atlas, in routing-row order."""

    text: np.ndarray  # [T] index into `texts`
    corpus: np.ndarray  # [T] corpus name
    token_index: np.ndarray  # [T]
    words: list[str]  # [T]
    is_target: np.ndarray  # [T]
    token_ids: np.ndarray  # [T]
    segment: list[str | None]
    marker: list[str | None]
    texts: list[dict]  # one per routed text: {"corpus", "id", "row"}


RoutingFn = Callable[[Tokens, np.random.Generator], np.ndarray]  # -> experts [T, L, k]


def model_row(slug: str, *, random_init: bool, n_experts=32, n_layers=4, top_k=4, **extra) -> dict:
    row = synthetic_models_row(n_experts, n_layers, top_k, slug=slug)
    row.update(random_init=random_init, **extra)
    return row


def senses_table(rows: list[dict]) -> pa.Table:
    """Sense rows from `{"lemma", "sense", "example", "words": [...], "target_at": i}` (target = the lemma)."""
    out = []
    for r in rows:
        words = list(r["words"])
        words.insert(r["target_at"], r["lemma"])
        text = " ".join(words)
        start = len(" ".join(words[: r["target_at"]])) + (1 if r["target_at"] else 0)
        synset = f"{r['lemma']}.n.{r['sense'] + 1:02d}"
        out.append(
            {
                "example_id": f"{r['lemma']}.n|{synset}|{r['example']}",
                "lemma": r["lemma"],
                "pos": "n",
                "synset": synset,
                "sense_key": f"{r['lemma']}%1:00:{r['sense']:02d}::",
                "sense_number": r["sense"] + 1,
                "lemma_n_senses": r.get("n_senses", 2),
                "lexname": "noun.artifact",
                "gloss": f"synthetic sense {r['sense'] + 1}",
                "text": text,
                "target_start": start,
                "target_end": start + len(r["lemma"]),
                "target_form": r["lemma"],
                "source": "synthetic",
            }
        )
    return pa.Table.from_pylist(out, schema=SENSES_SCHEMA)


def _tokenize(text: str, target: tuple[int, int] | None, split_target: bool):
    """Whitespace words; with `split_target` the target word becomes two sub-tokens."""
    words, spans = [], []
    pos = 0
    for word in text.split(" "):
        start = text.index(word, pos)
        end = start + len(word)
        if split_target and target and start == target[0] and len(word) > 3:
            words += [word[:3], word[3:]]
            spans += [(start, start + 3), (start + 3, end)]
        else:
            words.append(word)
            spans.append((start, end))
        pos = end
    return words, spans


def write_atlas(
    root: Path,
    senses: pa.Table,
    models: list[tuple[dict, RoutingFn]],
    *,
    pairs: pa.Table | None = None,
    substitutions: pa.Table | None = None,
    traces: list[dict] | None = None,
    split_target: bool = False,
    seed: int = 0,
) -> Path:
    """Write a SYNTHETIC atlas: senses (+ pairs), optional substitutions and traces, one routing per model.

    `traces`: `[{"trace_id", "tokens": [(word, segment, marker), ...]}]`.
    """
    from dataset_cards.render import write_card

    root = Path(root)
    pairs = pairs if pairs is not None else synthetic_pairs(senses)
    texts: list[dict] = []
    words_all, spans_all, corpus_all, text_all, target_all, seg_all, mark_all = [], [], [], [], [], [], []
    sources = [(SENSES, "example_id", senses)]
    if substitutions is not None:
        sources.append((SUBSTITUTIONS, "substitution_id", substitutions))
    for corpus, id_column, table in sources:
        for row in table.to_pylist():
            target = (row["target_start"], row["target_end"])
            words, spans = _tokenize(row["text"], target, split_target)
            texts.append({"corpus": corpus, "id": row[id_column], "row": row})
            for w, (s, e) in zip(words, spans, strict=True):
                words_all.append(w)
                spans_all.append((s, e))
                corpus_all.append(corpus)
                text_all.append(len(texts) - 1)
                target_all.append(s < target[1] and e > target[0])
                seg_all.append(None)
                mark_all.append(None)
    trace_rows = []
    for trace in traces or []:
        text = " ".join(w for w, _, _ in trace["tokens"])
        texts.append({"corpus": TRACES, "id": trace["trace_id"], "row": trace})
        pos = 0
        for word, segment, marker in trace["tokens"]:
            start = text.index(word, pos)
            pos = start + len(word)
            words_all.append(word)
            spans_all.append((start, pos))
            corpus_all.append(TRACES)
            text_all.append(len(texts) - 1)
            target_all.append(False)
            seg_all.append(segment)
            mark_all.append(marker)
        trace_rows.append(
            {
                "trace_id": trace["trace_id"],
                "model_slug": models[0][0]["model_slug"],
                "text": text,
                "template": "plain",
                "segments": [],
                "source": "synthetic",
                "meta": None,
            }
        )
    vocab: dict[str, int] = {}
    token_ids = np.array([vocab.setdefault(w, len(vocab)) for w in words_all], dtype=np.int64)
    text_index = np.array(text_all, dtype=np.int64)
    counts = np.bincount(text_index, minlength=len(texts))
    tokens = Tokens(
        text=text_index,
        corpus=np.array(corpus_all),
        token_index=np.arange(len(text_index)) - np.repeat(np.cumsum(counts) - counts, counts),
        words=words_all,
        is_target=np.array(target_all, dtype=bool),
        token_ids=token_ids,
        segment=seg_all,
        marker=mark_all,
        texts=texts,
    )
    manifest = Manifest()
    write_config(root, manifest, SENSES, senses, SENSES_SCHEMA)
    write_config(root, manifest, SENSE_PAIRS, pairs, SENSE_PAIRS_SCHEMA)
    if substitutions is not None:
        write_config(root, manifest, SUBSTITUTIONS, substitutions, SUBSTITUTIONS_SCHEMA)
    if trace_rows:
        write_config(
            root, manifest, TRACES, pa.Table.from_pylist(trace_rows, schema=TRACES_SCHEMA), TRACES_SCHEMA
        )
    model_rows = [row for row, _ in models]
    write_config(
        root, manifest, MODELS, pa.Table.from_pylist(model_rows, schema=MODELS_SCHEMA), MODELS_SCHEMA
    )
    for i, (row, fn) in enumerate(models):
        experts = fn(tokens, np.random.default_rng(seed + 1000 * i))
        schema = routing_schema(row["n_routed_experts"], len(row["moe_layers"]), row["top_k"], None)
        table = routing_table(
            schema,
            source_ids=[t["id"] for t in texts],
            corpus=[t["corpus"] for t in texts],
            token_counts=counts,
            token_ids=token_ids,
            tokens=words_all,
            char_spans=np.array(spans_all, dtype=np.int32).reshape(-1, 2),
            is_target=tokens.is_target,
            experts=experts,
            weights=None,
            segment=seg_all,
            marker=mark_all,
        )
        write_config(root, manifest, routing_config_name(row["model_slug"]), table, schema)
    manifest.corpus_counts = {"synthetic": True}
    manifest.builds.append(
        {"kind": "synthetic", "summary": "synthetic metrics-test atlas (not real routing)"}
    )
    manifest.save(root)
    write_card(root)
    return root


def random_fn(n_experts: int, n_layers: int, top_k: int) -> RoutingFn:
    def fn(tokens: Tokens, rng: np.random.Generator) -> np.ndarray:
        return random_routing(rng, len(tokens.text), n_layers, n_experts, top_k)[0]

    return fn


def distinct_fill(sets: np.ndarray, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Replace repeated ids within each row of `sets` `[n, k]` by unused random ids from [low, high)."""
    out = sets.copy()
    for row in out:  # test helper: rows are few
        seen: set[int] = set()
        for j, e in enumerate(row):
            if int(e) in seen:
                choices = [c for c in range(low, high) if c not in seen and c not in row]
                row[j] = rng.choice(choices)
            seen.add(int(row[j]))
    return out
