"""`atlas build --corpus wic --wic DIR`: WiC's published files -> wic-examples / wic-pairs, routed, validated.

The fixture (tests/fixtures/wic, our own sentences) is in WiC's published layout; the expected offsets and labels
are recomputed here from the raw lines, independently of the reader. The model is RANDOM-INIT (tiny-deepseek-v3).
"""

from __future__ import annotations

import shutil

import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.corpora.custom import CorpusInputError
from atlas_build.corpora.wic import read
from atlas_build.errors import AtlasError

from .byo import (
    FIXTURES,
    ROUTING,
    build,
    cli,
    copy_atlas,
    failures,
    files_of,
    no_model,
    refused_cleanly,
    rewrite,
    statuses,
    validate,
)
from .byo import read as read_config

WIC = FIXTURES / "wic"


def raw_instances():
    """(split, line, fields, gold) from the fixture files, parsed the plain way."""
    out = []
    for split in ("train", "dev"):
        folder = WIC / "WiC_dataset" / split
        data = (folder / f"{split}.data.txt").read_text().strip().split("\n")
        gold = (folder / f"{split}.gold.txt").read_text().split()
        out += [
            (split, n, line.split("\t"), g)
            for n, (line, g) in enumerate(zip(data, gold, strict=True), start=1)
        ]
    return out


def test_reader_offsets_labels_and_splits():
    corpus = read(WIC)
    examples = {r["example_id"]: r for r in corpus.tables["wic-examples"].to_pylist()}
    pairs = {r["pair_id"]: r for r in corpus.tables["wic-pairs"].to_pylist()}
    instances = raw_instances()
    assert len(pairs) == len(instances) and len(examples) == 2 * len(instances)
    for split, number, (target, pos, indices, *sentences), gold in instances:
        pair = pairs[f"wic:{split}:{number:05d}"]
        assert pair["same_sense"] is (gold == "T") and pair["split"] == split
        assert (pair["lemma"], pair["pos"]) == (target, pos.lower())
        for side, (sentence, index) in enumerate(
            zip(sentences, map(int, indices.split("-")), strict=True), start=1
        ):
            example = examples[pair["example_a"] if side == 1 else pair["example_b"]]
            tokens = sentence.split(" ")
            start = sum(len(t) + 1 for t in tokens[:index])
            assert example["text"] == sentence and example["split"] == split
            assert (example["target_start"], example["target_end"]) == (start, start + len(tokens[index]))
            assert example["target_form"] == tokens[index] and example["label"] is None
    assert corpus.counts["splits"]["train"] == {"pairs": 8, "same": 5, "different": 3}
    assert {e["path"] for e in corpus.inputs} == {
        "train.data.txt",
        "train.gold.txt",
        "dev.data.txt",
        "dev.gold.txt",
    }


def bad_copy(tmp_path, split="train", data=None, gold=None):
    """A copy of the fixture with `split`'s data or gold lines changed by the given functions."""
    root = tmp_path / "wic"
    shutil.copytree(WIC, root)
    folder = root / "WiC_dataset" / split
    for name, change in ((f"{split}.data.txt", data), (f"{split}.gold.txt", gold)):
        if change is not None:
            path = folder / name
            lines = path.read_text().split("\n")[:-1]
            path.write_text("".join(line + "\n" for line in change(lines)))
    return root


def _set(line_no, value):
    return lambda lines: [value if i == line_no - 1 else line for i, line in enumerate(lines)]


def _field(line_no, field, value):
    def change(lines):
        fields = lines[line_no - 1].split("\t")
        fields[field] = value
        return _set(line_no, "\t".join(fields))(lines)

    return change


