"""The user's corpora (wic, swords, jsonl) in the shape the sense metrics read, so each gets the same metrics.

Their configs have the roles of `senses` / `sense-pairs` / `substitutions` (`atlas_build.atlas.schema`), without
WordNet's columns. `as_senses` gives an examples config the columns `load_sense_corpus` reads: `synset` is the
corpus's `label` (a sense or group id), or the example's own id when it has none (so each unlabelled example is
its own sense: the sense-pair metrics read `same_sense` from the pairs, never the synsets, and the probe is only
computed for a corpus whose every example is labelled); `sense_number` is 1 (no sense order is known); a missing
pos is the empty string (the cluster is then the lemma alone). Examples without a target are left out.

Unlabelled text (`texts`) has no target: it feeds only the corpus-wide statistics, which read every routing row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.schema import (
    JSONL_EXAMPLES,
    JSONL_PAIRS,
    SWORDS_EXAMPLES,
    SWORDS_RELATIONS,
    SWORDS_SUBSTITUTIONS,
    WIC_EXAMPLES,
    WIC_PAIRS,
)
from atlas_build.metrics.estimators.senses import SenseCorpus, load_sense_corpus

# kind -> (examples config, pairs config | None, substitutions config | None)
CORPORA: dict[str, tuple[str, str | None, str | None]] = {
    "wic": (WIC_EXAMPLES, WIC_PAIRS, None),
    "swords": (SWORDS_EXAMPLES, None, SWORDS_SUBSTITUTIONS),
    "jsonl": (JSONL_EXAMPLES, JSONL_PAIRS, None),
}
# Every config the metrics read of the user's corpora (checked against the manifest with the others).
USER_CONFIGS = frozenset(c for configs in CORPORA.values() for c in configs if c)
# The substitution contrast of each corpus: Δ = mean κ(first) − mean κ(second).
CONTRASTS = {SWORDS_SUBSTITUTIONS: (SWORDS_RELATIONS[0], SWORDS_RELATIONS[-1])}  # acceptable − rejected


@dataclass
class UserCorpus:
    """One user's corpus, ready for the sense metrics.

    Attributes:
        kind: wic, swords or jsonl.
        examples_config: the config whose routing rows hold the examples' targets.
        corpus: the examples (with targets) and pairs as `SenseCorpus` codes (no pairs: substitutions only).
        labelled: every example carries a label, so the routing-only probe applies.
        substitutions: the substitutions rows (relation, example_id, lemma, pos, substitution_id), or None.
        substitutions_config: their config (the routing rows' corpus), or None.
        counts: rows per config, for `metrics.json`.
    """

    kind: str
    examples_config: str
    corpus: SenseCorpus
    labelled: bool
    substitutions: pa.Table | None
    substitutions_config: str | None
    counts: dict[str, int]

    @property
    def has_pairs(self) -> bool:
        return len(self.corpus.pair_a) > 0

    @property
    def contrast(self) -> tuple[str, str] | None:
        return CONTRASTS.get(self.substitutions_config or "")


def as_senses(examples: pa.Table) -> pa.Table:
    """The examples with a target, as the columns of `senses` that the sense metrics read (see module doc)."""
    examples = examples.filter(pc.is_valid(examples.column("target_start")))
    ids = examples.column("example_id")
    return pa.table(
        {
            "example_id": ids,
            "lemma": examples.column("lemma"),
            "pos": pc.fill_null(examples.column("pos"), ""),
            "synset": pc.coalesce(examples.column("label"), ids),
            "sense_number": pa.array(np.ones(examples.num_rows, dtype=np.int16)),
            "text": examples.column("text"),
            "target_start": examples.column("target_start"),
            "target_end": examples.column("target_end"),
            "target_form": examples.column("target_form"),
            "source": examples.column("source"),
        }
    )


def _as_subs(substitutions: pa.Table) -> pa.Table:
    return substitutions.set_column(
        substitutions.schema.get_field_index("pos"), "pos", pc.fill_null(substitutions.column("pos"), "")
    )


def load_user_corpora(src) -> list[UserCorpus]:
    """The user's corpora the atlas holds (an `AtlasSource`), in kind order; those with nothing to measure
    (no example with a target, or neither pairs nor substitutions) are left out."""
    out = []
    for kind, (examples_config, pairs_config, subs_config) in CORPORA.items():
        examples = src.table(examples_config)
        if examples is None or not examples.num_rows:
            continue
        senses = as_senses(examples)
        pairs = src.table(pairs_config) if pairs_config else None
        subs = src.table(subs_config) if subs_config else None
        if not senses.num_rows or not (
            (pairs is not None and pairs.num_rows) or (subs is not None and subs.num_rows)
        ):
            continue
        empty_pairs = pa.table(
            {
                "example_a": pa.array([], pa.string()),
                "example_b": pa.array([], pa.string()),
                "same_sense": pa.array([], pa.bool_()),
            }
        )
        counts = {examples_config: examples.num_rows}
        if pairs is not None:
            counts[pairs_config] = pairs.num_rows
        if subs is not None:
            counts[subs_config] = subs.num_rows
        out.append(
            UserCorpus(
                kind=kind,
                examples_config=examples_config,
                corpus=load_sense_corpus(
                    senses, pairs if pairs is not None and pairs.num_rows else empty_pairs
                ),
                labelled=bool(
                    pc.all(
                        pc.is_valid(
                            examples.filter(pc.is_valid(examples.column("target_start"))).column("label")
                        )
                    ).as_py()
                ),
                substitutions=_as_subs(subs) if subs is not None and subs.num_rows else None,
                substitutions_config=subs_config if subs is not None and subs.num_rows else None,
                counts=counts,
            )
        )
    return out
