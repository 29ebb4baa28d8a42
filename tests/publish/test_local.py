"""`atlas publish --to PATH`: immutable, loadable, validated releases side by side, with a real changelog.

The atlases here are SYNTHETIC with random-init models: these tests check the release mechanics.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import SENSES, SENSES_SCHEMA
from atlas_build.atlas.store import write_config
from atlas_build.cli import main
from atlas_build.publish import (
    PublishError,
    ValidationFailed,
    Version,
    VersionError,
    publish_local,
)

from .helpers import SECOND_MODEL, cached_validation, tree_state

ROUTING_A, ROUTING_B = "routing-synthetic-moe", f"routing-{SECOND_MODEL}"


def _num(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def test_both_versions_load_with_load_dataset(releases):
    for tag, configs in (
        ("v0.1.0", {"senses", "sense-pairs", "models", ROUTING_A}),
        ("v0.2.0", {"senses", "sense-pairs", "models", ROUTING_A, ROUTING_B}),
    ):
        release = releases / tag
        card = DatasetCard.load(release / "README.md")
        assert {c["config_name"] for c in card.data.configs} == configs
        manifest = Manifest.load(release)
        for config in configs:
            ds = datasets.load_dataset(str(release), config, split="train")
            assert len(ds) == manifest.configs()[config]["rows"] > 0, (tag, config)
        for name in ("manifest.json", "validation.json", "CHANGELOG.md", "release.json", "LICENSE.md"):
            assert (release / name).is_file(), name
        assert (release / "scripts" / "reproduce_metrics.py").is_file()
        assert (release / "metrics" / "metrics.json").is_file()
        validation = json.loads((release / "validation.json").read_text())
        assert validation["passed"] is True
        assert validation["manifest_sha256"]
        assert f'load_dataset("{release.resolve()}", "senses", split="train")' in card.text
        assert f"(v{tag[1:]})" in card.text.splitlines()[0] or f"v{tag[1:]}" in card.text


def test_earlier_release_is_kept_byte_for_byte(releases, atlas_v1):
    # v0.1.0 was published before v0.2.0: its data files are still the v1 atlas's files.
    manifest = Manifest.load(atlas_v1)
    for rel in manifest.files:
        assert (releases / "v0.1.0" / rel).read_bytes() == (atlas_v1 / rel).read_bytes()
    assert not (releases / "v0.1.0" / ROUTING_B).exists()


def test_changelog_states_the_real_differences(releases, atlas_v1, atlas_v2):
    text = (releases / "v0.2.0" / "CHANGELOG.md").read_text()
    assert "Compared with v0.1.0." in text
    # 5 more lemmas x 2 senses x 3 examples; 12 pairs per lemma; 5 tokens per synthetic sentence.
    assert "| `senses` | 150 | +30 | 30 | 0 | changed |" in text
    assert "| `sense-pairs` | 300 | +60 | 60 | 0 | changed |" in text
    assert "| `models` | 2 | +1 | 1 | 0 | changed |" in text
    assert f"| `{ROUTING_A}` random-init | 750 | +150 | 150 | 0 | changed |" in text
    assert f"| `{ROUTING_B}` (new) random-init | 750 | +750 | 750 | 0 | new |" in text
    assert f"- Added: `{SECOND_MODEL}` (`synthetic`, engine synthetic, **random-init**)" in text
    assert "### Schema changes\n\n- None." in text

    # Metric changes: the headline numbers of both metrics.json files.
    before = json.loads((atlas_v1 / "metrics" / "metrics.json").read_text())["models"]["synthetic-moe"]
    after = json.loads((atlas_v2 / "metrics" / "metrics.json").read_text())["models"]
    old, new = (
        before["probe"]["accuracy"]["estimate"],
        after["synthetic-moe"]["probe"]["accuracy"]["estimate"],
    )
    if old != new:
        row = f"| `synthetic-moe` (random-init) | probe accuracy | {_num(old)} | {_num(new)} | {new - old:+.4g} |"
        assert row in text
    new_b = after[SECOND_MODEL]["probe"]["accuracy"]["estimate"]
    assert f"| `{SECOND_MODEL}` (random-init) | probe accuracy | – | {_num(new_b)} | – |" in text

    # The full changelog keeps the earlier entry, newest first.
    first = (releases / "v0.1.0" / "CHANGELOG.md").read_text()
    assert text.index("## v0.2.0") < text.index("## v0.1.0")
    assert text.endswith(first[first.index("## v0.1.0") :])
    assert "First release." in first and "| `senses` | 120 | 1 |" in first

    changes = json.loads((releases / "v0.2.0" / "release.json").read_text())["changes"]
    by_config = {c["config"]: c for c in changes["configs"]}
    assert (by_config["senses"]["added"], by_config["senses"]["removed"]) == (30, 0)
    assert changes["models"]["added"] == [SECOND_MODEL] and changes["models"]["removed"] == []


def test_index_lists_both_releases_newest_first(releases):
    index = json.loads((releases / "releases.json").read_text())
    assert index["latest"] == "0.2.0"
    assert [r["version"] for r in index["releases"]] == ["0.2.0", "0.1.0"]
    assert index["releases"][0]["configs"]["senses"] == 150
    readme = (releases / "README.md").read_text()
    assert "[v0.2.0](v0.2.0/README.md)" in readme and "[v0.1.0](v0.1.0/README.md)" in readme


def test_release_files_are_read_only(releases):
    for path in (releases / "v0.1.0").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o222 == 0, path


def test_republishing_a_version_is_refused_and_nothing_changes(releases, atlas_v2):
    before = tree_state(releases)
    with pytest.raises(VersionError, match="already exists"):
        publish_local(atlas_v2, "0.1.0", releases, log=lambda *_: None)
    result = CliRunner().invoke(main, ["publish", str(atlas_v2), "--version", "0.2.0", "--to", str(releases)])
    assert result.exit_code == 2
    assert "v0.2.0 already exists" in result.output
    assert tree_state(releases) == before


@pytest.mark.parametrize("version", ["1.0", "v0.3.0", "0.3.0+build.1", "latest", "01.0.0", "0.3", ""])
def test_a_non_semver_version_is_refused(atlas_v1, tmp_path, version):
    with pytest.raises(VersionError, match="not a semantic version"):
        publish_local(atlas_v1, version, tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_semver_precedence():
    order = [
        "0.1.0",
        "0.2.0-alpha",
        "0.2.0-alpha.1",
        "0.2.0-alpha.beta",
        "0.2.0-beta.2",
        "0.2.0-beta.11",
        "0.2.0",
    ]
    assert sorted(order, key=Version.parse) == order
    assert Version.parse("1.2.3").tag == "v1.2.3"


def _corrupt_one_row(root):
    """Make one senses row's target_form disagree with its text (a content defect, manifest kept consistent)."""
    manifest = Manifest.load(root)
    table = pq.read_table(root / manifest.config_files(SENSES)[0])
    forms = table.column("target_form").to_pylist()
    forms[3] = "nonsense"
    table = table.set_column(table.schema.get_field_index("target_form"), "target_form", pa.array(forms))
    write_config(root, manifest, SENSES, table, SENSES_SCHEMA)
    manifest.save(root)


