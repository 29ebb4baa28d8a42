"""Helpers of the validation tests: the clean SYNTHETIC test atlas and an editor to break copies of it.

The clean atlas is `write_synthetic_atlas` plus what the synthetic generator leaves out, so that every
check has something to check: a substitutions config routed alongside the senses, a models row with a
routed_scaling_factor other than 1, and a tokenizer the `token-strings` check can load offline (a
`tokenizers` WordLevel model over the whitespace tokens, saved as a directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import nested_fixed_list, routing_array, routing_table
from atlas_build.atlas.rows import METHOD as ROWS_METHOD
from atlas_build.atlas.rows import file_fingerprints
from atlas_build.atlas.schema import (
    MODELS,
    MODELS_SCHEMA,
    SENSES,
    SUBSTITUTIONS,
    SUBSTITUTIONS_SCHEMA,
    routing_config_name,
    routing_schema,
)
from atlas_build.atlas.store import write_config
from atlas_build.atlas.synthetic import SYNTHETIC_SLUG, random_routing, tokenize_whitespace
from atlas_build.atlas.writer import COMPRESSION, ROW_GROUP_ROWS, sha256_file
from dataset_cards.render import write_card
from dataset_cards.synthetic import write_synthetic_atlas

ROUTING = routing_config_name(SYNTHETIC_SLUG)
SCALE = 2.5  # DeepSeek-V3/R1's routed_scaling_factor
N_EXPERTS, N_LAYERS, TOP_K = 32, 4, 4


def _substitutions(senses: pa.Table) -> pa.Table:
    """One synonym and one other-sense substitution of the first example of every sense."""
    rows = []
    lemmas = sorted(set(senses.column("lemma").to_pylist()))
    for row in senses.to_pylist():
        if not row["example_id"].endswith("|0"):
            continue
        other = lemmas[(lemmas.index(row["lemma"]) + 1) % len(lemmas)]
        other_sense = row["synset"][:-2] + ("02" if row["synset"].endswith("01") else "01")
        for relation, substitute, synset in (
            ("synonym", f"syn{other[5:]}", row["synset"]),
            ("other-sense", other, other_sense),
        ):
            start, end = row["target_start"], row["target_end"]
            rows.append(
                {
                    "substitution_id": f"{row['example_id']}|{relation}",
                    "example_id": row["example_id"],
                    "lemma": row["lemma"],
                    "pos": row["pos"],
                    "relation": relation,
                    "substitute": substitute,
                    "substitute_synset": synset,
                    "text": row["text"][:start] + substitute + row["text"][end:],
                    "target_start": start,
                    "target_end": start + len(substitute),
                    "source": "synthetic",
                }
            )
    return pa.Table.from_pylist(rows, schema=SUBSTITUTIONS_SCHEMA)


def _routing(
    senses: pa.Table, substitutions: pa.Table, schema: pa.Schema, rng
) -> tuple[pa.Table, dict[str, int]]:
    texts, ids, corpora, starts, ends = [], [], [], [], []
    for table, corpus, id_column in (
        (senses, SENSES, "example_id"),
        (substitutions, SUBSTITUTIONS, "substitution_id"),
    ):
        texts += table.column("text").to_pylist()
        ids += table.column(id_column).to_pylist()
        corpora += [corpus] * table.num_rows
        starts += table.column("target_start").to_pylist()
        ends += table.column("target_end").to_pylist()
    counts, tokens, spans = tokenize_whitespace(texts)
    is_target = (spans[:, 0] < np.repeat(ends, counts)) & (spans[:, 1] > np.repeat(starts, counts))
    vocab: dict[str, int] = {"[UNK]": 0}
    token_ids = np.array([vocab.setdefault(t, len(vocab)) for t in tokens], dtype=np.int64)
    experts, weights = random_routing(rng, len(tokens), N_LAYERS, N_EXPERTS, TOP_K, scale=SCALE)
    table = routing_table(
        schema,
        source_ids=ids,
        corpus=corpora,
        token_counts=counts,
        token_ids=token_ids,
        tokens=tokens,
        char_spans=spans,
        is_target=is_target,
        experts=experts,
        weights=weights,
    )
    return table, vocab


def _save_tokenizer(vocab: dict[str, int], path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(str(path))
    return path


def build_clean_atlas(root: Path, tokenizer_dir: Path | None) -> Path:
    """The clean SYNTHETIC test atlas at `root` (see the module docstring)."""
    write_synthetic_atlas(root, n_lemmas=20, n_experts=N_EXPERTS, n_layers=N_LAYERS, top_k=TOP_K, seed=0)
    manifest = Manifest.load(root)
    senses = pq.read_table(root / SENSES)
    substitutions = _substitutions(senses)
    model = pq.read_table(root / MODELS).to_pylist()[0]
    model["routed_scaling_factor"] = SCALE
    schema = routing_schema(N_EXPERTS, N_LAYERS, TOP_K, model["weights_dtype"])
    routing, vocab = _routing(senses, substitutions, schema, np.random.default_rng(1))
    if tokenizer_dir is not None:
        model["tokenizer"] = str(_save_tokenizer(vocab, tokenizer_dir))
    write_config(root, manifest, SUBSTITUTIONS, substitutions, SUBSTITUTIONS_SCHEMA)
    write_config(root, manifest, MODELS, pa.Table.from_pylist([model], schema=MODELS_SCHEMA), MODELS_SCHEMA)
    write_config(root, manifest, ROUTING, routing, schema)
    manifest.save(root)
    write_card(root)  # the card describes the atlas as it now is (the claims checks compare them)
    return root


class AtlasEditor:
    """Reads and rewrites one config file of a test atlas, keeping the manifest and the card in step (unless
    told not), as a careful adversary would: then only the check under test can see the defect."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, config: str) -> Path:
        return self.root / config / f"{config}-00000.parquet"

    def table(self, config: str) -> pa.Table:
        return pq.read_table(self.path(config))

    def write(
        self, config: str, table: pa.Table, update_manifest: bool = True, row_group_size: int = ROW_GROUP_ROWS
    ) -> None:
        """Write `table` as it is (no conforming: drifted schemas stay drifted); record it in the manifest."""
        path = self.path(config)
        pq.write_table(table, path, compression=COMPRESSION, row_group_size=row_group_size, store_schema=True)
        if update_manifest:
            rel = f"{config}/{path.name}"
            self.edit_manifest(
                lambda m: m["files"][rel].update(
                    sha256=sha256_file(path),
                    rows=table.num_rows,
                    bytes=path.stat().st_size,
                    rows_fingerprint={"method": ROWS_METHOD, "columns": file_fingerprints(path)},
                )
            )

    def edit_manifest(self, edit, derived: bool = True, card: bool = True) -> None:
        """Apply `edit` to manifest.json; `derived`: recompute its `configs` section from the edited file list;
        `card`: render the card again from the edited atlas."""
        path = self.root / "manifest.json"
        data = json.loads(path.read_text())
        edit(data)
        if derived:
            data["configs"] = Manifest(files=data["files"]).configs()
        path.write_text(json.dumps(data, indent=2))
        if card:
            self.refresh_card()

    def refresh_card(self) -> None:
        write_card(self.root)

    def card(self) -> str:
        return (self.root / "README.md").read_text(encoding="utf-8")

    def write_card_text(self, text: str) -> None:
        (self.root / "README.md").write_text(text, encoding="utf-8")

    def update(self, config: str, column: str, values: list) -> None:
        """Replace a whole column and write."""
        table = self.table(config)
        field = table.schema.field(column)
        index = table.schema.get_field_index(column)
        self.write(config, table.set_column(index, field, pa.array(values, field.type)))

    # ---- routing --------------------------------------------------------------------------------------
    def routing(self) -> pa.Table:
        return self.table(ROUTING)

    def arrays(self, table: pa.Table | None = None) -> tuple[np.ndarray, np.ndarray]:
        table = table if table is not None else self.routing()
        return routing_array(table.column("experts")).copy(), routing_array(table.column("weights")).copy()

    def with_arrays(self, table: pa.Table, experts=None, weights=None) -> pa.Table:
        for name, values in (("experts", experts), ("weights", weights)):
            if values is None:
                continue
            field = table.schema.field(name)
            leaf = field.type.value_type.value_type
            column = nested_fixed_list(np.asarray(values).astype(leaf.to_pandas_dtype()), leaf)
            table = table.set_column(table.schema.get_field_index(name), field, column)
        return table

    def text_rows(self, table: pa.Table, source_id: str) -> np.ndarray:
        return np.flatnonzero(np.array(table.column("source_id").to_pylist()) == source_id)
