"""`atlas verify DIR`: checksums recomputed; truncated, altered, missing and unexpected files reported."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from ._support import FAKE_ROUTING
from .conftest import cli, copy_of

SHARD = f"{FAKE_ROUTING}/{FAKE_ROUTING}-00003.parquet"


def truncate(root):
    path = root / SHARD
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "truncated", SHARD


def alter(root):
    path = root / SHARD
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the checksum tells
    path.write_bytes(bytes(data))
    return "altered", SHARD


def remove(root):
    (root / "models" / "models-00000.parquet").unlink()
    return "missing", "models/models-00000.parquet"


def add(root):
    extra = f"{FAKE_ROUTING}/{FAKE_ROUTING}-00099.parquet"
    shutil.copy(root / SHARD, root / extra)
    return "unexpected", extra


def leave_temp_file(root):
    rel = f"{FAKE_ROUTING}/.{FAKE_ROUTING}-00003.parquet.x1y2.tmp"
    (root / rel).write_bytes(b"PAR1")
    return "unexpected", rel


@pytest.fixture
def atlas(tmp_path, fake_reference):
    return copy_of(fake_reference, tmp_path / "atlas")


def test_a_clean_atlas_verifies(atlas):
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 0, result.output
    assert "ok: the 14 data files" in result.output and "match manifest.json" in result.output


@pytest.mark.parametrize("damage", [truncate, alter, remove, add, leave_temp_file])
def test_each_kind_of_damage_is_reported(atlas, damage):
    status, rel = damage(atlas)
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["STATUS", "FILE", "DETAIL"]
    rows = [line for line in lines[1:] if re.match(r"^(missing|truncated|altered|unexpected) ", line)]
    assert len(rows) == 1 and rows[0].split()[:2] == [status, rel]
    assert f"1 {status}" in result.output and "Do not publish it" in result.output


def test_several_damages_in_one_table_worst_first(atlas):
    expected = [remove(atlas), truncate(atlas), add(atlas)]
    senses = atlas / "senses" / "senses-00000.parquet"
    senses.write_bytes(senses.read_bytes() + b"appended")  # longer: altered, not truncated
    expected.append(("altered", "senses/senses-00000.parquet"))
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 1
    rows = [line.split()[:2] for line in result.output.splitlines()[1:] if line and not line.startswith("/")]
    rows = [r for r in rows if r and r[0] in ("missing", "truncated", "altered", "unexpected")]
    order = ["missing", "truncated", "altered", "unexpected"]
    assert rows == sorted((list(e) for e in expected), key=lambda r: (order.index(r[0]), r[1]))


def test_a_damaged_or_missing_manifest_is_an_error_not_a_table(atlas, tmp_path):
    (atlas / "manifest.json").write_text('{"format": "routing-atlas", ')
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 2 and "manifest.json is damaged" in result.output
    (atlas / "manifest.json").unlink()
    assert cli(["verify", str(atlas)]).exit_code == 2
    assert "is not a directory" in cli(["verify", str(tmp_path / "nowhere")]).output


def test_an_other_schema_version_is_refused(atlas):
    manifest = json.loads((atlas / "manifest.json").read_text())
    manifest["schema_version"] = 999
    (atlas / "manifest.json").write_text(json.dumps(manifest))
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 2 and "schema version 999" in result.output


def test_validate_reports_the_damaged_file(atlas):
    """`atlas validate` checks the files against the manifest too (its manifest-files check)."""
    truncate(atlas)
    result = cli(["validate", str(atlas), "--no-tokenizer", "--problems-only"])
    assert result.exit_code != 0
    assert SHARD in result.output
