"""`--scores M`: the router's selection scores beyond the top-k.

The captured top-M scores of every architecture are compared with an independent float64 recomputation
of its selection score from the router's *input* (a separately loaded model, pre-hooks, plain torch;
neither the router module nor the adapter is called), and end to end on the built-in tiny-deepseek-v3
(RANDOM-INIT: plumbing, not findings) with `atlas build --scores 16`, `atlas validate` and `atlas metrics`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from atlas_build.engines.hf import HFEngine, ModelLoadError
from atlas_build.routers import RouterAdapter, RoutingSpec, UnsupportedModelError, adapter_for
from tests.routers.conftest import CASES, TEXTS, build_model, make_config, write_tokenizer
from tests.routers.test_gate_recompute import BUILTIN, MOE_BLOCKS, Reference
from validation.scores import DECIDED, reproduce_selection

TOLERANCE = 1e-5
# Every architecture's adapter gives selection scores (the built-in too).
SCORED = [name for name, case in CASES.items() if adapter_for(make_config(case)).gives_selection_scores]
ALL = [*SCORED, BUILTIN]


def selection_scores_64(x: torch.Tensor, router: dict, model_type: str) -> torch.Tensor:
    """The score each architecture selects on, float64, from the router input `x` `[T, hidden]`, written
    from each family's published routing rule (`model_type` of the loaded model: a wrapper loads as its
    text decoder)."""
    logits = x @ router["weight"].T
    if model_type in ("deepseek_v3", "glm4_moe"):
        # noaux_tc: the group-limited top-k is taken on the bias-corrected sigmoid.
        return torch.sigmoid(logits) + router["e_score_correction_bias"]
    if model_type == "gpt_oss":
        # OpenAI's rule: top-k of the logits with the router bias; the softmax comes after, over the k.
        return logits + router["bias"]
    if model_type == "llama4_text":
        # Meta's rule: top-k of the raw logits; the sigmoid comes after, per chosen expert.
        return logits
    # deepseek_v2, mixtral, olmoe, qwen2_moe, qwen3_moe, qwen3_5_moe_text: top-k of the softmax probability.
    return torch.softmax(logits, dim=-1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    built: dict[str, object] = {}

    def get(name: str):
        if name == BUILTIN:
            from atlas_build.models import builtin_checkpoint

            return builtin_checkpoint(BUILTIN)
        if name not in built:
            path = tmp_path_factory.mktemp(name)
            build_model(CASES[name]).save_pretrained(path)
            write_tokenizer(path, CASES[name].tokenizer)
            built[name] = path
        return built[name]

    return get


def split(batch, field):
    return np.split(getattr(batch, field), np.cumsum(batch.token_counts)[:-1])


@pytest.mark.parametrize("name", ALL)
def test_captured_scores_equal_a_float64_recomputation(name, checkpoint):
    path = checkpoint(name)
    ref = Reference(path, *MOE_BLOCKS[name])
    model_type = ref.config.model_type
    probe = HFEngine(BUILTIN if name == BUILTIN else str(path), batch_size=2)
    k, n = probe.spec.top_k, probe.spec.n_routed_experts
    probe.close()
    for m in sorted({n, min(n, k + 2)}):
        hf = HFEngine(BUILTIN if name == BUILTIN else str(path), batch_size=2, scores_top_m=m)
        batch = hf.route(TEXTS)
        row = hf.model_row()
        hf.close()
        assert row["scores_top_m"] == m
        assert batch.scores.shape == batch.score_experts.shape == (batch.n_tokens, len(ref.moe_layers), m)
        assert batch.scores.dtype == np.float32 and (np.diff(batch.scores, axis=-1) <= 0).all()
        for text, ids, scores, experts in zip(
            TEXTS, split(batch, "score_experts"), split(batch, "scores"), split(batch, "experts"), strict=True
        ):
            _, inputs = ref.router_inputs(text)
            full = torch.stack(
                [
                    selection_scores_64(x, t, model_type)
                    for x, t in zip(inputs, ref.router_tensors, strict=True)
                ],
                dim=1,
            ).numpy()  # [T, L, N]
            # The stored scores are the recomputed scores of the stored experts...
            at_ids = np.take_along_axis(full, ids.astype(np.int64), axis=-1)
            assert np.abs(at_ids - scores).max() <= TOLERANCE, f"{name} M={m}: scores differ"
            # ... and no expert left out scores above the lowest stored one.
            left_out = np.ones(full.shape, dtype=bool)
            np.put_along_axis(left_out, ids.astype(np.int64), False, axis=-1)
            best_left = np.where(left_out, full, -np.inf).max(axis=-1)
            assert (best_left <= scores[..., -1] + TOLERANCE).all(), f"{name} M={m}: a higher score left out"
            # The model's own selection rule on the stored scores gives back the stored experts.
            chosen, status = reproduce_selection(
                ids.reshape(-1, m),
                scores.reshape(-1, m),
                k,
                n,
                row["topk_method"],
                row["n_group"],
                row["topk_group"],
            )
            decided = status == DECIDED
            if m == n:
                assert decided.all()
            stored = np.sort(experts.reshape(-1, k).astype(np.int64), axis=1)
            np.testing.assert_array_equal(chosen[decided], stored[decided])


def test_every_adapter_gives_scores():
    assert {CASES[name].model_type for name in SCORED} == {
        "deepseek_v2",
        "deepseek_v3",
        "glm4_moe",
        "gpt_oss",
        "llama4",
        "llama4_text",
        "mixtral",
        "olmoe",
        "qwen2_moe",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen3_moe",
    }
    assert set(SCORED) == set(CASES)


def test_scores_are_refused_where_they_cannot_be_given():
    class NoScores(RouterAdapter):
        name = "no-scores"
        model_types = ("none",)
        router_class_names = ("None",)

        def routing_spec(self, config) -> RoutingSpec:
            return RoutingSpec.softmax_greedy(4, 2, True, range(2))

    with pytest.raises(UnsupportedModelError, match="gives no selection scores"):
        NoScores().require_selection_scores()
    with pytest.raises(ModelLoadError, match="between top_k = 8"):
        HFEngine(BUILTIN, scores_top_m=4, load_weights=False)
    from atlas_build.builder import BuildConfig
    from atlas_build.errors import BuildOptionsError

    with pytest.raises(BuildOptionsError, match="--engine hf"):
        BuildConfig(model=BUILTIN, out="unused", engine="vllm", scores=16)


def test_a_bad_scores_option_is_one_line_without_traceback(tmp_path):
    from click.testing import CliRunner

    from atlas_build.cli import main

    out = tmp_path / "atlas"
    result = CliRunner().invoke(main, ["build", "--model", BUILTIN, "--out", str(out), "--scores", "40"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--scores 40" in result.output and "32 routed experts" in result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def scored_atlas(tmp_path_factory):
    from atlas_build.builder import BuildConfig, run_build

    root = tmp_path_factory.mktemp("scores") / "atlas"
    run_build(
        BuildConfig(model=BUILTIN, out=root, max_lemmas=4, scores=16, progress=False), log=lambda _: None
    )
    return root


def _routing_file(root):
    return next((root / "routing-tiny-deepseek-v3").glob("*.parquet"))


def test_built_atlas_stores_scores_that_validate(scored_atlas):
    from validation.runner import run_validation

    model = pq.read_table(next((scored_atlas / "models").glob("*.parquet"))).to_pylist()[0]
    assert model["scores_top_m"] == 16
    table = pq.read_table(_routing_file(scored_atlas))
    assert table.schema.field("scores").type.equals(pa.list_(pa.list_(pa.float32(), 16), 5))
    report = run_validation(scored_atlas)
    result = next(r for r in report.results if r.check == "scores-reproduce-experts")
    assert result.status == "passed" and result.details["decided"] > 0
    card = (scored_atlas / "README.md").read_text(encoding="utf-8")
    assert "e_score_correction_bias" in card and "score_experts" in card


def test_validation_fails_an_atlas_whose_experts_disagree_with_its_scores(scored_atlas, tmp_path):
    import shutil

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import nested_fixed_list, routing_array
    from atlas_build.atlas.writer import sha256_file
    from validation.runner import run_validation

    copy = tmp_path / "atlas"
    shutil.copytree(scored_atlas, copy)
    path = _routing_file(copy)
    table = pq.read_table(path)
    experts = routing_array(table.column("experts")).copy()
    ids = routing_array(table.column("score_experts"))
    # Token 3, first MoE layer: replace a chosen expert with the best stored expert that was not chosen.
    rejected = [e for e in ids[3, 0] if e not in experts[3, 0]][0]
    experts[3, 0, -1] = rejected
    column = nested_fixed_list(experts, table.schema.field("experts").type.value_type.value_type)
    table = table.set_column(table.schema.get_field_index("experts"), table.schema.field("experts"), column)
    pq.write_table(table, path, compression="zstd")
    manifest = Manifest.load(copy)
    rel = str(path.relative_to(copy))
    manifest.files[rel]["sha256"] = sha256_file(path)
    manifest.files[rel]["bytes"] = path.stat().st_size
    manifest.save(copy)
    report = run_validation(copy)
    result = next(r for r in report.results if r.check == "scores-reproduce-experts")
    assert result.status == "failed"


def test_metrics_margins_match_the_stored_scores(scored_atlas, tmp_path):
    from atlas_build.metrics import MetricsOptions, compute_metrics
    from atlas_build.metrics.report.markdown import to_json

    metrics = to_json(
        compute_metrics(
            scored_atlas,
            options=MetricsOptions(n_bootstrap=200, n_permutations=99),
            cache_dir=tmp_path / "cache",
        ).metrics
    )
    sc = metrics["models"]["tiny-deepseek-v3"]["scores"]
    assert sc["scores_top_m"] == 16
    rows = (
        pq.read_table(_routing_file(scored_atlas)).select(["experts", "score_experts", "scores"]).to_pylist()
    )
    # Independent: per token and layer, last chosen minus the best rejected expert of a chosen expert's group.
    size = 32 // 8
    per_layer: list[list[float]] = [[] for _ in range(5)]
    for r in rows:
        for layer, (chosen, ids, values) in enumerate(
            zip(r["experts"], r["score_experts"], r["scores"], strict=True)
        ):
            if not set(chosen) <= set(ids):
                continue
            groups = {e // size for e in chosen}
            rejected = [
                v for e, v in zip(ids, values, strict=True) if e not in chosen and e // size in groups
            ]
            if rejected:
                last = min(v for e, v in zip(ids, values, strict=True) if e in chosen)
                per_layer[layer].append(last - max(rejected))
    medians = [float(np.median(v)) for v in per_layer]
    np.testing.assert_allclose(sc["margin_quantiles"]["q50"], medians, rtol=1e-5)
    near = [float(np.mean(np.abs(v) < 1e-3)) for v in per_layer]
    np.testing.assert_allclose(sc["near_tie_share"], near, rtol=1e-5, atol=1e-9)
    assert all(v >= 0 for layer in per_layer for v in layer)
    assert sc["confident_sense"] is not None


def test_generation_captures_scores_for_every_token():
    hf = HFEngine(BUILTIN, scores_top_m=32)
    try:
        _, routing = hf.generate("the bank of the river", 4)
        row = hf.model_row()
    finally:
        hf.close()
    assert routing.scores.shape == routing.score_experts.shape == (routing.n_tokens, 5, 32)
    chosen, status = reproduce_selection(
        routing.score_experts.reshape(-1, 32),
        routing.scores.reshape(-1, 32),
        8,
        32,
        row["topk_method"],
        row["n_group"],
        row["topk_group"],
    )
    assert (status == DECIDED).all()
    np.testing.assert_array_equal(chosen, np.sort(routing.experts.reshape(-1, 8).astype(np.int64), axis=1))
