"""`--model ORG/NAME[@REV]` resolves through huggingface_hub, from a real Hugging Face cache layout, offline.

The cache is built by hand in a temporary HF_HOME exactly as `huggingface_hub` lays it out
(`hub/models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main}`, snapshot files symlinked to blobs), and
`huggingface_hub.scan_cache_dir` is asked to recognise it before anything is resolved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_build.engines.base import ModelLoadError
from atlas_build.engines.checkpoint import model_identity, parse_model_ref, resolve_checkpoint

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "test-org/Tiny-MoE"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(hf_home: Path, repo_id: str, checkpoint: Path, commit: str = COMMIT) -> Path:
    """Lay `checkpoint`'s files into `hf_home`'s hub cache as one commit on `main`; returns the snapshot."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, tiny_checkpoint, monkeypatch):
    """A temporary HF_HOME holding REPO_ID, offline; huggingface_hub's constants follow it."""
    from huggingface_hub import constants

    hf_home = tmp_path / "hf-home"
    snapshot = populate_hf_cache(hf_home, REPO_ID, tiny_checkpoint)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home, snapshot


def test_the_hand_made_cache_is_a_real_hf_cache(hf_cache):
    from huggingface_hub import scan_cache_dir

    hf_home, _ = hf_cache
    info = scan_cache_dir(hf_home / "hub")
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and {r.commit_hash for r in repo.revisions} == {COMMIT}
    assert {f.file_name for r in repo.revisions for f in r.files} >= {"config.json", "model.safetensors"}


@pytest.mark.parametrize("model, revision", [(REPO_ID, None), (f"{REPO_ID}@main", None), (REPO_ID, COMMIT)])
def test_hub_id_resolves_from_the_cache_offline(hf_cache, model, revision):
    _, snapshot = hf_cache
    path, resolved_revision, builtin = resolve_checkpoint(model, revision)
    assert path == snapshot and resolved_revision == COMMIT and not builtin
    assert model_identity(model, revision) == REPO_ID


def test_hub_id_missing_from_the_cache_says_how_to_get_it(hf_cache):
    with pytest.raises(ModelLoadError) as error:
        resolve_checkpoint("deepseek-ai/DeepSeek-R1")
    message = str(error.value)
    assert (
        "not in the local Hugging Face cache" in message and "hf download deepseek-ai/DeepSeek-R1" in message
    )


@pytest.mark.parametrize(
    "model, revision, expected",
    [
        ("deepseek-ai/DeepSeek-R1", None, ("hub", "deepseek-ai/DeepSeek-R1", None)),
        ("allenai/OLMoE-1B-7B-0924@v1.0", None, ("hub", "allenai/OLMoE-1B-7B-0924", "v1.0")),
        ("allenai/OLMoE-1B-7B-0924", "abc", ("hub", "allenai/OLMoE-1B-7B-0924", "abc")),
        ("tiny-deepseek-v3", None, ("builtin", "tiny-deepseek-v3", None)),
    ],
)
def test_model_refs_are_classified_without_the_network(model, revision, expected):
    ref = parse_model_ref(model, revision)
    assert (ref.kind, ref.name, ref.revision) == expected


@pytest.mark.parametrize(
    "model, revision, words",
    [
        ("./no/such/dir", None, "model path './no/such/dir' does not exist"),
        ("/no/such/dir", None, "model path '/no/such/dir' does not exist"),
        ("a/b/c", None, "model path 'a/b/c' does not exist"),
        ("org/name@v1", "v2", "pins revision 'v1' but --revision says 'v2'"),
        ("tiny-deepseek-v3", "main", "--revision is for hub models"),
        ("org/-bad-", None, "does not exist"),
    ],
)
def test_bad_model_refs_get_one_clear_line(model, revision, words):
    with pytest.raises(ModelLoadError, match=None) as error:
        parse_model_ref(model, revision)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_atlas_build_with_a_hub_id_offline(requires_wordnet, hf_cache, tmp_path):
    """The README's first command, with the checkpoint in the cache and no network: a real subprocess."""
    hf_home, _ = hf_cache
    out = tmp_path / "atlas"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-m", "atlas_build.cli", "build", "--model", REPO_ID, "--out", str(out)]
        + ["--max-lemmas", "2", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    import pyarrow.parquet as pq

    (models_file,) = (out / "models").glob("*.parquet")
    (row,) = pq.read_table(models_file).to_pylist()
    assert row["model_id"] == REPO_ID and row["revision"] == COMMIT and row["model_slug"] == "tiny-moe"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "routing-tiny-moe" in {entry["config"] for entry in manifest["files"].values()}
