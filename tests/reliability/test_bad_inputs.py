"""The bad-input catalog: every case gets a clear message, a non-zero exit and nothing half-written.

Each case runs `atlas` (in this process, through click's runner) and checks the key words of its
message, the exit status, and that the output directory is either absent or byte-identical to before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from . import _support
from ._support import FAKE_ARGS, SENSES_TEXTS, snapshot
from .conftest import cli, copy_of


def refused(args: list[str], out: Path, *words: str, code: int = 2) -> str:
    """Run `atlas ARGS`; assert the exit code, every word in the output, and `out` untouched."""
    before = snapshot(out)
    existed = out.exists()
    result = cli(args)
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, f"{word!r} not in:\n{result.output}"
    assert "Traceback" not in result.output
    if existed:
        assert snapshot(out) == before, "the output directory changed"
    else:
        assert not out.exists(), "a refused build left its output directory behind"
    return result.output


def build(model: str, out: Path, *extra: str) -> list[str]:
    return ["build", "--model", model, "--out", str(out), "--no-progress", *extra]


def checkpoint_like(tiny_checkpoint: Path, dest: Path, **config_changes) -> Path:
    """A checkpoint sharing tiny-deepseek-v3's files (symlinks) with a changed config.json."""
    dest.mkdir()
    for path in tiny_checkpoint.iterdir():
        if path.name != "config.json":
            (dest / path.name).symlink_to(path)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **config_changes}))
    return dest


@pytest.fixture
def atlas(tmp_path, fake_reference) -> Path:
    """A finished atlas (fake model) to build into."""
    return copy_of(fake_reference, tmp_path / "atlas")


# ---- the model ----------------------------------------------------------------------------------------
def test_unknown_model_name_gets_a_near_miss_suggestion(tmp_path):
    refused(build("tiny-deepseek-v4", tmp_path / "out"), tmp_path / "out", "Did you mean 'tiny-deepseek-v3'?")


def test_dense_model_is_refused(tmp_path, tiny_checkpoint):
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = tmp_path / "tiny-llama"
    config = LlamaConfig(
        vocab_size=129280, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(dense)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # an offline tokenizer
        shutil.copy(tiny_checkpoint / name, dense / name)
    refused(build(str(dense), tmp_path / "out"), tmp_path / "out", "'llama' is a dense model", "deepseek_v3")


def test_model_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "no" / "such-checkpoint")
    refused(build(missing, tmp_path / "out"), tmp_path / "out", "does not exist", missing)


def test_corrupt_config_json(tmp_path, tiny_checkpoint):
    broken = checkpoint_like(tiny_checkpoint, tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "deepseek_v3", "hidden_size": ')
    refused(build(str(broken), tmp_path / "out"), tmp_path / "out", "config.json is corrupt", "re-download")


def test_unsupported_moe_architecture(tmp_path):
    ckpt = tmp_path / "phi-moe"
    ckpt.mkdir()
    config = {"model_type": "phimoe", "num_local_experts": 4, "num_experts_per_tok": 2}
    (ckpt / "config.json").write_text(json.dumps(config))
    refused(
        build(str(ckpt), tmp_path / "out"),
        tmp_path / "out",
        "'phimoe' is a Mixture-of-Experts family the atlas refuses: PhimoeTopKRouter chooses by sparsemixer",
        "supported MoE architectures",
    )


def test_unknown_engine_name_gets_a_suggestion(tmp_path):
    refused(
        build("tiny-deepseek-v3", tmp_path / "out", "--engine", "hff"), tmp_path / "out", "Did you mean 'hf'?"
    )


# ---- the corpus ---------------------------------------------------------------------------------------
def test_wordnet_missing(tmp_path):
    out = tmp_path / "out"
    refused(
        build("tiny-deepseek-v3", out, "--wordnet-dir", "/nonexistent/wordnet"),
        out,
        "'/nonexistent/wordnet' does not exist",
        "install WordNet 3.0",
    )


def test_empty_corpus_after_filters(tmp_path, monkeypatch):
    from atlas_build.engines import ENGINES

    monkeypatch.setitem(ENGINES._entries, "fake", f"{_support.__name__}:FakeEngine")  # no fixed corpus
    empty = tmp_path / "wordnet"  # a valid WordNet database with no lemma in it
    empty.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        (empty / f"data.{pos}").write_text("  1 WordNet 3.0 Copyright 2006 by Princeton University.\n")
        (empty / f"index.{pos}").write_text("")
        (empty / f"{pos}.exc").write_text("")
    out = tmp_path / "out"
    refused(build("fake-moe", out, "--engine", "fake", "--wordnet-dir", str(empty)), out, "corpus is empty")


def test_malformed_traces_file(tmp_path):
    pytest.importorskip("atlas_build.corpora.traces", reason="the traces corpus is not in this checkout")
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        '{"id": "t1", "prompt": "Hi", "reasoning": "Hm.", "answer": "Yo"}\n{"id": "t2", "prompt"\n'
    )
    out = tmp_path / "out"
    refused(
        build("tiny-deepseek-v3", out, "--corpus", "traces", "--traces", str(traces)),
        out,
        f"{traces}, line 2",
        "not valid JSON",
    )


