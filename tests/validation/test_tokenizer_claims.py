"""A tokenizer the atlas names that cannot be loaded fails the token checks (it used to skip them, and a
consistent token swap passed); a local copy given with `--tokenizer` checks them (issue 31)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.writer import write_parquet_atomic
from atlas_build.cli import main
from dataset_cards.render import write_card
from validation import run_validation

CONFIG = "routing-tiny-deepseek-v3"
TOKEN_CHECKS = ("token-strings", "tokenization")


def _status(report, check):
    return next(r for r in report.results if r.config == CONFIG and r.check == check)


def _swap_one_token_consistently(root) -> None:
    """Token 1 of the first text replaced by another vocabulary entry (id and string): rows stay valid."""
    manifest = Manifest.load(root)
    rel = manifest.config_files(CONFIG)[0]
    path = root / rel
    table = pq.read_table(path)
    ids, tokens = table["token_id"].to_pylist(), table["token"].to_pylist()
    ids[1], tokens[1] = ids[1] + 1, tokens[1] + "x"
    for name, values in (("token_id", ids), ("token", tokens)):
        index = table.schema.get_field_index(name)
        table = table.set_column(
            index, table.schema.field(name), pa.array(values, table.schema.field(name).type)
        )
    manifest.record(root, CONFIG, write_parquet_atomic(table, path, pq.read_schema(path)))
    manifest.save(root)
    write_card(root)


def test_an_unloadable_tokenizer_fails_the_token_checks(atlas_copy):
    """The default loader knows no built-in names and is offline: the tokenizer cannot be loaded here."""
    report = run_validation(atlas_copy)
    assert not report.passed
    for check in TOKEN_CHECKS:
        result = _status(report, check)
        assert result.status == "failed"
        assert "tokenizer not available: tiny-deepseek-v3" in result.failing_examples[0]
        assert f"--tokenizer {CONFIG.removeprefix('routing-')}=DIR" in result.failing_examples[0]


def test_a_local_tokenizer_checks_them(atlas_copy):
    from atlas_build.models import builtin_checkpoint

    local = builtin_checkpoint("tiny-deepseek-v3")
    report = run_validation(atlas_copy, tokenizer_dirs={None: local})
    assert all(_status(report, check).status == "passed" for check in TOKEN_CHECKS)
    _swap_one_token_consistently(atlas_copy)
    result = CliRunner().invoke(
        main, ["validate", str(atlas_copy), "--tokenizer", str(local), "--problems-only"]
    )
    assert (
        result.exit_code == 1
        and "tokenization" in result.output
        and "a fresh tokenization gives" in result.output
    )


def test_no_tokenizer_is_a_stated_skip_and_a_missing_dir_one_line(atlas_copy):
    report = run_validation(atlas_copy, tokenizers=False)
    assert _status(report, "tokenization").status == "skipped"
    result = CliRunner().invoke(main, ["validate", str(atlas_copy), "--tokenizer", str(atlas_copy / "nope")])
    assert result.exit_code == 2 and "is not a directory holding a tokenizer" in result.output
