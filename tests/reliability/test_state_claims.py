"""State that stays true: a resumed build refuses corpus options other than the atlas's (--seed included), and
the built-in checkpoint's hash is checked before it is used (the built-in model is RANDOM-INIT)."""

from __future__ import annotations

import json

from ._support import FAKE_ARGS
from .conftest import cli, copy_of


def test_a_resumed_build_refuses_another_seed(fake_reference, tmp_path, fakes):
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    before = (atlas / "manifest.json").read_bytes()
    result = cli(["build", "--out", str(atlas), *FAKE_ARGS, "--seed", "1"])
    assert result.exit_code == 2, result.output
    assert "built with --seed 0, not 1" in result.output and "pass --seed 0" in result.output
    assert (atlas / "manifest.json").read_bytes() == before
    # The same seed resumes (nothing to redo), and what the build record says is what the corpus was made with.
    assert cli(["build", "--out", str(atlas), *FAKE_ARGS, "--seed", "0"]).exit_code == 0
    manifest = json.loads((atlas / "manifest.json").read_text())
    assert manifest["builds"][-1]["corpus"]["seed"] == manifest["corpus_counts"]["options"]["seed"] == 0


def test_a_tampered_builtin_checkpoint_is_generated_again(tmp_path, monkeypatch, capsys):
    import atlas_build.models as models

    monkeypatch.setenv("ROUTING_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_VERIFIED", {})
    path = models.builtin_checkpoint("tiny-deepseek-v3")
    recorded = (path / models.HASH_FILE).read_text().strip()
    assert models.directory_sha256(path) == recorded
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-100] ^= 0xFF  # one flipped byte in the weights, same size
    weights.write_bytes(bytes(data))
    assert models.builtin_checkpoint("tiny-deepseek-v3") == path
    assert "does not match the hash recorded" in capsys.readouterr().err
    assert weights.read_bytes() == original and models.directory_sha256(path) == recorded
    # Verified once per process while the files are unchanged: no second hashing, no second warning.
    assert models.builtin_checkpoint("tiny-deepseek-v3") == path
    assert capsys.readouterr().err == ""
