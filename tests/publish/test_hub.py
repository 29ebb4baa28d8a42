"""`atlas publish --repo-id`: the exact HfApi operations (mocked, no network) and no token anywhere.

The atlases here are SYNTHETIC with random-init models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import datasets
import pytest
from click.testing import CliRunner
from huggingface_hub.errors import EntryNotFoundError

from atlas_build.cli import main
from atlas_build.publish import VersionError, publish_hub

from .helpers import REPO_ID, cached_validation

TOKEN = "hf_secret_test_token"


def refs(*tags: str):
    return SimpleNamespace(tags=[SimpleNamespace(name=t, ref=f"refs/tags/{t}") for t in tags], branches=[])


class FakeHub:
    """Answers HfApi calls like a Hub holding earlier releases (local release folders by tag)."""

    def __init__(self, releases: dict[str, Path] | None = None, snapshot_to: Path | None = None):
        self.releases = releases or {}
        self.snapshot_to = snapshot_to
        self.uploaded: list[str] = []

    def download(self, repo_id, filename, *, repo_type, revision, local_dir):
        source = self.releases[revision] / filename
        if not source.exists():
            raise EntryNotFoundError(f"{filename} not in {revision}")
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return str(dest)

    def upload(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.uploaded = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if self.snapshot_to is not None:  # the staging folder is temporary: keep a copy to inspect
            shutil.copytree(folder, self.snapshot_to)
        return SimpleNamespace(oid="0123abcd" * 5, commit_url="https://huggingface.co/fake")


def fake_api(hub: FakeHub, tags=()):
    api = mock.MagicMock(name="HfApi()")
    api.list_repo_refs.return_value = refs(*tags)
    api.hf_hub_download.side_effect = hub.download
    api.upload_folder.side_effect = hub.upload
    return api


def test_hub_push_sends_exactly_these_operations(atlas_v1, tmp_path):
    hub = FakeHub(snapshot_to=tmp_path / "uploaded")
    with mock.patch("atlas_build.publish.hub.HfApi") as HfApi:
        api = HfApi.return_value = fake_api(hub)
        result = publish_hub(atlas_v1, "0.1.0", REPO_ID, validate=cached_validation, log=lambda *_: None)
    HfApi.assert_called_once_with()  # no token argument: HfApi finds HF_TOKEN / the login itself
    assert [c[0] for c in api.method_calls] == [
        "list_repo_refs",
        "create_repo",
        "upload_folder",
        "create_tag",
    ]
    api.list_repo_refs.assert_called_once_with(REPO_ID, repo_type="dataset")
    api.create_repo.assert_called_once_with(repo_id=REPO_ID, repo_type="dataset", exist_ok=True, private=None)
    upload = api.upload_folder.call_args.kwargs
    assert set(upload) == {
        "repo_id",
        "folder_path",
        "repo_type",
        "commit_message",
        "commit_description",
        "delete_patterns",
    }
    assert upload["repo_id"] == REPO_ID and upload["repo_type"] == "dataset"
    assert upload["commit_message"] == "Release v0.1.0"
    assert upload["delete_patterns"] == "*"  # the tagged commit holds exactly this release
    assert upload["commit_description"] == result.changelog_entry
    assert Path(upload["folder_path"]).name == "v0.1.0"
    assert not Path(upload["folder_path"]).exists()  # the staging folder is gone afterwards
    api.create_tag.assert_called_once_with(
        REPO_ID,
        tag="v0.1.0",
        tag_message="routing-atlas release v0.1.0",
        revision="0123abcd" * 5,
        repo_type="dataset",
    )
    assert result.commit == "0123abcd" * 5

    # What was uploaded is a complete release that load_dataset opens, whose card names the hub revision.
    for name in (
        "README.md",
        "LICENSE.md",
        "manifest.json",
        "validation.json",
        "CHANGELOG.md",
        "release.json",
    ):
        assert name in hub.uploaded
    assert "scripts/reproduce_metrics.py" in hub.uploaded
    uploaded = tmp_path / "uploaded"
    assert len(datasets.load_dataset(str(uploaded), "senses", split="train")) == 120
    card = (uploaded / "README.md").read_text()
    assert f'load_dataset("{REPO_ID}", "senses", split="train", revision="v0.1.0")' in card
    script = (uploaded / "scripts" / "reproduce_metrics.py").read_text()
    assert f"HUB_ID = '{REPO_ID}'" in script and "REVISION = 'v0.1.0'" in script


def test_an_existing_tag_is_refused_before_anything_is_sent(atlas_v1):
    with mock.patch("atlas_build.publish.hub.HfApi") as HfApi:
        api = HfApi.return_value = fake_api(FakeHub(), tags=("v0.1.0",))
        with pytest.raises(VersionError, match="tag v0.1.0 already exists"):
            publish_hub(atlas_v1, "0.1.0", REPO_ID, log=lambda *_: None)
    assert [c[0] for c in api.method_calls] == ["list_repo_refs"]


def test_hub_dry_run_reads_but_never_writes(atlas_v2, releases):
    hub = FakeHub({"v0.1.0": releases / "v0.1.0"})
    with mock.patch("atlas_build.publish.hub.HfApi") as HfApi:
        api = HfApi.return_value = fake_api(hub, tags=("v0.1.0", "not-a-version"))
        result = publish_hub(
            atlas_v2, "0.2.0", REPO_ID, dry_run=True, validate=cached_validation, log=lambda *_: None
        )
    called = {c[0] for c in api.method_calls}
    assert called <= {"list_repo_refs", "hf_hub_download"}
    assert result.dry_run and result.previous == "0.1.0"
    # The previous release's data are not downloaded: changed configs show the net change only.
    assert "| `senses` | 150 | +30 | ? | ? | changed |" in result.changelog_entry
    assert (
        "| `routing-synthetic-moe-b` (new) random-init | 750 | +750 | 750 | 0 | new |"
        in result.changelog_entry
    )


def _scan(paths: list[Path], texts: list[str]) -> list[str]:
    found = [
        str(p)
        for root in paths
        for p in Path(root).rglob("*")
        if p.is_file() and TOKEN.encode() in p.read_bytes()
    ]
    return found + [f"text #{i}" for i, text in enumerate(texts) if TOKEN in text]


def test_the_token_is_never_written_anywhere(atlas_v2, releases, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # The CLI's gate, with the session's reports of the same manifest (real validation, run once).
    monkeypatch.setattr("atlas_build.publish.hub.run_validation_gate", cached_validation)
    runner = CliRunner()

    # Local publish through the CLI.
    local = tmp_path / "local"
    shutil.copytree(releases, local)
    shutil.rmtree(local / "v0.2.0")
    out_local = runner.invoke(main, ["publish", str(atlas_v2), "--version", "0.2.0", "--to", str(local)])
    assert out_local.exit_code == 0, out_local.output

    # Hub publish through the CLI, HfApi mocked (the previous release answered from the local v0.1.0).
    hub = FakeHub({"v0.1.0": releases / "v0.1.0"}, snapshot_to=tmp_path / "uploaded")
    with mock.patch("atlas_build.publish.hub.HfApi") as HfApi:
        api = HfApi.return_value = fake_api(hub, tags=("v0.1.0",))
        out_hub = runner.invoke(main, ["publish", str(atlas_v2), "--version", "0.2.0", "--repo-id", REPO_ID])
    assert out_hub.exit_code == 0, out_hub.output
    HfApi.assert_called_once_with()
    # No call passes a token (HfApi finds HF_TOKEN itself), and the token's value is in no argument.
    assert not [c for c in api.mock_calls if "token" in c.kwargs]
    assert TOKEN not in json.dumps([str(c) for c in api.mock_calls])

    # The hub release continues the changelog of v0.1.0.
    changelog = (tmp_path / "uploaded" / "CHANGELOG.md").read_text()
    assert "Compared with v0.1.0." in changelog and "## v0.1.0" in changelog

    captured = capfd.readouterr()
    texts = [out_local.output, out_hub.output, captured.out, captured.err, caplog.text]
    assert _scan([local, tmp_path / "uploaded", atlas_v2], texts) == []


def test_a_hub_refusal_is_reported_without_a_tag(atlas_v1, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr("atlas_build.publish.hub.run_validation_gate", cached_validation)
    error = HfHubHTTPError("403 Forbidden: no write access", response=mock.MagicMock(status_code=403))
    with mock.patch("atlas_build.publish.hub.HfApi") as HfApi:
        api = HfApi.return_value = fake_api(FakeHub())
        api.upload_folder.side_effect = error
        result = CliRunner().invoke(
            main, ["publish", str(atlas_v1), "--version", "0.1.0", "--repo-id", REPO_ID]
        )
    assert result.exit_code == 2
    assert "the Hub refused the upload" in result.output and "nothing was tagged" in result.output
    api.create_tag.assert_not_called()
