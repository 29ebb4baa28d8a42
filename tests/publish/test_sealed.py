"""Releases stay sealed (issue 31): no command writes inside a published release, `atlas verify` reports a
file that neither manifest.json nor release.json lists, a version below the latest is refused, a killed
publish's index temporaries are removed by the next publish, and odd manifest paths are one line."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from atlas_build.cli import main
from atlas_build.publish import VersionError, publish_local

from .helpers import cached_validation

QUIET = {"log": lambda *_: None}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def release(releases, tmp_path):
    """A private copy of the published v0.2.0 (read-only files, as published)."""
    dest = tmp_path / "releases"
    shutil.copytree(releases, dest)
    return dest / "v0.2.0"


@pytest.mark.parametrize(
    "command",
    [
        ["metrics", "{rel}", "--out", "{rel}/metrics"],
        ["metrics", "calibrate", "{rel}", "--out", "{rel}/calibration"],
        ["explore", "{rel}", "--out", "{rel}/site"],
        ["card", "{rel}"],
        ["validate", "{rel}", "--json", "{rel}/sub/v.json"],
        ["model", "materialize", "tiny-deepseek-v3", "{rel}/ckpt"],
        ["build", "--model", "tiny-deepseek-v3", "--out", "{rel}/atlas"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_no_command_writes_inside_a_release(release, command):
    before = sorted(p.relative_to(release).as_posix() for p in release.rglob("*"))
    result = _run(*(part.format(rel=release) for part in command))
    assert result.exit_code != 0, result.output
    # `atlas build` already refuses any folder inside an atlas (a release is one).
    refusal = "is inside the atlas" if command[0] == "build" else "published release"
    assert refusal in result.output and "Traceback" not in result.output
    assert sorted(p.relative_to(release).as_posix() for p in release.rglob("*")) == before


def test_publishing_into_a_release_is_refused(release, atlas_v2):
    result = _run("publish", atlas_v2, "--version", "0.3.0", "--to", release / "more")
    assert result.exit_code != 0 and "lies inside the published release" in result.output


def test_verify_reports_files_added_to_a_release(release):
    assert _run("verify", release).exit_code == 0
    (release / "metrics" / "extra.json").write_text("{}")
    (release / "site").mkdir()
    (release / "site" / "index.html").write_text("<html></html>")
    result = _run("verify", release)
    assert result.exit_code == 1
    assert "unexpected  metrics/extra.json" in result.output and "site/index.html" in result.output
    assert "added after publishing" in result.output


def test_verify_reports_an_altered_release_file(release):
    scripts = release / "scripts" / "README.md"
    scripts.chmod(0o644)
    scripts.write_text("changed\n")
    result = _run("verify", release)
    assert result.exit_code == 1 and "altered" in result.output and "scripts/README.md" in result.output


def test_a_version_below_the_latest_is_refused(releases, atlas_v1, tmp_path):
    dest = tmp_path / "releases"
    shutil.copytree(releases, dest)
    with pytest.raises(VersionError, match="v0.1.1 is lower than the latest release v0.2.0"):
        publish_local(atlas_v1, "0.1.1", dest, validate=cached_validation, **QUIET)
    assert not (dest / "v0.1.1").exists()
    index = json.loads((dest / "releases.json").read_text())
    assert [r["version"] for r in index["releases"]] == ["0.2.0", "0.1.0"]


def test_the_next_publish_removes_index_temporaries(releases, atlas_v2, tmp_path):
    dest = tmp_path / "releases"
    shutil.copytree(releases, dest)
    left = [dest / ".releases.json.1234.tmp", dest / ".README.md.99.tmp"]
    for path in left:
        path.write_text("half-written")
    publish_local(atlas_v2, "0.3.0", dest, validate=cached_validation, **QUIET)
    assert not any(path.exists() for path in left)
    assert (dest / "v0.3.0" / "release.json").is_file()


@pytest.mark.parametrize(
    "bad", ["senses/a\u0000b.parquet", "./senses/senses-00000.parquet", "senses//x.parquet"]
)
def test_odd_manifest_paths_are_one_line(atlas_v1, tmp_path, bad):
    root = tmp_path / "atlas"
    shutil.copytree(atlas_v1, root)
    data = json.loads((root / "manifest.json").read_text())
    first = next(iter(data["files"]))
    data["files"][bad] = data["files"].pop(first)
    (root / "manifest.json").write_text(json.dumps(data))
    for command in (["card", root], ["verify", root], ["audit", root]):
        result = _run(*command)
        assert result.exit_code == 3, result.output  # an untrustworthy manifest: a damaged atlas
        assert "not a plain relative path" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_republishing_a_release_does_not_carry_added_files(release, tmp_path):
    (release / "metrics" / "extra.json").write_text("{}")
    out = tmp_path / "again"
    result = _run("publish", release, "--version", "0.3.0", "--to", out)
    assert result.exit_code != 0 and "metrics/extra.json" in result.output
    assert "added after publishing" in result.output and not (out / "v0.3.0").exists()
