"""The bad-input catalog of issue 12: damaged checkpoints and WordNet files, inconsistent routing configs,
pathological JSON, options that would do nothing, foreign manifests, unwritable targets.

Each case: one line naming the problem and the way out, exit status 2, no traceback, and the output folder
absent (or byte-identical) afterwards (`refused`).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from ._support import FAKE_ARGS, snapshot
from .conftest import cli, copy_of
from .test_bad_inputs import build, checkpoint_like, refused


def one_line(output: str) -> None:
    lines = [line for line in output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output


def edited_weights(tiny_checkpoint: Path, dest: Path, edit) -> Path:
    """A copy of the tiny checkpoint whose tensors `edit(dict)` changed (config and tokenizer shared)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for path in tiny_checkpoint.iterdir():
        if path.name != "model.safetensors":
            (dest / path.name).symlink_to(path)
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    edit(tensors)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


# ---- checkpoints whose tensors do not fit their architecture ------------------------------------------
ROUTER = "model.layers.1.mlp.gate.weight"
BIAS = "model.layers.2.mlp.gate.e_score_correction_bias"


@pytest.mark.parametrize(
    ("name", "edit", "words"),
    [
        ("no-router", lambda t: t.pop(ROUTER), ["1 missing", ROUTER]),
        ("no-bias", lambda t: t.pop(BIAS), ["1 missing", BIAS]),
        (
            "extra",
            lambda t: t.__setitem__("model.layers.1.mlp.gate.extra", t[BIAS].clone()),
            ["1 unexpected"],
        ),
        (
            "mismatched",
            lambda t: t.__setitem__(ROUTER, t[ROUTER][:16].clone()),
            ["1 mismatched", f"{ROUTER} (checkpoint (16, 64), model (32, 64))"],
        ),
    ],
)
def test_tensors_that_do_not_fit_are_refused_by_name(tmp_path, tiny_checkpoint, name, edit, words):
    """transformers fills a missing router or bias with fresh values and routes on: refused instead."""
    ckpt = edited_weights(tiny_checkpoint, tmp_path / name, edit)
    out = tmp_path / "out"
    output = refused(build(str(ckpt), out), out, *words, "does not match its architecture", "re-download")
    one_line(output)


def test_a_truncated_safetensors_file_is_named(tmp_path, tiny_checkpoint):
    ckpt = checkpoint_like(tiny_checkpoint, tmp_path / "truncated")
    (ckpt / "model.safetensors").unlink()
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    one_line(refused(build(str(ckpt), out), out, "model.safetensors is truncated or corrupt", "re-download"))


def test_missing_shards_named_in_the_index_are_listed(tmp_path, tiny_checkpoint):
    ckpt = checkpoint_like(tiny_checkpoint, tmp_path / "sharded")
    (ckpt / "model.safetensors").unlink()
    shutil.copy(tiny_checkpoint / "model.safetensors", ckpt / "model-00001-of-00002.safetensors")
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="np") as handle:
        keys = list(handle.keys())
    weight_map = {key: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, key in enumerate(keys)}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    one_line(
        refused(
            build(str(ckpt), out),
            out,
            "1 of the 2 weight files its index names are missing",
            "model-00002-of-00002",
        )
    )


# ---- routing configs that cannot describe a router ------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"num_experts_per_tok": 40}, "top-k (num_experts_per_tok) is 40; it must be between 1 and the 32"),
        ({"num_experts_per_tok": 0}, "top-k (num_experts_per_tok) is 0"),
        ({"first_k_dense_replace": 6}, "no decoder layer is a Mixture-of-Experts layer"),
        ({"n_group": 5}, "n_group is 5, which does not divide the 32 routed experts"),
        ({"topk_group": 9}, "topk_group is 9; it must be between 1 and n_group = 8"),
        (
            {"topk_group": 1, "num_experts_per_tok": 8},
            "top-k = 8 experts cannot be chosen from topk_group = 1",
        ),
        ({"routed_scaling_factor": -1.0}, "routed_scaling_factor is -1.0"),
    ],
)
def test_inconsistent_routing_configs_are_refused_before_anything_is_written(
    tmp_path, tiny_checkpoint, changes, words
):
    ckpt = checkpoint_like(tiny_checkpoint, tmp_path / "inconsistent", **changes)
    out = tmp_path / "out"
    one_line(refused(build(str(ckpt), out), out, words, "fix the config or pass another checkpoint"))