def test_an_atlas_that_fails_validation_is_refused(atlas_v1, tmp_path):
    source = tmp_path / "atlas"
    shutil.copytree(atlas_v1, source)
    _corrupt_one_row(source)
    out = tmp_path / "releases"
    with pytest.raises(ValidationFailed, match="target-span") as error:
        publish_local(source, "0.1.0", out, log=lambda *_: None)
    assert "nothing was published" in str(error.value)
    # No release, no staging leftovers, no index, and no lock: the folder it made is gone (issue 27).
    assert not out.exists()


def test_without_the_validation_package_publishing_fails_loudly(atlas_v1, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "validation", None)  # `import validation` raises ImportError
    with pytest.raises(PublishError, match="validation package cannot be imported"):
        publish_local(atlas_v1, "0.1.0", tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()  # nor its staging folder or lock (issue 27)


def test_dry_run_prints_the_changes_and_writes_nothing(releases, atlas_v2, tmp_path):
    copy = tmp_path / "releases"
    shutil.copytree(releases, copy, symlinks=True)
    shutil.rmtree(copy / "v0.2.0")
    before_target, before_source = tree_state(copy), tree_state(atlas_v2)
    result = CliRunner().invoke(
        main, ["publish", str(atlas_v2), "--version", "0.2.0", "--to", str(copy), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "dry run: would publish v0.2.0" in result.output
    assert "previous release: v0.1.0" in result.output
    assert "| `senses` | 150 | +30 | 30 | 0 | changed |" in result.output
    assert "nothing was written" in result.output
    assert tree_state(copy) == before_target
    assert tree_state(atlas_v2) == before_source


def test_publishing_into_the_atlas_is_refused(atlas_v1):
    with pytest.raises(PublishError, match="inside the atlas"):
        publish_local(atlas_v1, "0.1.0", atlas_v1 / "releases", log=lambda *_: None)
    assert not (atlas_v1 / "releases").exists()


def test_metrics_of_other_data_are_refused(atlas_v1, atlas_v2, tmp_path):
    source = tmp_path / "atlas"
    shutil.copytree(atlas_v2, source)
    shutil.rmtree(source / "metrics")
    shutil.copytree(atlas_v1 / "metrics", source / "metrics")
    with pytest.raises(PublishError, match="does not describe this atlas"):
        publish_local(source, "0.2.0", tmp_path / "out", validate=cached_validation, log=lambda *_: None)


def test_the_companion_script_reproduces_the_published_metrics(releases, tmp_path, capsys):
    script = releases / "v0.1.0" / "scripts" / "reproduce_metrics.py"
    namespace = runpy.run_path(str(script), run_name="reproduce_metrics")
    assert namespace["REVISION"] == "v0.1.0"
    assert namespace["OPTIONS"]["n_bootstrap"] == 20
    assert namespace["main"](["--check", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "headline numbers match the published metrics of v0.1.0" in out
    recomputed = json.loads((tmp_path / "m" / "metrics.json").read_text())
    published = json.loads((releases / "v0.1.0" / "metrics" / "metrics.json").read_text())
    assert recomputed["models"].keys() == published["models"].keys()


def test_release_keys_diff_counts_removed_rows(releases, atlas_v1, tmp_path):
    """A version with fewer rows and a model removed: removals are counted by key."""
    source = tmp_path / "atlas"
    shutil.copytree(atlas_v1, source)
    shutil.rmtree(source / "metrics")
    manifest = Manifest.load(source)
    table = pq.read_table(source / manifest.config_files(SENSES)[0])
    write_config(
        source,
        manifest,
        SENSES,
        table.filter(pc.invert(pc.starts_with(table["lemma"], "lemma0001"))),
        SENSES_SCHEMA,
    )
    manifest.save(source)
    from atlas_build.publish import diff_releases, snapshot_of_atlas

    diff = diff_releases(
        snapshot_of_atlas(releases / "v0.2.0", "0.2.0", released=True), snapshot_of_atlas(source)
    )
    senses = next(c for c in diff.configs if c["config"] == "senses")
    # lemma00010..lemma00019 (10 lemmas x 6 examples) from v1, and lemma00020..24 (30) from v2 are gone.
    assert (senses["rows"], senses["added"], senses["removed"]) == (60, 0, 90)
    assert diff.models["removed"] == [SECOND_MODEL]
    routing_b = next(c for c in diff.configs if c["config"] == ROUTING_B)
    assert routing_b["status"] == "removed" and routing_b["removed"] == 750
