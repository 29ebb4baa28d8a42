"""Provenance: metrics.json records the manifest and data hashes it read; altered, extra or missing files
are refused with one line (nothing written); --no-verify computes and the report says so."""

from __future__ import annotations

import hashlib
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas_build.commands.metrics import command
from dataset_cards.synthetic import write_synthetic_atlas


@pytest.fixture
def atlas(tmp_path):
    return write_synthetic_atlas(tmp_path / "atlas", n_lemmas=12, n_experts=16, n_layers=2, top_k=2, seed=2)


def run(atlas, out, hf_cache, *extra):
    args = [
        str(atlas),
        "--out",
        str(out),
        "--bootstrap",
        "50",
        "--permutations",
        "9",
        "--cache-dir",
        str(hf_cache),
    ]
    return CliRunner().invoke(command, [*args, *extra])


def test_metrics_record_the_manifest_and_data_hashes(atlas, tmp_path, hf_cache):
    result = run(atlas, tmp_path / "r", hf_cache)
    assert result.exit_code == 0, result.output
    prov = json.loads((tmp_path / "r" / "metrics.json").read_text())["provenance"]
    assert prov["manifest_sha256"] == hashlib.sha256((atlas / "manifest.json").read_bytes()).hexdigest()
    manifest = json.loads((atlas / "manifest.json").read_text())
    assert prov["data_files"] == {rel: meta["sha256"] for rel, meta in manifest["files"].items()}
    for rel, digest in prov["data_files"].items():
        assert hashlib.sha256((atlas / rel).read_bytes()).hexdigest() == digest
    assert prov["verified"] is True and prov["code_version"]
    assert prov["seeds"]["bootstrap_controls"] == 2 and prov["options"]["n_bootstrap"] == 50


def _alter_senses(atlas):
    path = next((atlas / "senses").glob("*.parquet"))
    table = pq.read_table(path)
    gloss = pc.utf8_upper(table.column("gloss"))
    pq.write_table(table.set_column(table.schema.get_field_index("gloss"), "gloss", gloss), path)
    return path.relative_to(atlas).as_posix()


def test_altered_file_is_refused_in_one_line(atlas, tmp_path, hf_cache):
    rel = _alter_senses(atlas)
    result = run(atlas, tmp_path / "r", hf_cache)
    assert result.exit_code == 3  # a damaged atlas (atlas_build/errors.py)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"{rel} (sha256 differs)" in message and "--no-verify" in message
    assert not (tmp_path / "r").exists()


def test_extra_data_file_is_refused(atlas, tmp_path, hf_cache):
    shard = next((atlas / "routing-synthetic-moe").glob("*.parquet"))
    (shard.parent / "routing-synthetic-moe-99999.parquet").write_bytes(shard.read_bytes())
    result = run(atlas, tmp_path / "r", hf_cache)
    assert result.exit_code == 3  # a damaged atlas (atlas_build/errors.py)
    assert "routing-synthetic-moe-99999.parquet (not in the manifest)" in result.output


def test_a_symlinked_data_file_is_refused_even_with_the_same_bytes(atlas, tmp_path, hf_cache):
    """A data file replaced by a link to an identical copy outside the atlas: the hash matches, the link is refused."""
    path = next((atlas / "senses").glob("*.parquet"))
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    result = run(atlas, tmp_path / "r", hf_cache)
    assert result.exit_code == 3 and "Traceback" not in result.output  # a damaged atlas
    assert f"{path.relative_to(atlas).as_posix()} (a symbolic link)" in result.output
    assert not (tmp_path / "r").exists()


def test_no_verify_computes_and_says_so(atlas, tmp_path, hf_cache):
    _alter_senses(atlas)
    result = run(atlas, tmp_path / "r", hf_cache, "--no-verify")
    assert result.exit_code == 0, result.output
    assert "NOT checked" in result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["provenance"]["verified"] is False
    assert "NOT CHECKED" in (tmp_path / "r" / "report.md").read_text()


class _Sibling:
    def __init__(self, name, sha):
        self.rfilename = name
        self.lfs = type("Lfs", (), {"sha256": sha})() if sha else None


def test_hub_source_is_checked_against_the_manifest_of_its_revision(atlas, tmp_path, monkeypatch):
    import huggingface_hub

    from atlas_build.metrics.provenance.verify import IntegrityError, Provenance

    manifest = json.loads((atlas / "manifest.json").read_text())
    remote = {rel: meta["sha256"] for rel, meta in manifest["files"].items()}
    asked = {}

    def download(repo_id, filename, repo_type, revision):
        asked["download"] = (repo_id, filename, repo_type, revision)
        return str(atlas / "manifest.json")

    class Api:
        def dataset_info(self, repo_id, revision, files_metadata):
            asked["info"] = (repo_id, revision, files_metadata)
            return type("Info", (), {"siblings": [_Sibling(k, v) for k, v in remote.items()]})()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    configs = {meta["config"] for meta in manifest["files"].values()}
    prov = Provenance("org/atlas", revision="v1.0.0")
    prov.start(configs)
    prov.finish()
    assert asked["download"] == ("org/atlas", "manifest.json", "dataset", "v1.0.0")
    assert asked["info"] == ("org/atlas", "v1.0.0", True)
    record = prov.record({}, {})
    assert record["manifest_sha256"] == hashlib.sha256((atlas / "manifest.json").read_bytes()).hexdigest()
    assert record["verified"] is True

    rel = sorted(remote)[0]
    remote[rel] = "0" * 64
    prov = Provenance("org/atlas", revision="v1.0.0")
    prov.start(configs)
    with pytest.raises(IntegrityError, match=f"{rel} \\(sha256 differs\\)"):
        prov.finish()