# ---- pathological JSON in config.json -------------------------------------------------------------------
def _config_text(tiny_checkpoint: Path) -> str:
    return (tiny_checkpoint / "config.json").read_text()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("deep", "nested too deeply"),
        ("duplicate", "key 'num_experts_per_tok' appears twice"),
        ("nan", "NaN is not a JSON number"),
        ("array", "holds a JSON list, not a model config"),
        ("number-type", "model_type is 5, not a name"),
        ("string-number", "num_experts_per_tok"),
        ("not-utf8", "not valid JSON"),
    ],
)
def test_pathological_config_json(tmp_path, tiny_checkpoint, case, words):
    ckpt = checkpoint_like(tiny_checkpoint, tmp_path / "config")
    config = json.loads(_config_text(tiny_checkpoint))
    path = ckpt / "config.json"
    if case == "deep":
        path.write_text(
            json.dumps({**config, "extra": None})[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        )
    elif case == "duplicate":
        path.write_text(json.dumps(config)[:-1] + ', "num_experts_per_tok": 4}')
    elif case == "nan":
        path.write_text(json.dumps({**config, "routed_scaling_factor": float("nan")}))
    elif case == "array":
        path.write_text(json.dumps([config]))
    elif case == "number-type":
        path.write_text(json.dumps({**config, "model_type": 5}))
    elif case == "string-number":
        path.write_text(json.dumps({**config, "num_experts_per_tok": "8"}))
    else:
        path.write_bytes(b"\xff\xfe" + json.dumps(config).encode("utf-16-le"))
    out = tmp_path / "out"
    one_line(refused(build(str(ckpt), out), out, words))


# ---- damaged WordNet ------------------------------------------------------------------------------------
@pytest.fixture
def wordnet_copy(tmp_path, requires_wordnet) -> Path:
    from atlas_build.corpora.wordnet import REQUIRED_FILES, find_wordnet_dir

    source = find_wordnet_dir()
    if source.suffix == ".zip":
        pytest.skip("WordNet is installed as nltk's zip: the damage test copies a folder")
    dest = tmp_path / "wordnet"
    dest.mkdir()
    for name in REQUIRED_FILES:
        shutil.copy(source / name, dest / name)
    return dest


@pytest.mark.parametrize("cut", ["mid-line", "at-a-line"])
def test_a_truncated_wordnet_data_file_is_caught_by_wordnet_check_and_build(tmp_path, wordnet_copy, cut):
    data = (wordnet_copy / "data.noun").read_bytes()
    end = len(data) // 2
    if cut == "at-a-line":
        end = data.index(b"\n", end) + 1
    (wordnet_copy / "data.noun").write_bytes(data[:end])
    check = cli(["wordnet-check", "--wordnet-dir", str(wordnet_copy)])
    assert check.exit_code == 2 and f"WordNet at {wordnet_copy} is damaged" in check.output, check.output
    assert "--reinstall" in check.output
    one_line(check.output)
    out = tmp_path / "out"
    words = "data.noun is cut off mid-line" if cut == "mid-line" else "which ends before it"
    one_line(
        refused(
            build("tiny-deepseek-v3", out, "--wordnet-dir", str(wordnet_copy), "--max-lemmas", "2"),
            out,
            words,
        )
    )


def test_an_intact_wordnet_passes_the_check(requires_wordnet):
    result = cli(["wordnet-check"])
    assert result.exit_code == 0 and "Princeton WordNet 3.0" in result.output, result.output


# ---- options that do nothing, or are out of range --------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--traces", "t.jsonl"], "--traces is read only with --corpus traces"),
        (
            ["--corpus", "traces", "--traces", "t.jsonl", "--max-lemmas", "3"],
            "--max-lemmas is an option of --corpus wordnet",
        ),
        (["--executor", "raay"], "unknown executor 'raay'. Did you mean 'ray'?"),
        (["--seed", "-1"], "Invalid value for '--seed'"),
        (["--seed", str(2**32)], "Invalid value for '--seed'"),
        (["--threads", "0"], "Invalid value for '--threads'"),
        (["--shards", "4"], "are options of --executor ray"),
        (["--model-id", "/home/me/ckpt"], "looks like a path"),
    ],
)
def test_options_that_would_do_nothing_or_are_out_of_range(tmp_path, fakes, extra, words):
    out = tmp_path / "out"
    refused(["build", "--out", str(out), *FAKE_ARGS, *extra], out, words)


