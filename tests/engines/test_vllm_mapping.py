"""vLLM's routed-experts arrays -> atlas rows, on arrays of the documented shape (no vLLM, no GPU needed).

`CompletionOutput.routed_experts` is int `[prompt_tokens, num_hidden_layers, top_k]` with dense layers all
zero (vLLM 0.32-0.33); vLLM 0.21 gave `prompt_routed_experts` `[prompt_tokens, num_moe_layers, top_k]`.
Broken captures of some versions (a dropped last token, all-zero ids) must fail, not be written.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.engines.vllm import (
    VLLMEngine,
    VLLMMissingError,
    VLLMOptionsError,
    VLLMRoutingError,
    experts_from_vllm,
    routed_experts_of,
    routing_batch_from_vllm,
)
from atlas_build.errors import AtlasError

from .conftest import TEXTS, FakeLLM, request_output, vllm_layout

# DeepSeek-R1's shape, scaled down: 6 decoder layers, the first dense; top-8 of 32.
SHAPE = {"num_hidden_layers": 6, "moe_layers": (1, 2, 3, 4, 5), "n_routed_experts": 32, "top_k": 8}


def random_experts(n_tokens: int, seed: int = 0) -> np.ndarray:
    """`[n_tokens, 5, 8]` distinct ids per (token, layer)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.stack([rng.choice(32, size=8, replace=False) for _ in range(5)]) for _ in range(n_tokens)]
    ).reshape(n_tokens, 5, 8)


def test_full_layout_maps_moe_layers_and_sorts_ids():
    experts = random_experts(7)
    routed = vllm_layout(experts, 6, SHAPE["moe_layers"], np.random.default_rng(1))
    assert routed.shape == (7, 6, 8) and not routed[:, 0].any()
    out = experts_from_vllm(routed, n_tokens=7, **SHAPE)
    assert out.dtype == np.int16 and out.shape == (7, 5, 8)
    np.testing.assert_array_equal(out, np.sort(experts, axis=-1))


def test_moe_only_layout_of_older_versions_is_read():
    experts = random_experts(3)
    out = experts_from_vllm(experts.astype(np.int16), n_tokens=3, **SHAPE)
    np.testing.assert_array_equal(out, np.sort(experts, axis=-1))


def test_layer_mapping_follows_the_adapters_moe_layers():
    # An interleaved model (MoE every other layer): vLLM's row i is decoder layer i.
    experts = random_experts(4)[:, :3]
    routed = np.zeros((4, 6, 8), np.int32)
    routed[:, [1, 3, 5]] = experts
    shape = {**SHAPE, "moe_layers": (1, 3, 5)}
    np.testing.assert_array_equal(experts_from_vllm(routed, n_tokens=4, **shape), np.sort(experts, axis=-1))
    with pytest.raises(VLLMRoutingError, match="dense decoder layers"):
        experts_from_vllm(routed, n_tokens=4, **{**SHAPE, "moe_layers": (0, 2, 4)})


def test_dropped_last_prompt_token_is_refused():
    routed = vllm_layout(random_experts(5), 6, SHAPE["moe_layers"], np.random.default_rng(0))
    with pytest.raises(VLLMRoutingError, match="last prompt token has no routing .*SGLang's bug #20964"):
        experts_from_vllm(routed, n_tokens=6, **SHAPE)
    with pytest.raises(VLLMRoutingError, match="routing for 5 tokens"):
        experts_from_vllm(routed, n_tokens=9, **SHAPE)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_unsigned_ids_of_current_vllm_are_read(dtype):
    """vLLM stores ids as uint8 (<= 256 experts) or uint16: the same rows as from int32."""
    experts = random_experts(6)
    routed = vllm_layout(experts, 6, SHAPE["moe_layers"], np.random.default_rng(2)).astype(dtype)
    out = experts_from_vllm(routed, n_tokens=6, **SHAPE)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, np.sort(experts, axis=-1))
    if dtype != np.int32:  # 255 / 65535: out of range, refused (not wrapped to a valid id)
        routed[1, 2, 0] = np.iinfo(dtype).max
        with pytest.raises(VLLMRoutingError, match=rf"\[0, {np.iinfo(dtype).max}\].*valid ids are \[0, 32\)"):
            experts_from_vllm(routed, n_tokens=6, **SHAPE)


