"""`atlas metrics`: outputs and their stable keys, the report, --model / --target, and the reading rule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from metrics_synth import Tokens, model_row, senses_table, write_atlas

from atlas_build.atlas.synthetic import random_routing
from atlas_build.commands.metrics import command
from atlas_build.metrics import summarize
from dataset_cards.synthetic import write_synthetic_atlas

TOP_KEYS = {
    "format",
    "format_version",
    "source",
    "provenance",
    "controls",
    "revision",
    "options",
    "synthetic",
    "random_init_models",
    "corpus",
    "corpora",  # the user's corpora (wic, swords, jsonl), each measured on its own
    "formulas",
    "models",
    "scale",
    "calibration",  # null unless --calibrate (metrics/calibration/matrix.py)
    "figures",
    "notes",
}
MODEL_KEYS = {
    "model",
    "random_init",
    "synthetic",
    "n_tokens",
    "routed_corpora",  # the corpus configs this model routed: its metrics cover those (issue 27)
    "sense_pairs",
    "substitutions",
    "probe",
    "corpora",
    "experts",
    "token_specialisation",
    "traces",
    "paths",  # metrics/paths/compute.py
    "scores",  # metrics/scores/compute.py (null: built without --scores)
    "predictability",  # metrics/estimators/predictability.py
}
SENSE_PAIR_KEYS = {
    "n_pairs",
    "n_lemmas",
    "kappa_same",
    "kappa_different",
    "delta",
    "layer_mean",
    "jaccard",
    "controls",
    "context_adjusted",
    "over_null",
    "peak",
    "survives",
    "explained",  # the share of the raw Δκ each control removes (controls/verdict.py)
    "sense_layers",  # the decoder layers the sense arrays cover (hash-routed layers left out by default)
    "hash_layers_excluded",
}


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return write_synthetic_atlas(
        tmp_path_factory.mktemp("cli"), n_lemmas=15, n_experts=16, n_layers=3, top_k=2
    )


def test_cli_writes_report_json_and_figures(atlas, tmp_path, hf_cache):
    out = tmp_path / "report"
    args = [
        str(atlas),
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--permutations",
        "49",
        "--cache-dir",
        str(hf_cache),
    ]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == TOP_KEYS
    entry = metrics["models"]["synthetic-moe"]
    assert set(entry) == MODEL_KEYS
    assert set(entry["sense_pairs"]) == SENSE_PAIR_KEYS
    assert entry["random_init"] is True and metrics["synthetic"] is True
    assert len(entry["sense_pairs"]["delta"]["estimate"]) == 3
    assert len(entry["sense_pairs"]["delta"]["p_value"]) == 3
    for name in ("kappa-layers.png", "scale.png", "coactivation-synthetic-moe.png"):
        assert (out / name).stat().st_size > 1000
    assert set(metrics["figures"].values()) == {
        "kappa-layers.png",
        "scale.png",
        "coactivation-synthetic-moe.png",
        "paths-transitions-synthetic-moe.png",
        "paths-agreement.png",
        "paths-diversity.png",
    }
    arrays = np.load(out / "coactivation-synthetic-moe.npz")
    counts = arrays["coactivation_counts"]
    assert counts.shape == (3, 16, 16)
    np.testing.assert_array_equal(np.diagonal(counts, axis1=1, axis2=2), arrays["load_counts"])
    assert arrays["load_counts"].sum(axis=1).tolist() == [entry["n_tokens"] * 2] * 3
    report = (out / "report.md").read_text()
    for needle in (
        "SYNTHETIC DATA",
        "RANDOM-INIT",
        "κ = (o − k²/N) / (k − k²/N)",
        "Which effects survive the controls",
    ):
        assert needle in report
    assert "No reasoning traces in this atlas" in report
    assert "| model | Δκ raw |" in result.output  # the summary is printed


def test_summarize_is_short_markdown(atlas, compute):
    text = summarize(compute(atlas, n_bootstrap=50, n_permutations=9))
    assert text.startswith("### Routing metrics")
    assert "`synthetic-moe` (RANDOM-INIT, SYNTHETIC)" in text
    assert "RANDOM-INIT: must be no" in text
    assert len(text.splitlines()) < 20


def test_cli_rejects_unknown_model_and_target(atlas, tmp_path, hf_cache):
    base = [str(atlas), "--out", str(tmp_path / "r"), "--cache-dir", str(hf_cache)]
    result = CliRunner().invoke(command, [*base, "--model", "no-such-model"])
    assert result.exit_code == 2  # bad input (atlas_build/errors.py)
    assert "unknown model slug" in result.output and "synthetic-moe" in result.output
    result = CliRunner().invoke(command, [*base, "--target", "middle"])
    assert result.exit_code == 2


N, K = 32, 4


def last_subtoken_routing(tokens: Tokens, rng):
    """Layer 0: the last target sub-token always uses its sense's canonical set; the first is random."""
    experts = random_routing(rng, len(tokens.text), 2, N, K)[0]
    targets = np.flatnonzero(tokens.is_target)
    last = targets[np.r_[tokens.text[targets][1:] != tokens.text[targets][:-1], True]]
    for t in last:
        row = tokens.texts[tokens.text[t]]["row"]
        code = int(row["lemma"][3:]) * 2 + row["sense_number"] - 1
        experts[t, 0] = (code * K + np.arange(K)) % N
    return experts


def test_target_modes_pick_sub_tokens(tmp_path, compute):
    rows = [
        {"lemma": f"lem{li:02d}", "sense": s, "example": e, "words": ["the", f"c{e}", "here"], "target_at": 1}
        for li in range(30)
        for s in range(2)
        for e in range(3)
    ]
    row = model_row("split", random_init=False, n_experts=N, n_layers=2, top_k=K)
    root = write_atlas(
        tmp_path / "atlas", senses_table(rows), [(row, last_subtoken_routing)], split_target=True
    )
    delta = {
        mode: compute(root, target=mode, n_bootstrap=500, n_permutations=9)["models"]["split"]["sense_pairs"][
            "delta"
        ]
        for mode in ("first", "last", "all")
    }
    full = N / (N - K)  # κ_same = 1, κ_diff = −k/(N−k)
    assert delta["last"]["estimate"][0] == pytest.approx(full, rel=1e-5)
    assert delta["first"]["ci_low"][0] <= 0 <= delta["first"]["ci_high"][0]
    # all: 1 of the 4 sub-token pairs carries the effect -> Δ ≈ full / 4.
    assert delta["all"]["ci_low"][0] <= full / 4 <= delta["all"]["ci_high"][0]
    assert delta["all"]["ci_low"][0] > 0


def test_metrics_read_only_through_datasets(atlas, tmp_path, hf_cache):
    """Computing everything imports no model code, torch or transformers."""
    code = textwrap.dedent(
        f"""
        import sys
        from atlas_build.metrics import MetricsOptions, run_metrics
        import atlas_build.commands.metrics
        run_metrics({str(atlas)!r}, {str(tmp_path / "r")!r}, cache_dir={str(hf_cache)!r},
                    options=MetricsOptions(n_bootstrap=20, n_permutations=9))
        banned = ("torch", "transformers", "atlas_build.engines", "atlas_build.corpora", "atlas_build.models",
                  "atlas_build.routers", "nltk")
        print(sorted(m for m in sys.modules if m.startswith(banned)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
