"""The sense-pairs corpus: balanced, consistent with senses, deterministic."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from atlas_build.atlas.schema import SENSE_PAIRS_SCHEMA, SENSES_SCHEMA
from atlas_build.corpora.pairs import build_sense_pairs


def _senses(spec: dict[tuple[str, str], dict[str, int]]) -> pa.Table:
    """A minimal senses table: {(lemma, pos): {synset: n_examples}}."""
    rows = []
    for (lemma, pos), synsets in spec.items():
        for rank, (synset, n) in enumerate(synsets.items(), start=1):
            for i in range(n):
                rows.append(
                    {
                        "example_id": f"{lemma}.{pos}|{synset}|{i}",
                        "lemma": lemma,
                        "pos": pos,
                        "synset": synset,
                        "sense_key": f"{lemma}%1:00:00::",
                        "sense_number": rank,
                        "lemma_n_senses": len(synsets),
                        "lexname": "noun.Tops",
                        "gloss": "g",
                        "text": f"a {lemma} {i}",
                        "target_start": 2,
                        "target_end": 2 + len(lemma),
                        "target_form": lemma,
                        "source": "test",
                    }
                )
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


def _check(pairs: pa.Table, senses: pa.Table, max_per_lemma: int = 20) -> None:
    assert pairs.schema == SENSE_PAIRS_SCHEMA
    examples = {r["example_id"]: r for r in senses.to_pylist()}
    rows = pairs.to_pylist()
    assert len({r["pair_id"] for r in rows}) == len(rows)
    per_lemma: dict[tuple[str, str], Counter] = {}
    for r in rows:
        a, b = examples[r["example_a"]], examples[r["example_b"]]
        assert r["example_a"] < r["example_b"]
        assert (a["lemma"], a["pos"]) == (b["lemma"], b["pos"]) == (r["lemma"], r["pos"])
        assert (r["synset_a"], r["synset_b"]) == (a["synset"], b["synset"])
        assert r["same_sense"] == (a["synset"] == b["synset"])
        per_lemma.setdefault((r["lemma"], r["pos"]), Counter())[r["same_sense"]] += 1
    for counts in per_lemma.values():
        assert counts[True] == counts[False] <= max_per_lemma // 2


def test_synthetic_pairs():
    senses = _senses(
        {
            ("x", "n"): {"x.n.01": 3, "x.n.02": 1},  # 3 same, 3 different
            ("y", "n"): {"y.n.01": 1, "y.n.02": 1, "y.n.03": 1},  # no same-sense pair
            ("z", "v"): {"z.v.01": 4},  # one sense only
            ("w", "a"): {"w.a.01": 6, "w.s.02": 6, "w.a.03": 2},  # more than the cap
        }
    )
    pairs = build_sense_pairs(senses)
    _check(pairs, senses)
    counts = Counter((r["lemma"], r["same_sense"]) for r in pairs.to_pylist())
    assert counts == {("x", True): 3, ("x", False): 3, ("w", True): 10, ("w", False): 10}
    assert pairs.column("pair_id").to_pylist()[:2] == ["w.a|000", "w.a|001"]
    capped = build_sense_pairs(senses, max_pairs_per_lemma=2)
    _check(capped, senses, max_per_lemma=2)
    assert capped.num_rows == 4
    assert build_sense_pairs(senses, seed=0).equals(pairs)
    assert not build_sense_pairs(senses, seed=1).equals(pairs)  # w has many candidate pairs


def test_pairs_of_wordnet(small):
    pairs, senses = small["sense-pairs"], small["senses"]
    _check(pairs, senses)
    # The small corpus prefers lemmas that have a same-sense pair: most of them give pairs.
    assert len({r["lemma"] for r in pairs.to_pylist()}) >= 0.8 * len(set(senses.column("lemma").to_pylist()))