def test_minus_one_rows_are_named_as_prefix_cache_holes():
    routed = vllm_layout(random_experts(5), 6, SHAPE["moe_layers"], np.random.default_rng(0))
    routed[3:, 1:] = -1  # vLLM 0.21: tokens served from the prefix cache were left at -1
    with pytest.raises(
        VLLMRoutingError, match=r"-1 for every expert of MoE layer 1 at token 3 of text.*prefix-cache holes"
    ):
        experts_from_vllm(routed, n_tokens=5, **SHAPE)


def test_all_zero_moe_layer_is_refused():
    routed = vllm_layout(random_experts(5), 6, SHAPE["moe_layers"], np.random.default_rng(0))
    routed[:, 3] = 0
    with pytest.raises(VLLMRoutingError, match=r"all-zero expert ids for MoE layer 3 at token 0 of text"):
        experts_from_vllm(routed, n_tokens=5, **SHAPE)


def test_duplicate_ids_within_a_top_k_are_refused():
    routed = vllm_layout(random_experts(5), 6, SHAPE["moe_layers"], np.random.default_rng(0))
    routed[2, 4, 1] = routed[2, 4, 0]
    with pytest.raises(VLLMRoutingError, match=r"duplicate ids .* of MoE layer 4 at token 2 of text"):
        experts_from_vllm(routed, n_tokens=5, **SHAPE)


@pytest.mark.parametrize("bad", [32, -1])
def test_ids_out_of_range_are_refused(bad):
    routed = vllm_layout(random_experts(2), 6, SHAPE["moe_layers"], np.random.default_rng(0))
    routed[1, 2, 0] = bad
    with pytest.raises(VLLMRoutingError, match=r"valid ids are \[0, 32\)"):
        experts_from_vllm(routed, n_tokens=2, **SHAPE)


@pytest.mark.parametrize(
    ("routed", "match"),
    [
        (None, "no routed experts .*preempted"),
        (np.zeros((3, 6, 4), np.int32), "expected \\[tokens, layers, top_k=8\\]"),
        (np.zeros((3, 4, 8), np.int32), "4 layers"),
        (np.zeros((3, 6, 8), np.float32), "not integer"),
    ],
)
def test_malformed_arrays_are_refused(routed, match):
    with pytest.raises(VLLMRoutingError, match=match):
        experts_from_vllm(routed, n_tokens=3, **SHAPE)


def test_routed_experts_are_read_from_the_completion_then_the_older_field():
    routed = np.ones((2, 6, 8), np.int32)
    assert routed_experts_of(request_output([1, 2], routed)) is routed
    old = request_output([1, 2], None)
    old.prompt_routed_experts = routed
    assert routed_experts_of(old) is routed
    assert routed_experts_of(request_output([1, 2], None)) is None