def test_text_longer_than_the_models_context(tmp_path, tiny_checkpoint, corpus_seed):
    """Documented: the build refuses, before routing anything, naming the texts (TextTooLongError)."""
    short = checkpoint_like(tiny_checkpoint, tmp_path / "short-context", max_position_embeddings=32)
    out = copy_of(corpus_seed, tmp_path / "atlas")
    long_id = SENSES_TEXTS[-1][0]
    refused(
        build(str(short), out),
        out,
        "1 text(s) are longer than the model's context of 32 tokens",
        f"senses '{long_id}' (51 tokens)",
        "Nothing was written",
    )


@pytest.mark.parametrize("corpus", ["wordnet", "jsonl"])
def test_text_longer_than_the_context_leaves_a_new_folder_unmade(tmp_path, tiny_checkpoint, fakes, corpus):
    """Refused before the corpus step writes anything (issue 27: manifest, card and corpus were left behind,
    and the fixed rerun was then refused)."""
    short = checkpoint_like(tiny_checkpoint, tmp_path / "short-context", max_position_embeddings=32)
    out = tmp_path / "atlas"
    extra = ["--max-lemmas", "2"]
    if corpus == "jsonl":
        probe = tmp_path / "probe.jsonl"
        probe.write_text(json.dumps({"id": "long", "text": SENSES_TEXTS[-1][1]}) + "\n")
        extra = ["--corpus", "jsonl", "--texts", str(probe)]
    refused(
        build(str(short), out, *extra), out, "longer than the model's context of 32", "Nothing was written"
    )
    assert cli(build(str(tiny_checkpoint), out, *extra)).exit_code == 0


def test_text_longer_than_the_context_through_the_engine(tmp_path, tiny_checkpoint):
    from atlas_build.engines.hf import HFEngine, TextTooLongError

    engine = HFEngine(str(checkpoint_like(tiny_checkpoint, tmp_path / "short", max_position_embeddings=32)))
    with pytest.raises(TextTooLongError, match="has 51 tokens, more than the model's context of 32"):
        engine.route(["short text", SENSES_TEXTS[-1][1]])
    engine.close()


def test_unusual_unicode_and_whitespace_are_routed_with_str_offsets(tiny_engine):
    """Combining marks, emoji (ZWJ sequences), RTL scripts, zero-width joiners, tabs/newlines/CR, no-break
    and em spaces, non-BMP letters: routed, not refused, and the offsets index the Python str."""
    texts = [text for _, text, _ in SENSES_TEXTS[:6]] + ["\U0001f600", "x\U00020000y", " \t\n"]
    batch = tiny_engine.route(texts)
    tokenizer = tiny_engine.tokenizer
    offset = 0
    for text, count in zip(texts, batch.token_counts.tolist(), strict=True):
        ids = batch.token_ids[offset : offset + count].tolist()
        spans = batch.char_spans[offset : offset + count].tolist()
        offset += count
        assert spans[0] == [-1, -1]  # R1's BOS
        body = spans[1:]
        assert all(0 <= s <= e <= len(text) for s, e in body), (text, body)
        assert [s for s, _ in body] == sorted(s for s, _ in body)
        covered = set().union(*(range(s, e) for s, e in body))
        assert covered == set(range(len(text))), text  # every character, whitespace included
        assert body[-1][1] == len(text)  # UTF-16 or byte offsets would overshoot on non-BMP text
        for token_id, (s, e) in zip(ids[1:], body, strict=True):
            piece = tokenizer.decode([token_id])
            if "\ufffd" not in piece:  # a whole-character token: its span is exactly its text
                assert text[s:e] == piece, (text, s, e, piece)
            else:  # a byte of a multi-byte character: its span holds that one (whole) character
                assert len(text[s:e].strip()) == 1, (text, s, e)
        assert tokenizer.decode(ids[1:]) == text


