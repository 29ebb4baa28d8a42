"""The CLI surface of the spine: `atlas model materialize` and clear errors for models that cannot be routed."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from atlas_build.cli import main


def test_materialize_writes_a_standard_offline_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    result = CliRunner().invoke(main, ["model", "materialize", "tiny-deepseek-v3", str(out)])
    assert result.exit_code == 0, result.output
    assert "RANDOM-INIT" in result.output
    config = json.loads((out / "config.json").read_text())
    # R1's routing keys, as R1's own config.json carries them (vLLM reads them).
    assert config["topk_method"] == "noaux_tc" and config["scoring_func"] == "sigmoid"
    assert config["n_routed_experts"] == 32 and config["num_experts_per_tok"] == 8
    assert config["n_group"] == 8 and config["topk_group"] == 4 and config["first_k_dense_replace"] == 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    biases = [layer.mlp.gate.e_score_correction_bias for layer in model.model.layers[1:]]
    assert all(torch.count_nonzero(b) == 32 for b in biases)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The bank of the river.")["input_ids"]
    # DeepSeek-R1 prepends <｜begin▁of▁sentence｜> (id 0); its vocabulary has 128815 entries (incl. added).
    assert ids[0] == 0 and tokenizer.convert_ids_to_tokens(0) == "<｜begin▁of▁sentence｜>"
    assert len(tokenizer) == 128815
    assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["The", "Ġbank"]


def test_materialize_is_deterministic_and_refuses_to_overwrite(tmp_path):
    from atlas_build.engines.hf import checkpoint_sha256

    runner = CliRunner()
    for name in ("a", "b"):
        assert (
            runner.invoke(main, ["model", "materialize", "tiny-deepseek-v3", str(tmp_path / name)]).exit_code
            == 0
        )
    assert checkpoint_sha256(tmp_path / "a") == checkpoint_sha256(tmp_path / "b")
    again = runner.invoke(main, ["model", "materialize", "tiny-deepseek-v3", str(tmp_path / "a")])
    assert again.exit_code == 2 and "not empty" in again.output


def test_unknown_builtin_gets_a_suggestion(tmp_path):
    result = CliRunner().invoke(main, ["model", "materialize", "tiny-deepseek-v4", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "Did you mean 'tiny-deepseek-v3'" in result.output
    assert not (tmp_path / "x").exists()


def test_dense_model_is_refused_with_the_supported_list(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = tmp_path / "dense"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(ckpt)
    result = CliRunner().invoke(
        main, ["build", "--model", str(ckpt), "--out", str(tmp_path / "atlas"), "--max-lemmas", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "dense model" in result.output and "deepseek_v3" in result.output and "mixtral" in result.output


def test_broken_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").write_text('{"model_type": "deepseek_v3", ')
    result = CliRunner().invoke(
        main, ["build", "--model", str(broken), "--out", str(tmp_path / "atlas"), "--max-lemmas", "1"]
    )
    assert result.exit_code == 2
    assert "config.json is corrupt" in result.output


def test_the_demo_snippet_pastes_into_python_as_it_is(tmp_path):
    """`make demo` prints a load_dataset snippet: pasted into Python it must run as is (no indentation)."""
    import ast
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        import pytest

        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[2]
    demo = tmp_path / "demo-atlas"
    dry = subprocess.run(
        ["make", "-n", "demo", f"DEMO_DIR={demo}"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    start = next(i for i, line in enumerate(dry) if "paste into Python" in line)
    echoes = [line for line in dry[start + 1 :] if line.startswith("echo")]
    printed = subprocess.run(
        ["bash", "-c", "\n".join(echoes)], capture_output=True, text=True, check=True
    ).stdout
    code = printed.strip("\n")
    tree = ast.parse(code)  # IndentationError for the old, indented snippet
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    paths = [c.args[0].value for c in calls if ast.unparse(c.func) == "pathlib.Path" and c.args]
    assert paths == [str(demo)]
    loads = [c for c in calls if ast.unparse(c.func) == "load_dataset"]
    assert {c.args[1].value for c in loads} == {"routing-tiny-deepseek-v3", "senses"}
    # Every load reads through a cache keyed by manifest.json (exact reads): never another atlas's rows.
    assert all(any(k.arg == "cache_dir" for k in c.keywords) for c in loads)