def test_routing_batch_from_request_outputs():
    rng = np.random.default_rng(3)
    encoded = [
        {"ids": np.array([0, 11, 12], np.int64), "spans": np.array([[-1, -1], [0, 2], [2, 5]], np.int32)},
        {"ids": np.array([0, 13], np.int64), "spans": np.array([[-1, -1], [0, 4]], np.int32)},
    ]
    experts = [random_experts(3, 1), random_experts(2, 2)]
    outputs = [
        request_output(e["ids"], vllm_layout(x, 6, SHAPE["moe_layers"], rng))
        for e, x in zip(encoded, experts, strict=True)
    ]
    batch = routing_batch_from_vllm(encoded, ["<s>", "a", "b", "<s>", "c"], outputs, **SHAPE)
    assert batch.weights is None
    assert batch.token_counts.tolist() == [3, 2] and batch.n_tokens == 5
    assert batch.token_ids.tolist() == [0, 11, 12, 0, 13]
    assert batch.char_spans.shape == (5, 2) and batch.tokens[3] == "<s>"
    np.testing.assert_array_equal(batch.experts, np.sort(np.concatenate(experts), axis=-1))

    outputs[1].outputs[0].routed_experts[1, 2] = 0  # an MoE layer of token 1 of text 1 never filled
    with pytest.raises(VLLMRoutingError, match="all-zero expert ids for MoE layer 2 at token 1 of text 1"):
        routing_batch_from_vllm(encoded, ["<s>", "a", "b", "<s>", "c"], outputs, **SHAPE)
    outputs[1].outputs[0].routed_experts = outputs[1].outputs[0].routed_experts[:1]
    with pytest.raises(
        VLLMRoutingError, match="routing for 1 tokens of text 1, which has 2: the last prompt token has no"
    ):
        routing_batch_from_vllm(encoded, ["<s>", "a", "b", "<s>", "c"], outputs, **SHAPE)
    outputs[1].prompt_token_ids = [0, 13, 14]
    with pytest.raises(VLLMRoutingError, match="other tokens than it was given for text 1"):
        routing_batch_from_vllm(encoded, ["<s>", "a", "b", "<s>", "c"], outputs, **SHAPE)
    with pytest.raises(VLLMRoutingError, match="1 outputs for 2 prompts"):
        routing_batch_from_vllm(encoded, [], outputs[:1], **SHAPE)


# ---- the engine, with the stand-in vllm module ------------------------------------------------------
def test_missing_vllm_fails_at_construction_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(VLLMMissingError, match=r"pip install -r requirements/vllm\.txt"):
        VLLMEngine("tiny-deepseek-v3")
    # The CLI prints an AtlasError's message and exits 2, without a traceback.
    assert issubclass(VLLMMissingError, AtlasError)


def test_options_the_vllm_engine_cannot_honour(fake_vllm):
    with pytest.raises(VLLMOptionsError, match="--random-init needs the hf engine"):
        VLLMEngine("tiny-deepseek-v3", random_init=True)
    with pytest.raises(VLLMOptionsError, match="--tensor-parallel-size"):
        VLLMEngine("tiny-deepseek-v3", device_map="auto")
    with pytest.raises(VLLMOptionsError, match="pipeline parallelism"):
        VLLMEngine("tiny-deepseek-v3", llm_kwargs={"pipeline_parallel_size": 2}).route(["a"])


def test_engine_routes_the_hf_tokens_to_the_same_expert_sets(fake_vllm, hf_engine):
    engine = VLLMEngine("tiny-deepseek-v3", dtype="float32", tensor_parallel_size=1)
    assert not FakeLLM.instances, "vLLM must start on the first route, not at construction"
    batch = engine.route(TEXTS)
    reference = hf_engine.route(TEXTS)
    (llm,) = FakeLLM.instances
    assert llm.kwargs["enable_return_routed_experts"] is True
    assert llm.kwargs["enable_prefix_caching"] is True and llm.kwargs["tensor_parallel_size"] == 1
    np.testing.assert_array_equal(batch.token_ids, reference.token_ids)
    np.testing.assert_array_equal(batch.char_spans, reference.char_spans)
    assert batch.tokens == reference.tokens
    assert batch.weights is None and engine.returns_weights is False
    np.testing.assert_array_equal(batch.experts, np.sort(reference.experts, axis=-1))
    engine.route(TEXTS[:1])
    assert len(FakeLLM.instances) == 1, "one LLM per engine"
    engine.close()


def test_model_row_matches_the_hf_engine_without_loading_weights(fake_vllm, hf_engine):
    engine = VLLMEngine("tiny-deepseek-v3", dtype="float32")
    assert engine.device == "meta"
    row, reference = engine.model_row(), hf_engine.model_row()
    assert row.pop("engine") == "vllm" and reference.pop("engine") == "hf"
    assert row == reference


