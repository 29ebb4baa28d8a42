"""`atlas publish --tokenizer DIR`: an atlas built from a local checkpoint names its model by a portable id, so
the validation gate cannot load its tokenizer by name; publishing fails that check until the folder is given."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from atlas_build.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "intervene"))
from planted import build_planted, write_probe  # noqa: E402


def test_publish_needs_the_local_tokenizer_then_passes(tmp_path):
    from atlas_build.builder import BuildConfig, run_build

    checkpoint = build_planted(tmp_path / "planted-mixtral")
    atlas = tmp_path / "atlas"
    config = BuildConfig(
        model=str(checkpoint),
        out=atlas,
        corpus="jsonl",
        texts=str(write_probe(tmp_path / "p.jsonl")),
        progress=False,
    )
    run_build(config, log=lambda *_: None)
    releases = tmp_path / "releases"
    refused = CliRunner().invoke(main, ["publish", str(atlas), "--version", "0.1.0", "--to", str(releases)])
    assert refused.exit_code != 0 and "tokenizer not available" in refused.output, refused.output
    assert "3 failed" in refused.output  # token-strings, tokenization and the planted degenerate layer
    assert not (releases / "v0.1.0").exists()
    args = [
        "publish",
        str(atlas),
        "--version",
        "0.1.0",
        "--to",
        str(releases),
        "--tokenizer",
        str(checkpoint),
    ]
    given = CliRunner().invoke(main, args)
    # With the tokenizer the token checks pass; what is left is the planted model's frequent expert, chosen
    # at every token of layer 1 on purpose (the gate still refuses that, as it should).
    assert "tokenizer not available" not in given.output, given.output
    assert "1 failed" in given.output and "routing-not-degenerate" in given.output, given.output