def test_unusual_unicode_in_the_atlas(real_reference):
    """The same texts through `atlas build`: target tokens cover the target word of every text."""
    import pyarrow.parquet as pq

    from atlas_build.atlas.manifest import Manifest

    manifest = Manifest.load(real_reference)
    rows = []
    for rel in manifest.config_files("routing-tiny-deepseek-v3"):
        rows += pq.read_table(real_reference / rel).to_pylist()
    for example_id, text, target in SENSES_TEXTS:
        tokens = [r for r in rows if r["source_id"] == example_id]
        target_tokens = [r for r in tokens if r["is_target"]]
        start, end = min(r["char_start"] for r in target_tokens), max(r["char_end"] for r in target_tokens)
        assert target in text[start:end] and len(text[start:end].strip()) <= len(target) + 2
        assert max(r["char_end"] for r in tokens) == len(text)


# ---- options ------------------------------------------------------------------------------------------
def test_batch_size_zero(tmp_path):
    out = tmp_path / "out"
    refused(build("tiny-deepseek-v3", out, "--batch-size", "0"), out, "Invalid value for '--batch-size'", "0")


def test_unknown_dtype(tmp_path):
    out = tmp_path / "out"
    refused(build("tiny-deepseek-v3", out, "--dtype", "float8"), out, "Invalid value for '--dtype'", "float8")


def test_output_path_is_a_file(tmp_path):
    out = tmp_path / "atlas.parquet"
    out.write_bytes(b"not a directory")
    refused(build("tiny-deepseek-v3", out), out, f"--out {out} is a file")
    assert out.read_bytes() == b"not a directory"


def test_output_path_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "atlas"
    refused(build("tiny-deepseek-v3", out), out, f"--out {out} is below the file {tmp_path / 'file'}")


def test_atlas_of_an_incompatible_schema_version(atlas, fakes):
    manifest = json.loads((atlas / "manifest.json").read_text())
    manifest["schema_version"] = 0
    (atlas / "manifest.json").write_text(json.dumps(manifest, indent=2))
    refused(
        ["build", "--out", str(atlas), *FAKE_ARGS],
        atlas,
        "schema version 0",
        "build into a new directory",
        code=3,
    )


def test_corpus_options_that_conflict_with_the_atlas(atlas, fakes):
    args = ["build", "--out", str(atlas), *FAKE_ARGS, "--max-lemmas", "3"]
    refused(args, atlas, "built with --max-lemmas 2, not 3", "every model of an atlas routes the same texts")


# ---- model slugs --------------------------------------------------------------------------------------
def test_slug_of_an_existing_different_model(atlas, fakes):
    args = ["build", "--out", str(atlas), *FAKE_ARGS, "--model", "other-fake-moe", "--slug", "fake-moe"]
    refused(args, atlas, "already has a model with slug 'fake-moe'", "pass --slug")


@pytest.mark.parametrize("slug", ["../x", "/abs", "a/../../b", "..", "UPPER", "a b"])
def test_slug_that_would_escape_or_break_the_atlas(tmp_path, slug):
    out = tmp_path / "nested" / "out"
    refused(build("tiny-deepseek-v3", out, "--slug", slug), out, f"invalid model slug {slug!r}")
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere, inside or outside


# ---- publishing ---------------------------------------------------------------------------------------
def test_publish_a_non_semver_version(atlas, tmp_path):
    pytest.importorskip("atlas_build.publish", reason="`atlas publish` is not in this checkout")
    releases = tmp_path / "releases"
    before = snapshot(atlas)
    refused(
        ["publish", str(atlas), "--version", "1.0", "--to", str(releases)],
        releases,
        "'1.0' is not a semantic version",
    )
    assert snapshot(atlas) == before


def test_publish_an_existing_version(atlas, tmp_path):
    pytest.importorskip("atlas_build.publish", reason="`atlas publish` is not in this checkout")
    releases = tmp_path / "releases"
    (releases / "v1.0.0").mkdir(parents=True)
    (releases / "v1.0.0" / "manifest.json").write_text("{}")
    before = snapshot(atlas)
    refused(
        ["publish", str(atlas), "--version", "1.0.0", "--to", str(releases)],
        releases,
        "v1.0.0 already exists",
        "never changes",
    )
    assert snapshot(atlas) == before


def test_fakes_match_the_real_corpus_counts():
    """The driver's nltk-free corpus_counts stands in for the real one: they agree on the fixed corpus."""
    from atlas_build.corpora import corpus_counts

    from ._support import fake_corpus_counts, fake_wordnet_corpora

    tables = fake_wordnet_corpora()
    assert fake_corpus_counts(tables) == corpus_counts(tables)
