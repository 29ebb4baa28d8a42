"""The README's "build corpora in any order", with one and two models (issue 27).

One model builds WordNet, traces and every corpus of your own in one order and in the reverse order: the two
atlases hold byte-identical data files, validate, and their metrics cover every corpus. A second model (the
random-init twin) then routes only some of them, in another order: validate passes and says which model routed
which corpus, metrics are computed per model over what it routed (the README path that crashed: WordNet by two
models, then a user's corpus by one of them), and the card says so.

The model is the built-in tiny-deepseek-v3, RANDOM-INIT: the plumbing is checked, never a finding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from atlas_build.builder import BuildConfig, run_build

from .byo import FIXTURES, MODEL, validate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("requires_wordnet")]

TWIN = f"{MODEL}-random-init"
STEPS = {
    "wordnet": {"max_lemmas": 2},
    "traces": {"traces": str(FIXTURES / "traces" / "sample.jsonl")},
    "wic": {"wic": str(FIXTURES / "wic" / "WiC_dataset")},
    "swords": {"swords": str(FIXTURES / "swords" / "swords-fixture_dev.json")},
    "jsonl": {"texts": str(FIXTURES / "jsonl" / "probe.jsonl")},
    "text": {"texts": str(FIXTURES / "jsonl" / "texts.jsonl")},
}
# The configs whose texts a `--corpus` kind routes (the routing rows' `corpus` values).
ROUTED = {
    "wordnet": {"senses", "substitutions"},
    "traces": {"traces"},
    "wic": {"wic-examples"},
    "swords": {"swords-examples", "swords-substitutions"},
    "jsonl": {"jsonl-examples"},
    "text": {"texts"},
}
# The user's corpora the metrics report per model (texts feed only the corpus-wide statistics).
MEASURED = {"wic", "swords", "jsonl"}


def build(out: Path, corpus: str, twin: bool = False) -> None:
    options = {"random_init": True, "seed": 1} if twin else {}
    run_build(
        BuildConfig(model=MODEL, out=out, corpus=corpus, progress=False, **STEPS[corpus], **options),
        log=lambda *_: None,
    )


def data_hashes(root: Path) -> dict[str, str]:
    """sha256 of every Parquet file the manifest lists (the card and build records name the build order)."""
    files = json.loads((root / "manifest.json").read_text())["files"]
    return {path: entry["sha256"] for path, entry in files.items() if path.endswith(".parquet")}


def metrics_of(root: Path) -> dict:
    from atlas_build.metrics import MetricsOptions, compute_metrics

    return compute_metrics(root, options=MetricsOptions(n_bootstrap=20, n_permutations=9)).metrics


def coverage(report) -> dict[str, dict]:
    return {r.config: r.details for r in report.results if r.check == "corpus-coverage"}


@pytest.fixture(scope="module")
def one_model(tmp_path_factory):
    """The same six builds of one model, forward and reversed."""
    root = tmp_path_factory.mktemp("orders")
    forward, backward = root / "forward", root / "backward"
    for corpus in STEPS:
        build(forward, corpus)
    for corpus in reversed(list(STEPS)):
        build(backward, corpus)
    return forward, backward


def test_one_model_any_order_same_data_valid_and_measured(one_model):
    forward, backward = one_model
    assert data_hashes(forward) == data_hashes(backward)
    for root in one_model:
        report = validate(root, tokenizers=False)
        assert report.passed, [r for r in report.results if r.status not in ("passed", "skipped")]
        details = coverage(report)[f"routing-{MODEL}"]
        assert set(details["routed_corpora"]) == set().union(*ROUTED.values())
        assert details["not_routed"] == []
    metrics = metrics_of(backward)
    entry = metrics["models"][MODEL]
    assert set(entry["corpora"]) == MEASURED
    assert entry["sense_pairs"] is not None and entry["substitutions"] is not None
    assert entry["traces"] is not None


@pytest.mark.parametrize(
    "twin_steps",
    [
        ["wordnet"],  # WordNet by both models, the user's corpora by one: the path that crashed
        ["jsonl", "wordnet"],  # the twin starts with a user's corpus, then WordNet
        ["wic", "traces"],  # the twin never routes WordNet
    ],
    ids=lambda steps: "+".join(steps),
)
def test_two_models_each_measured_over_what_it_routed(one_model, tmp_path, twin_steps):
    from click.testing import CliRunner

    from atlas_build.cli import main

    root = shutil.copytree(one_model[0], tmp_path / "atlas")
    for corpus in twin_steps:
        build(root, corpus, twin=True)

    report = validate(root, tokenizers=False)
    assert report.passed, [r for r in report.results if r.status not in ("passed", "skipped")]
    twin_routed = set().union(*(ROUTED[c] for c in twin_steps))
    details = coverage(report)
    assert set(details[f"routing-{TWIN}"]["routed_corpora"]) == twin_routed
    assert set(details[f"routing-{TWIN}"]["not_routed"]) == set().union(*ROUTED.values()) - twin_routed
    assert set(details[f"routing-{MODEL}"]["routed_corpora"]) == set().union(*ROUTED.values())

    metrics = metrics_of(root)
    ours, twin = metrics["models"][MODEL], metrics["models"][TWIN]
    assert set(ours["corpora"]) == MEASURED
    assert set(twin["corpora"]) == MEASURED & set(twin_steps)
    assert set(twin["routed_corpora"]) == twin_routed
    assert (twin["sense_pairs"] is None) == ("wordnet" not in twin_steps)
    assert ours["sense_pairs"] is not None
    # The twin is the null model of a corpus only where it routed it too.
    assert ("null_model" in ours["sense_pairs"]["controls"]) == ("wordnet" in twin_steps)
    for kind in MEASURED:
        controls = ours["corpora"][kind]["sense_pairs"]
        if controls is not None:
            assert ("null_model" in controls["controls"]) == (kind in twin_steps)
    for kind in MEASURED - set(twin_steps):
        assert any(f"{TWIN} did not route the {kind} corpus" in note for note in metrics["notes"])

    if twin_steps != ["wordnet"]:
        return
    # The CLI path of the README: metrics, card, validate again (card included), publish.
    runner = CliRunner()
    for args in (
        ["metrics", str(root), "--out", str(root / "metrics"), "--bootstrap", "20", "--permutations", "9"],
        ["card", str(root)],
        ["validate", str(root), "--no-tokenizer"],
        ["publish", str(root), "--version", "1.0.0", "--to", str(tmp_path / "releases")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        if args[0] == "validate":
            assert f"routing-{TWIN} routed senses, substitutions; not routed:" in result.output
    card = (root / "README.md").read_text()
    assert "routed different corpora" in card
    assert f"routed corpora: {', '.join(twin_steps)}" in card
