"""`atlas verify DIR`: checksums recomputed; truncated, altered, missing and unexpected files reported; an
unfinished build told from damage in every crash state; a stale card; symlinks and hidden files refused."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from ._support import FAKE_ARGS, FAKE_ROUTING
from .conftest import cli, copy_of

SHARD = f"{FAKE_ROUTING}/{FAKE_ROUTING}-00003.parquet"
FAKE_ARGS_TWO = [*FAKE_ARGS, "--slug", "fake-two"]  # a second model of the fake atlas


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
    assert result.exit_code == 3 and "manifest.json is damaged" in result.output
    (atlas / "manifest.json").unlink()
    assert cli(["verify", str(atlas)]).exit_code == 2  # no manifest: not an atlas (bad input)
    assert "is not a directory" in cli(["verify", str(tmp_path / "nowhere")]).output


def test_an_other_schema_version_is_refused(atlas):
    manifest = json.loads((atlas / "manifest.json").read_text())
    manifest["schema_version"] = 999
    (atlas / "manifest.json").write_text(json.dumps(manifest))
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 3 and "schema version 999" in result.output


def test_validate_reports_the_damaged_file(atlas):
    """`atlas validate` checks the files against the manifest too (its manifest-files check)."""
    truncate(atlas)
    result = cli(["validate", str(atlas), "--no-tokenizer", "--problems-only"])
    assert result.exit_code != 0
    assert SHARD in result.output


# ---- an unfinished build is not damage, in every crash state -------------------------------------------

UNFINISHED = "not finished, not damaged"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, fake_reference):
    """Fake builds killed at every crash point (first model), and a second model's build killed at each of
    its own points, in one driver process (see conftest.killed_builds; these are this module's own)."""
    from ._support import run_driver_jobs
    from .conftest import KILL_POINTS

    base = tmp_path_factory.mktemp("crashed")
    jobs, dirs = [], {}
    second = [
        "shard-before-write:2",
        "marker-written:3",
        "routing-done:1",
        "models-written:1",
        "manifest-saved:1",
    ]
    for point in KILL_POINTS:
        dirs[point] = base / point.replace(":", "-")
        jobs.append(
            {"name": point, "kill_at": point, "args": ["build", "--out", str(dirs[point]), *FAKE_ARGS]}
        )
    for point in second:
        name = f"second-{point}"
        dirs[name] = copy_of(fake_reference, base / name.replace(":", "-"))
        args = ["build", "--out", str(dirs[name]), *FAKE_ARGS, "--slug", "fake-two"]
        jobs.append({"name": name, "kill_at": point, "args": args})
    for job in jobs:
        job["log"] = str(base / f"{job['name'].replace(':', '-')}.log")
    codes = run_driver_jobs(jobs, base / "jobs.json")
    assert all(code == -9 for code in codes.values()), codes
    return dirs


def test_verify_tells_an_unfinished_build_in_every_crash_state(crashed):
    for name, out in crashed.items():
        result = cli(["verify", str(out)])
        text = result.output.lower()
        assert "traceback" not in text and "rebuild" not in text, (name, result.output)
        if result.exit_code == 0:  # killed after the last write: complete, and verify says a build died
            assert "note: a build of it was interrupted" in result.output, (name, result.output)
            continue
        assert result.exit_code in (1, 2), (name, result.output)
        assert UNFINISHED in text and "rerun the same `atlas build` command" in result.output, (
            name,
            result.output,
        )


def test_a_second_models_interrupted_build_is_unfinished_then_verifies(crashed, fakes):
    out = crashed["second-models-written:1"]
    result = cli(["verify", str(out)])
    assert result.exit_code == 1
    assert re.search(r"altered\s+models/models-00000.parquet", result.output)  # rewritten, manifest not yet
    assert UNFINISHED in result.output.lower()
    resumed = cli(["build", "--out", str(out), *FAKE_ARGS_TWO])
    assert resumed.exit_code == 0, resumed.output
    assert cli(["verify", str(out)]).exit_code == 0


def test_damage_without_a_build_is_damage(atlas):
    alter(atlas)
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 1 and UNFINISHED not in result.output.lower()
    assert "Do not publish it" in result.output


# ---- the card and a release's record -----------------------------------------------------------------


def test_a_card_that_lacks_a_config_is_reported(atlas):
    """A full disk while the final card was written leaves the previous card: verify says so."""
    card = (atlas / "README.md").read_text()
    block = re.search(rf"(?m)^- config_name: {FAKE_ROUTING}\n(?:  .*\n)+", card)
    (atlas / "README.md").write_text(card.replace(block.group(0), "", 1))
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 1, result.output
    assert re.search(
        rf"stale\s+README.md\s+{FAKE_ROUTING}: in the manifest, missing from the card", result.output
    )
    assert "atlas card" in result.output


def test_symlinks_and_hidden_files_are_refused_in_one_line(atlas, tmp_path):
    import os

    os.symlink("/etc/passwd", atlas / "senses" / "senses-00009.parquet")
    for command in (["verify", str(atlas)], ["validate", str(atlas), "--no-tokenizer"]):
        result = cli(command)
        assert result.exit_code == 3 and "Traceback" not in result.output
        assert "senses/senses-00009.parquet is a symbolic link (to /etc/passwd)" in result.output
    (atlas / "senses" / "senses-00009.parquet").unlink()
    (atlas / "models" / ".models-00001.parquet").write_bytes(b"PAR1")
    result = cli(["verify", str(atlas)])
    assert result.exit_code == 3 and "models/.models-00001.parquet is a hidden file" in result.output
