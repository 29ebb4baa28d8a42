"""Releases and state that stay true: nothing writes into a published release, verify checks a release's own
record, and publishing to a folder holds its lock, removes its staging leftovers and repairs a stale index.

The atlases are SYNTHETIC (random-init models, not findings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time

import pytest
from click.testing import CliRunner

from atlas_build.cli import main

from .helpers import cached_validation

QUIET = {"log": lambda *_: None}


def cli(args):
    return CliRunner().invoke(main, args)


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def release(releases, tmp_path):
    """A private copy of the published v0.1.0 (still a release: it holds release.json)."""
    dest = tmp_path / "v0.1.0"
    shutil.copytree(releases / "v0.1.0", dest)
    return dest


def test_no_command_writes_into_a_published_release(release):
    before = _snapshot(release)
    card = cli(["card", str(release)])
    assert card.exit_code == 4 and f"{release} is a published release (v0.1.0)" in card.output
    assert "rewriting its card is refused" in card.output and "Traceback" not in card.output
    build = cli(["build", "--model", "tiny-deepseek-v3", "--out", str(release), "--no-progress"])
    assert build.exit_code == 4 and "building into it is refused" in build.output
    inside = cli(["validate", str(release), "--json", str(release / "report.json")])
    assert inside.exit_code == 4 and "is a published release" in inside.output
    validate = cli(["validate", str(release)])
    assert validate.exit_code == 0, validate.output
    assert "report not written" in validate.output
    assert _snapshot(release) == before


def test_validate_a_release_elsewhere(release, tmp_path):
    result = cli(["validate", str(release), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report.json").read_text())["passed"]


def test_a_clean_release_verifies(release):
    result = cli(["verify", str(release)])
    assert result.exit_code == 0, result.output


def test_verify_checks_release_json_against_the_manifest(release):
    manifest = release / "manifest.json"
    manifest.chmod(0o644)
    data = json.loads(manifest.read_text())
    data["builds"].append({"kind": "routing", "summary": "added after the release"})
    manifest.write_text(json.dumps(data, indent=2) + "\n")
    result = cli(["verify", str(release)])
    assert result.exit_code == 1, result.output
    assert re.search(r"altered\s+manifest.json\s+sha256 \S+, release.json says", result.output)


def test_verify_checks_release_json_configs(release):
    record = release / "release.json"
    record.chmod(0o644)
    data = json.loads(record.read_text())
    data["configs"]["senses"]["rows"] += 1
    record.write_text(json.dumps(data))
    result = cli(["verify", str(release)])
    assert result.exit_code == 1 and re.search(r"stale\s+release.json\s+senses:", result.output), (
        result.output
    )


def test_a_second_publish_waits_for_the_first(atlas_v1, atlas_v2, tmp_path):
    """Two publishes of different versions at once: the later sees the earlier (its changelog's previous)."""
    from atlas_build.publish import publish_local

    out = tmp_path / "releases"
    first_inside, second_started = threading.Event(), threading.Event()

    def slow_validate(root):
        first_inside.set()
        second_started.wait(10)
        time.sleep(0.3)  # the second publish is waiting on the lock meanwhile
        return cached_validation(root)

    results = {}
    first = threading.Thread(
        target=lambda: results.update(
            a=publish_local(atlas_v1, "0.1.0", out, validate=slow_validate, **QUIET)
        )
    )
    first.start()
    assert first_inside.wait(30)
    second_started.set()
    results["b"] = publish_local(atlas_v2, "0.2.0", out, validate=cached_validation, **QUIET)
    first.join(30)
    assert results["a"].previous is None and results["b"].previous == "0.1.0"
    assert "First release" not in (out / "v0.2.0" / "CHANGELOG.md").read_text().split("## v0.1.0")[0]
    index = json.loads((out / "releases.json").read_text())
    assert [r["version"] for r in index["releases"]] == ["0.2.0", "0.1.0"]


def test_a_held_lock_is_reported(atlas_v1, tmp_path):
    import fcntl

    from atlas_build.publish import PublishError, publish_local

    out = tmp_path / "releases"
    out.mkdir()
    fd = os.open(out / ".publish.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(PublishError, match="another `atlas publish` to .* holds"):
            publish_local(atlas_v1, "0.1.0", out, validate=cached_validation, lock_timeout=0.2, **QUIET)
    finally:
        os.close(fd)
    assert not (out / "v0.1.0").exists()


def test_staging_leftovers_of_a_killed_publish_are_removed(atlas_v1, tmp_path):
    from atlas_build.publish import publish_local

    out = tmp_path / "releases"
    leftover = out / ".staging-v0.1.0-abc123"
    (leftover / "senses").mkdir(parents=True)
    (leftover / "senses" / "senses-00000.parquet").write_bytes(b"x" * 1000)
    (leftover / "senses" / "senses-00000.parquet").chmod(0o444)
    (leftover / "senses").chmod(0o555)  # sealed, as a killed publish leaves it
    publish_local(atlas_v1, "0.1.0", out, validate=cached_validation, **QUIET)
    assert not leftover.exists()
    assert sorted(p.name for p in out.iterdir()) == [".publish.lock", "README.md", "releases.json", "v0.1.0"]


def test_a_stale_index_is_repaired(atlas_v1, tmp_path):
    """A publish killed between its rename and its index: the rerun repairs the index, then refuses."""
    from atlas_build.publish import VersionError, publish_local

    out = tmp_path / "releases"
    publish_local(atlas_v1, "0.1.0", out, validate=cached_validation, **QUIET)
    (out / "releases.json").write_text(json.dumps({"format": "routing-atlas-releases", "releases": []}))
    with pytest.raises(VersionError, match="it is repaired"):
        publish_local(atlas_v1, "0.1.0", out, validate=cached_validation, **QUIET)
    index = json.loads((out / "releases.json").read_text())
    assert index["latest"] == "0.1.0" and [r["version"] for r in index["releases"]] == ["0.1.0"]