def test_build_with_the_vllm_engine_stores_id_sets_and_null_weights(fake_vllm, small_atlas, tmp_path):
    """Same corpus, same tokens, same expert sets as the hf build; weights null; order ascending."""
    from atlas_build.builder import BuildConfig, run_build

    out = tmp_path / "vllm-atlas"
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3",
            out=out,
            engine="vllm",
            slug="tiny-deepseek-v3",
            max_lemmas=Manifest.load(small_atlas).corpus_counts["options"]["max_lemmas"],
            texts_per_shard=64,
            progress=False,
            engine_kwargs={"tensor_parallel_size": 1},
        ),
        log=lambda *_: None,
    )

    def routing(root):
        manifest = Manifest.load(root)
        files = manifest.config_files("routing-tiny-deepseek-v3")
        tables = [pq.read_table(root / rel) for rel in files]
        models = pq.read_table(root / manifest.config_files("models")[0]).to_pylist()
        return tables, models[0]

    (vllm_tables, vllm_row), (hf_tables, hf_row) = routing(out), routing(small_atlas)
    assert vllm_row["engine"] == "vllm" and vllm_row["weights_dtype"] is None
    assert vllm_row["moe_layers"] == hf_row["moe_layers"]
    assert len(vllm_tables) == len(hf_tables)
    for got, want in zip(vllm_tables, hf_tables, strict=True):
        assert got.column("source_id").equals(want.column("source_id"))
        assert got.column("token_id").equals(want.column("token_id"))
        assert got.column("weights").null_count == got.num_rows
        experts = routing_array(got.column("experts"))
        np.testing.assert_array_equal(experts, np.sort(routing_array(want.column("experts")), axis=-1))


def test_engine_args_reach_vllm_and_the_build_record(fake_vllm, small_atlas, tmp_path):
    """`--engine-arg KEY=VALUE` becomes a vllm.LLM keyword (JSON values typed); the record says what ran."""
    import json

    from click.testing import CliRunner

    from atlas_build.cli import main

    out = tmp_path / "atlas"
    max_lemmas = Manifest.load(small_atlas).corpus_counts["options"]["max_lemmas"]
    args = ["build", "--model", "tiny-deepseek-v3", "--out", str(out), "--engine", "vllm", "--no-progress"]
    args += ["--max-lemmas", str(max_lemmas), "--engine-arg", "enforce_eager=false"]
    args += ["--engine-arg", "max_num_batched_tokens=4096", "--engine-arg", "kv_cache_dtype=auto"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    kwargs = FakeLLM.instances[-1].kwargs
    assert kwargs["enforce_eager"] is False and kwargs["max_num_batched_tokens"] == 4096
    assert kwargs["kv_cache_dtype"] == "auto"
    record = json.loads((out / "manifest.json").read_text())["builds"][-1]["engine"]["provenance"]
    assert record["cuda_graphs"] is True and record["max_num_batched_tokens"] == 4096
    assert record["engine_args"] == {
        "enforce_eager": False,
        "max_num_batched_tokens": 4096,
        "kv_cache_dtype": "auto",
    }
    assert {"torch", "transformers", "vllm", "flashinfer", "device_count", "cuda", "moe_backend"} <= set(
        record
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine-arg", "enforce_eager=true"], "it is an option of --engine vllm"),
        (["--engine", "vllm", "--engine-arg", "no-equals"], "is not KEY=VALUE"),
        (["--engine", "vllm", "--engine-arg", "a=1", "--engine-arg", "a=2"], "given twice"),
    ],
)
def test_bad_engine_args_are_refused_before_anything_is_written(tmp_path, args, message):
    from click.testing import CliRunner

    from atlas_build.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--model", "tiny-deepseek-v3", "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output and not out.exists(), result.output


def test_a_truncated_checkpoint_is_refused_before_vllm_starts(fake_vllm, tmp_path, tiny_checkpoint):
    ckpt = tmp_path / "truncated"
    ckpt.mkdir()
    for path in tiny_checkpoint.iterdir():
        if path.name != "model.safetensors":
            (ckpt / path.name).symlink_to(path)
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(AtlasError, match="model.safetensors is truncated or corrupt"):
        VLLMEngine(str(ckpt))
    assert not FakeLLM.instances or all(llm.kwargs["model"] != str(ckpt) for llm in FakeLLM.instances)