CASES = {
    "four-fields": (
        {"data": _set(2, "bank\tN\t1-1\tonly one sentence")},
        r"train\.data\.txt, line 2: expected 5 tab",
    ),
    "bad-pos": (
        {"data": _field(3, 1, "J")},
        r"train\.data\.txt, line 3: field 'PoS' must be N or V, got 'J'",
    ),
    "bad-indices": (
        {"data": _field(1, 2, "4:1")},
        r"line 1: field 'index1-index2' must be two token indices",
    ),
    "index-past-end": (
        {"data": _field(4, 2, "1-40")},
        r"line 4: field 'index1-index2': index2 40 is past the",
    ),
    "empty-target": ({"data": _field(5, 0, "")}, r"line 5: field 'target_word' is empty"),
    "bad-gold": (
        {"gold": _set(6, "yes")},
        r"train\.gold\.txt, line 6: the gold label must be T or F, got 'yes'",
    ),
    "short-gold": (
        {"gold": lambda lines: lines[:-1]},
        r"train\.gold\.txt has 7 labels and train\.data\.txt 8 lines",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_named(tmp_path, case):
    change, message = CASES[case]
    with pytest.raises(CorpusInputError, match=message):
        read(bad_copy(tmp_path, **change))


def test_missing_files_and_directories(tmp_path):
    root = bad_copy(tmp_path)
    (root / "WiC_dataset" / "dev" / "dev.gold.txt").unlink()
    with pytest.raises(CorpusInputError, match=r"dev\.data\.txt has no dev\.gold\.txt beside it"):
        read(root)
    with pytest.raises(CorpusInputError, match="not a directory"):
        read(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusInputError, match=r"no \*\.data\.txt file under it"):
        read(tmp_path / "empty")


@pytest.fixture(scope="module")
def wic_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("wic") / "atlas"
    build(out, "wic", wic=str(WIC))
    return out


def test_build_writes_the_configs_and_routes_every_sentence(wic_atlas):
    manifest = Manifest.load(wic_atlas)
    configs = manifest.configs()
    assert configs["wic-examples"]["rows"] == 24 and configs["wic-pairs"]["rows"] == 12
    assert "senses" not in configs  # a WiC build writes no WordNet corpus
    routing = read_config(wic_atlas, ROUTING).to_pandas()
    examples = {r["example_id"]: r for r in read_config(wic_atlas, "wic-examples").to_pylist()}
    assert set(routing.corpus) == {"wic-examples"} and set(routing.source_id) == set(examples)
    # The WiC part has its own shards in the model's routing config.
    assert all("-wic-" in p.name for p in (wic_atlas / ROUTING).glob("*.parquet"))
    for example_id, tokens in routing.groupby("source_id"):
        example = examples[example_id]
        overlaps = (
            (tokens.char_start >= 0)
            & (tokens.char_start < example["target_end"])
            & (tokens.char_end > example["target_start"])
        )
        assert overlaps.any() and (tokens.is_target == overlaps).all()
    entry = manifest.corpus_counts["corpora"]["wic"]
    assert entry["configs"] == ["wic-examples", "wic-pairs"] and "CC BY-NC 4.0" in entry["license"]
    card = (wic_atlas / "README.md").read_text()
    assert (
        "WiC, 2 split(s) (dev, train)" in card
        and "CC BY-NC 4.0" in card
        and "- config_name: wic-pairs" in card
    )


def test_rebuild_reuses_and_another_wic_is_refused(wic_atlas, tmp_path):
    out = copy_atlas(wic_atlas, tmp_path / "atlas")
    before = files_of(out)
    stats = build(out, "wic", wic=str(WIC))
    assert stats.shards_written == 0 and stats.shards_skipped == 3
    after = files_of(out)
    assert {k: v for k, v in after.items() if k != "manifest.json" and k != "README.md"} == {
        k: v for k, v in before.items() if k != "manifest.json" and k != "README.md"
    }
    other = bad_copy(tmp_path, gold=_set(1, "T"))
    with pytest.raises(AtlasError, match="already holds a wic corpus"):
        build(out, "wic", wic=str(other))


def test_validation_passes_and_catches_planted_defects(wic_atlas, tmp_path):
    report = validate(wic_atlas)
    assert report.passed, failures(report)
    assert {"target-span", "references", "same-sense"} <= set(statuses(report, "wic-examples")) | set(
        statuses(report, "wic-pairs")
    )
    out = copy_atlas(wic_atlas, tmp_path / "bad")

    def shift_span(rows):
        rows[0]["target_end"] += 1  # the span now takes the space after the token
        return rows

    def dangling(rows):
        rows[0]["example_b"] = "wic:train:99999:2"
        return rows

    rewrite(out, "wic-examples", shift_span)
    rewrite(out, "wic-pairs", dangling)
    report = validate(out, hashes=False)
    assert statuses(report, "wic-examples")["target-span"] == "failed"
    assert statuses(report, "wic-pairs")["references"] == "failed"
    assert statuses(report, ROUTING)["target-tokens"] == "failed"  # is_target no longer matches the span


def test_bad_input_leaves_nothing_and_loads_no_model(tmp_path, monkeypatch):
    no_model(monkeypatch)
    bad = bad_copy(tmp_path, data=_field(3, 1, "J"))
    out = tmp_path / "out"
    result = cli(
        "build", "--model", "tiny-deepseek-v3", "--corpus", "wic", "--wic", str(bad), "--out", str(out)
    )
    refused_cleanly(result, "error:", "train.data.txt, line 3", "field 'PoS'")
    assert not out.exists()


def test_options_go_with_their_corpus(tmp_path):
    result = cli("build", "--model", "tiny-deepseek-v3", "--corpus", "wic", "--out", str(tmp_path / "o"))
    refused_cleanly(result, "--corpus wic needs --wic DIR")
    result = cli(
        "build",
        "--model",
        "tiny-deepseek-v3",
        "--corpus",
        "jsonl",
        "--wic",
        str(WIC),
        "--out",
        str(tmp_path / "o"),
    )
    refused_cleanly(result, "--wic is an option of --corpus wic")
    assert not (tmp_path / "o").exists()


def test_metrics_measure_wic_on_its_own(wic_atlas):
    from .byo import MODEL, kappa, last_target_experts, layer_mean_of_means, metrics_of

    metrics = metrics_of(wic_atlas)
    assert metrics["corpora"] == {"wic": {"wic-examples": 24, "wic-pairs": 12}}
    entry = metrics["models"][MODEL]
    assert entry["sense_pairs"] is None  # no WordNet corpus in this atlas
    block = entry["corpora"]["wic"]
    assert block["probe"] is None and block["substitutions"] is None  # WiC has no sense ids
    # Independently: κ of every pair at the last target sub-token, same-sense mean − different-sense mean.
    model = read_config(wic_atlas, "models").to_pylist()[0]
    experts = last_target_experts(wic_atlas, "wic-examples")
    pairs = read_config(wic_atlas, "wic-pairs").to_pylist()
    kappas = {
        p["pair_id"]: kappa(
            experts[p["example_a"]], experts[p["example_b"]], model["top_k"], model["n_routed_experts"]
        )
        for p in pairs
    }
    same = [kappas[p["pair_id"]] for p in pairs if p["same_sense"]]
    different = [kappas[p["pair_id"]] for p in pairs if not p["same_sense"]]
    sp = block["sense_pairs"]
    assert sp["n_pairs"] == {"same": len(same), "different": len(different)}
    assert sp["layer_mean"]["kappa_same"]["estimate"] == pytest.approx(layer_mean_of_means(same), abs=1e-9)
    expected = layer_mean_of_means(same) - layer_mean_of_means(different)
    assert sp["layer_mean"]["delta"]["estimate"] == pytest.approx(expected, abs=1e-9)
    assert sp["n_lemmas"] == len({p["lemma"] for p in pairs})


def test_wic_beside_wordnet_in_one_atlas(atlas_copy):
    """WiC built into an atlas that holds the WordNet corpora: both validate, and metrics report each apart."""
    from .byo import MODEL, metrics_of

    before = read_config(atlas_copy, ROUTING)
    build(atlas_copy, "wic", wic=str(WIC))
    configs = Manifest.load(atlas_copy).configs()
    assert {"senses", "sense-pairs", "wic-examples", "wic-pairs"} <= set(configs)
    routing = read_config(atlas_copy, ROUTING)
    # WordNet's routing rows are kept as they were; WiC's are added beside them.
    assert routing.num_rows > before.num_rows
    import pyarrow.compute as pc

    wordnet_rows = routing.filter(pc.not_equal(routing.column("corpus"), "wic-examples"))
    assert wordnet_rows.sort_by([("source_id", "ascending"), ("token_index", "ascending")]).equals(
        before.sort_by([("source_id", "ascending"), ("token_index", "ascending")])
    )
    report = validate(atlas_copy, hashes=False)
    assert report.passed, failures(report)
    entry = metrics_of(atlas_copy)["models"][MODEL]
    assert entry["sense_pairs"]["n_pairs"] != entry["corpora"]["wic"]["sense_pairs"]["n_pairs"]
    assert entry["corpora"]["wic"]["sense_pairs"]["n_pairs"] == {"same": 7, "different": 5}


def test_controls_include_a_null_twin_routed_on_wic(wic_atlas, tmp_path):
    """A random-init twin built on the same WiC texts is the null model of WiC's sense-pair block."""
    from .byo import MODEL, metrics_of

    out = copy_atlas(wic_atlas, tmp_path / "atlas")
    build(out, "wic", wic=str(WIC), random_init=True, seed=1)  # another seed: not the same weights
    sp = metrics_of(out)["models"][MODEL]["corpora"]["wic"]["sense_pairs"]
    assert {"context_words", "token_identity", "null_model"} <= set(sp["controls"])
    assert sp["over_null"]["null_model"] == f"{MODEL}-random-init"
    assert sp["over_null"]["n_pairs"] == 12  # every WiC pair was routed by both models