def test_an_unknown_executor_is_refused_before_the_corpus_is_written(tmp_path, fakes, corpus_seed):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(
        ["build", "--out", str(empty), *FAKE_ARGS, "--executor", "slurm"], empty, "unknown executor 'slurm'"
    )
    assert list(empty.iterdir()) == []


# ---- manifests and targets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content", ["[]", "null", '"atlas"', "{" * 50_000, '{"format": "routing-atlas", "files": 5']
)
def test_damaged_or_foreign_manifests(tmp_path, fakes, fake_reference, content):
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    (atlas / "manifest.json").write_text(content)
    before = snapshot(atlas)
    result = cli(["build", "--out", str(atlas), *FAKE_ARGS])
    assert result.exit_code == 3 and "manifest.json" in result.output, result.output  # a damaged atlas
    one_line(result.output)
    assert snapshot(atlas) == before


def test_an_unwritable_target_gets_the_reason(tmp_path, fakes, monkeypatch):
    out = tmp_path / "ro" / "atlas"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    refused(
        ["build", "--out", str(out), *FAKE_ARGS],
        out,
        "cannot create the atlas directory",
        "Read-only file system",
    )


@pytest.mark.parametrize("where", ["below-a-file", "read-only"])
def test_model_materialize_onto_an_unwritable_target(tmp_path, monkeypatch, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "ckpt" if where == "below-a-file" else tmp_path / "ro" / "ckpt"
    if where == "read-only":
        import atlas_build.models.tiny_deepseek_v3 as tiny

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tiny, "materialize", read_only)
    result = cli(["model", "materialize", "tiny-deepseek-v3", str(out)])
    assert result.exit_code == 2, result.output
    assert ("is below the file" if where == "below-a-file" else "Read-only file system") in result.output
    one_line(result.output)
    assert not out.exists()


# ---- portable identity of a local checkpoint ------------------------------------------------------------
def test_a_local_checkpoint_is_recorded_by_folder_name_and_hash_never_by_path(
    tmp_path, fakes, tiny_checkpoint
):
    import pyarrow.parquet as pq

    from atlas_build.atlas.manifest import Manifest

    out = tmp_path / "atlas"
    result = cli(build(str(tiny_checkpoint), out, "--max-lemmas", "2"))
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    (row,) = pq.read_table(out / manifest.config_files("models")[0]).to_pylist()
    assert row["model_id"] == "tiny-deepseek-v3" and len(row["checkpoint_sha256"]) == 64
    for path in (out / "manifest.json", out / "README.md"):
        assert str(tiny_checkpoint) not in path.read_text(), f"{path.name} holds the build machine's path"
    named = tmp_path / "named"
    result = cli(build(str(tiny_checkpoint), named, "--max-lemmas", "2", "--model-id", "my-org/tiny-moe"))
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(named)
    (row,) = pq.read_table(named / manifest.config_files("models")[0]).to_pylist()
    assert row["model_id"] == "my-org/tiny-moe" and row["model_slug"] == "tiny-moe"
    assert manifest.builds[-1]["model"] == "my-org/tiny-moe"


# ---- pathological JSON lines in a traces file -----------------------------------------------------------
TRACE = {"id": "t1", "prompt": "Hi", "reasoning": "Hm.", "answer": "Yo"}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (json.dumps([TRACE]), "line 1: expected a JSON object, got list"),
        ('{"id": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 1: nested too deeply"),
        (
            '{"id": "t1", "id": "t2", "prompt": "Hi", "reasoning": "Hm.", "answer": "Yo"}',
            "key 'id' appears twice",
        ),
        (
            '{"id": "t1", "prompt": NaN, "reasoning": "Hm.", "answer": "Yo"}',
            "NaN is not a JSON value",
        ),
        (
            '{"id": "t1", "prompt": 3, "reasoning": "Hm.", "answer": "Yo"}',
            "field 'prompt' must be a string, got int",
        ),
    ],
)
def test_pathological_json_lines_in_a_traces_file(tmp_path, content, words):
    traces = tmp_path / "traces.jsonl"
    traces.write_text(content + "\n")
    out = tmp_path / "out"
    one_line(
        refused(build("tiny-deepseek-v3", out, "--corpus", "traces", "--traces", str(traces)), out, words)
    )
