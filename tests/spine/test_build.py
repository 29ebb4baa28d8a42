"""The spine: `atlas build` turns WordNet into a loadable atlas whose routing is what the model chose.

All routing here comes from tiny-deepseek-v3, a RANDOM-INIT model: these tests check plumbing and
faithfulness of the capture, not findings.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import FIXED_SCHEMAS, MODELS, routing_schema
from atlas_build.atlas.writer import sha256_file
from atlas_build.builder import BuildConfig, run_build

ROUTING = "routing-tiny-deepseek-v3"


def card_configs(root) -> list[str]:
    text = (root / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    return [c["config_name"] for c in meta["configs"]]


def read(root, config):
    return datasets.load_dataset(str(root), config, split="train")


def test_every_config_loads_with_load_dataset(small_atlas):
    manifest = Manifest.load(small_atlas)
    configs = card_configs(small_atlas)
    assert set(configs) == {"senses", "sense-pairs", "substitutions", "models", ROUTING}
    for config in configs:
        ds = read(small_atlas, config)
        assert len(ds) == manifest.configs()[config]["rows"] > 0
        streamed = next(iter(datasets.load_dataset(str(small_atlas), config, split="train", streaming=True)))
        assert streamed == ds[0]


def test_files_have_the_declared_schema_and_manifest_hashes(small_atlas):
    manifest = Manifest.load(small_atlas)
    model = pq.read_table(small_atlas / manifest.config_files(MODELS)[0]).to_pylist()[0]
    for rel, entry in manifest.files.items():
        path = small_atlas / rel
        assert sha256_file(path) == entry["sha256"]
        assert pq.ParquetFile(path).metadata.num_rows == entry["rows"]
        declared = FIXED_SCHEMAS.get(entry["config"]) or routing_schema(
            model["n_routed_experts"], len(model["moe_layers"]), model["top_k"], model["weights_dtype"]
        )
        assert pq.read_schema(path).equals(declared, check_metadata=False), rel
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_models_row_describes_the_tiny_model(small_atlas):
    (row,) = read(small_atlas, "models").to_list()
    assert row["model_slug"] == "tiny-deepseek-v3"
    assert row["random_init"] is True
    assert row["moe_layers"] == [1, 2, 3, 4, 5]
    assert (row["n_routed_experts"], row["top_k"], row["n_group"], row["topk_group"]) == (32, 8, 8, 4)
    assert row["scoring_func"] == "sigmoid" and row["topk_method"] == "noaux_tc"
    assert row["norm_topk_prob"] is True and row["routed_scaling_factor"] == 2.5
    assert 0 < row["active_params"] < row["total_params"]
    assert row["weights_dtype"] == "float16" and row["engine"] == "hf" and row["add_bos_token"] is True


def test_builtin_build_uses_exactly_the_materialized_checkpoint(small_atlas, tiny_checkpoint):
    from atlas_build.engines.hf import checkpoint_sha256

    (row,) = read(small_atlas, "models").to_list()
    assert row["checkpoint_sha256"] == checkpoint_sha256(tiny_checkpoint)


def test_tokens_offsets_and_targets(small_atlas, tiny_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    senses = read(small_atlas, "senses").to_pandas().set_index("example_id")
    routing = read(small_atlas, ROUTING).to_pandas()
    sense_rows = routing[routing.corpus == "senses"]
    for source_id, tokens in sense_rows.groupby("source_id", sort=False):
        example = senses.loc[source_id]
        ids = tokenizer(example.text)["input_ids"]
        assert tokens.token_id.tolist() == ids
        assert tokens.token_index.tolist() == list(range(len(ids)))
        assert tokens.token.tolist() == tokenizer.convert_ids_to_tokens(ids)
        assert tokens.token_id.iloc[0] == tokenizer.bos_token_id and tokens.char_start.iloc[0] == -1
        body = tokens.iloc[1:]
        assert (body.char_start >= 0).all() and (body.char_end <= len(example.text)).all()
        assert np.all(np.diff(body.char_start.to_numpy()) >= 0)
        target = body[body.is_target]
        assert len(target) >= 1
        covered = example.text[target.char_start.min() : target.char_end.max()]
        assert example.target_form in covered


def recompute_deepseek_v3_gate(hidden: torch.Tensor, gate) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's noaux_tc routing, written out from the paper/config, not by calling the router."""
    weight, bias = gate.weight.float(), gate.e_score_correction_bias.float()
    n_experts, n_group, topk_group, k = weight.shape[0], gate.num_group, gate.topk_group, gate.top_k
    scores = torch.sigmoid(hidden.float() @ weight.T)
    choice = scores + bias
    per_group = choice.view(-1, n_group, n_experts // n_group)
    group_score = per_group.topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(group_score, dtype=torch.bool)
    keep.scatter_(1, group_score.topk(topk_group, dim=-1).indices, True)
    masked = choice.masked_fill(~keep.repeat_interleave(n_experts // n_group, dim=1), float("-inf"))
    experts = masked.topk(k, dim=-1).indices
    weights = scores.gather(1, experts)
    weights = weights / weights.sum(-1, keepdim=True) * 2.5
    order = weights.argsort(dim=-1, descending=True, stable=True)
    return experts.gather(1, order), weights.gather(1, order)


def test_routing_equals_an_independent_recomputation(small_atlas, tiny_checkpoint):
    """Every token and MoE layer of the atlas: same expert list (in order) as recomputed from the checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    moe_layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        model.model.layers[i].mlp.gate.register_forward_pre_hook(
            lambda module, args, i=i: captured.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]))
        )
        for i in moe_layers
    ]
    texts = {}
    for config, key in (("senses", "example_id"), ("substitutions", "substitution_id")):
        for row in read(small_atlas, config).select_columns([key, "text"]).to_list():
            texts[row[key]] = row["text"]
    routing = read(small_atlas, ROUTING).with_format("arrow")[:]
    experts = routing_array(routing.column("experts"))
    weights = routing_array(routing.column("weights")).astype(np.float32)
    source_ids = routing.column("source_id").to_pylist()
    starts = (
        [0] + [i for i in range(1, len(source_ids)) if source_ids[i] != source_ids[i - 1]] + [len(source_ids)]
    )
    mismatched_sets = 0
    max_weight_error = 0.0
    with torch.inference_mode():
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            ids = tokenizer(texts[source_ids[a]], return_tensors="pt")["input_ids"]
            assert ids.shape[1] == b - a
            model.model(input_ids=ids)
            for slot, layer in enumerate(moe_layers):
                ref_experts, ref_weights = recompute_deepseek_v3_gate(
                    captured[layer], model.model.layers[layer].mlp.gate
                )
                got = experts[a:b, slot]
                mismatched_sets += int(
                    sum(set(x) != set(y) for x, y in zip(got.tolist(), ref_experts.tolist(), strict=True))
                )
                max_weight_error = max(
                    max_weight_error, float(np.abs(weights[a:b, slot] - ref_weights.numpy()).max())
                )
    for hook in hooks:
        hook.remove()
    assert len(starts) - 1 == len(texts)
    assert mismatched_sets == 0
    # Stored as float16: half an ulp at 0.3 is ~1.2e-4.
    assert max_weight_error < 5e-4
    sums = weights.sum(-1)
    assert np.allclose(sums, 2.5, atol=5e-3)
    assert np.all(np.diff(weights, axis=-1) <= 0)


def test_build_is_deterministic_and_resumes(tmp_path, requires_wordnet):
    def build(out):
        return run_build(
            BuildConfig(model="tiny-deepseek-v3", out=out, max_lemmas=4, progress=False, texts_per_shard=16),
            log=lambda *_: None,
        )

    build(tmp_path / "a")
    build(tmp_path / "b")
    a, b = Manifest.load(tmp_path / "a"), Manifest.load(tmp_path / "b")
    assert a.data_hashes() == b.data_hashes()
    stats = build(tmp_path / "a")
    assert stats.shards_written == 0 and stats.shards_skipped > 1
    assert Manifest.load(tmp_path / "a").data_hashes() == a.data_hashes()


def test_a_second_model_adds_its_config_and_touches_nothing_else(atlas_copy):
    before = Manifest.load(atlas_copy).data_hashes()
    run_build(
        BuildConfig(model="tiny-deepseek-v3", out=atlas_copy, random_init=True, seed=7, progress=False),
        log=lambda *_: None,
    )
    after = Manifest.load(atlas_copy).data_hashes()
    changed = {path for path in before if before[path] != after.get(path)}
    assert changed == {"models/models-00000.parquet"}
    assert set(card_configs(atlas_copy)) >= {ROUTING, "routing-tiny-deepseek-v3-random-init"}
    models = {row["model_slug"]: row for row in read(atlas_copy, "models").to_list()}
    twin_row = models["tiny-deepseek-v3-random-init"]
    assert twin_row["random_init"] is True and twin_row["seed"] == 7
    assert twin_row["checkpoint_sha256"] is None
    twin = read(atlas_copy, "routing-tiny-deepseek-v3-random-init")
    assert len(twin) == len(read(atlas_copy, ROUTING))
    # The twin's --seed 7 is its weights'; its build record names the corpus it routed (made with seed 0).
    manifest = Manifest.load(atlas_copy)
    assert manifest.builds[-1]["corpus"]["seed"] == manifest.corpus_counts["options"]["seed"] == 0
    assert "--seed 7" in manifest.builds[-1]["summary"]


def test_changing_corpus_options_in_an_existing_atlas_is_refused(atlas_copy):
    from atlas_build.errors import BuildOptionsError

    before = Manifest.load(atlas_copy).data_hashes()
    with pytest.raises(BuildOptionsError, match="new.*directory"):
        run_build(
            BuildConfig(model="tiny-deepseek-v3", out=atlas_copy, max_lemmas=3, progress=False),
            log=lambda *_: None,
        )
    assert Manifest.load(atlas_copy).data_hashes() == before


def test_manifest_records_the_build(small_atlas):
    data = json.loads((small_atlas / "manifest.json").read_text())
    (build,) = [b for b in data["builds"] if b["kind"] == "routing"]
    assert build["engine"]["dtype"] == "float32" and build["corpus"]["max_lemmas"] == 12
    assert data["corpus_counts"]["examples"] == data["configs"]["senses"]["rows"]
    assert data["code_version"].startswith("0.")


def test_traces_and_wordnet_share_one_routing_config(atlas_copy):
    """A traces build for a model that already has WordNet routing adds shards beside it, losing nothing."""
    from pathlib import Path

    before = Manifest.load(atlas_copy)
    wordnet_rows = before.configs()[ROUTING]["rows"]
    traces = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "sample.jsonl"
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3", out=atlas_copy, corpus="traces", traces=str(traces), progress=False
        ),
        log=lambda *_: None,
    )
    after = Manifest.load(atlas_copy)
    assert {p: h for p, h in after.data_hashes().items() if p in before.data_hashes()} == {
        p: h for p, h in before.data_hashes().items() if not p.startswith("models/")
    } | {"models/models-00000.parquet": after.data_hashes()["models/models-00000.parquet"]}
    routing = read(atlas_copy, ROUTING)
    corpora = routing.unique("corpus")
    assert set(corpora) == {"senses", "substitutions", "traces"}
    assert len(routing) > wordnet_rows
    assert "traces" in after.corpus_counts and "options" in after.corpus_counts
    # Rebuilding WordNet routing (a resume, same sharding as the fixture) keeps the traces shards.
    run_build(
        BuildConfig(model="tiny-deepseek-v3", out=atlas_copy, progress=False, texts_per_shard=64),
        log=lambda *_: None,
    )
    assert Manifest.load(atlas_copy).data_hashes() == after.data_hashes()


def test_a_random_init_twin_cannot_be_spread_with_a_device_map(tmp_path):
    from atlas_build.errors import BuildOptionsError

    with pytest.raises(BuildOptionsError, match="cannot be spread with --device-map"):
        BuildConfig(model="tiny-deepseek-v3", out=tmp_path / "a", random_init=True, device_map="auto")
    assert not (tmp_path / "a").exists()
