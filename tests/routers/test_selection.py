"""Ablation by each family's own rule (`routers.selection`, as `atlas intervene` runs it) against an independent
float64 recomputation of the gate with the removed experts deleted from the router, for every family.

The recomputation reads the router's input (captured on a separately loaded clean copy: the intervened layer's
input does not depend on the intervention) and the router's weights, deletes the removed experts' rows, applies
the architecture's published rule to what is left, and maps the choice back to expert ids. Neither the router
module, the adapter nor `routers.selection` is called in it.

The families read through the router contract (tests/routers/family_cases.py, 30+ of them) are checked the
same way against family_cases' float64 recomputation written from each modeling code, with the removed
experts' logits and selection scores at -inf before the group limit and the top-k (`removed=`); a wrong
choice rule, put in place of the family's, must be caught. DeepSeek-V4's hash layers are refused (no score
to choose among the rest), and LongCat-Flash's zero-computation (identity) experts are removed like any
other expert: the router then picks computing experts (or other zero experts) in their place.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_build.engines.hf import HFEngine
from atlas_build.intervene.run import REROUTE, ZERO_WEIGHT, Condition, Encoded, Intervener
from atlas_build.routers import ADAPTERS, UnsupportedModelError, selection
from atlas_build.routers.contract import TableAdapter

from .conftest import TEXTS, write_tokenizer
from .family_cases import FAMILY_CASES
from .test_families import Reference as FamilyReference
from .test_families import build_family_model
from .test_gate_recompute import ALL, MOE_BLOCKS, TOLERANCE, Reference, by_expert, checkpoint_path

REMOVED = 2  # experts removed: the two chosen most often on TEXTS at the first MoE layer


def _topk(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.topk(k, dim=-1).indices


def recompute(model_type: str, x: torch.Tensor, router: dict, config, removed: list[int]):
    """`(index [T, k], weights [T, k])` of the published rule with `removed` deleted, float64."""
    k = config.num_experts_per_tok
    weight = router["weight"]
    n = weight.shape[0]
    keep = [e for e in range(n) if e not in removed]
    ids = torch.tensor(keep)
    logits = x @ weight[keep].T
    if model_type in ("deepseek_v3", "glm4_moe"):
        scores = torch.sigmoid(logits)
        choice = scores + router["e_score_correction_bias"][keep]
        per_group = n // config.n_group
        groups = torch.stack(
            [
                torch.stack(
                    [
                        (
                            lambda v: (
                                v.topk(2).values.sum()
                                if len(v) >= 2
                                else torch.tensor(-np.inf, dtype=v.dtype)
                            )
                        )(choice[t][(ids // per_group) == g])
                        for g in range(config.n_group)
                    ]
                )
                for t in range(len(x))
            ]
        )
        best = _topk(groups, config.topk_group)
        allowed = ((ids // per_group)[None, :, None] == best[:, None, :]).any(-1)
        index = _topk(choice.where(allowed, -np.inf), k)
        weights = scores.gather(1, index)
        if config.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return ids[index], weights * config.routed_scaling_factor
    if model_type == "deepseek_v2":
        probs = torch.softmax(logits, dim=-1)
        choice = probs
        if config.topk_method == "group_limited_greedy":
            per_group = n // config.n_group
            group_of = ids // per_group
            groups = torch.full((len(x), config.n_group), -np.inf, dtype=probs.dtype)
            for g in range(config.n_group):
                if (group_of == g).any():
                    groups[:, g] = probs[:, group_of == g].amax(-1)
            best = _topk(groups, config.topk_group)
            allowed = (group_of[None, :, None] == best[:, None, :]).any(-1)
            choice = probs.where(allowed, -1.0)
        index = _topk(choice, k)
        return ids[index], probs.gather(1, index) * config.routed_scaling_factor
    if model_type == "gpt_oss":
        logits = logits + router["bias"][keep]
        top, index = logits.topk(k, dim=-1)
        return ids[index], torch.softmax(top, dim=-1)
    if model_type == "llama4_text":
        top, index = logits.topk(k, dim=-1)
        return ids[index], torch.sigmoid(top)
    probs = torch.softmax(logits, dim=-1)
    top, index = probs.topk(k, dim=-1)
    renormalise = model_type in ("mixtral", "qwen3_5_moe_text") or bool(
        getattr(config, "norm_topk_prob", False)
    )
    if renormalise:
        top = top / top.sum(-1, keepdim=True)
    return ids[index], top


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    cache = {}

    def get(name):
        if name not in cache:
            path = checkpoint_path(name, tiny_checkpoint)
            engine = HFEngine(str(path))
            tokenizer = engine.tokenizer
            intervener = Intervener(
                engine.detach_model(),
                engine.adapter,
                engine.spec,
                engine.encode,
                engine.device,
                tokenizer.pad_token_id or 0,
                batch_size=4,
            )
            cache[name] = (intervener, Reference(path, *MOE_BLOCKS[name]))
        return cache[name]

    yield get
    for intervener, _ in cache.values():
        intervener.close()


def _routing_after(intervener, slot: int, text: str, condition: Condition):
    """The intervened router's output at `slot`, read by the adapter from a hook after the intervention's."""
    seen = []
    router = intervener.routers[slot][1]
    hook = router.register_forward_hook(
        lambda module, args, output: seen.append(
            tuple(t.detach().double() for t in intervener.adapter.read_router_output(output, module))
        )
    )
    try:
        encoded = intervener.encode([text])[0]
        intervener.run([(Encoded(np.asarray(encoded["ids"]), np.array([0])), condition)])
    finally:
        hook.remove()
    index, weights = seen[0]
    return index.long().numpy(), weights.numpy()


def _most_chosen(reference: Reference, slot: int) -> list[int]:
    counts = np.zeros(reference.router_tensors[slot]["weight"].shape[0], int)
    for text in TEXTS:
        _, experts, _ = reference.gate(text)
        np.add.at(counts, experts[:, slot].reshape(-1), 1)
    return [int(e) for e in np.argsort(-counts, kind="stable")[:REMOVED]]


@pytest.mark.parametrize("name", ALL)
def test_ablation_equals_recomputation_with_experts_removed(name, loaded):
    intervener, reference = loaded(name)
    slot = 0
    removed = _most_chosen(reference, slot)
    changed = 0
    for text in TEXTS:
        _, inputs = reference.router_inputs(text)
        expect_index, expect_weights = recompute(
            reference.config.model_type,
            inputs[slot],
            reference.router_tensors[slot],
            reference.config,
            removed,
        )
        index, weights = _routing_after(
            intervener, slot, text, Condition(excluded={slot: tuple(removed)}, mode=REROUTE)
        )
        got_e, got_w = by_expert(index, weights)
        want_e, want_w = by_expert(expect_index.numpy(), expect_weights.numpy())
        assert not np.isin(index, removed).any(), f"{name}: a removed expert was chosen"
        mismatched = int((got_e != want_e).any(-1).sum())
        assert mismatched == 0, (
            f"{name}: {mismatched} of {len(got_e)} expert sets differ from the recomputation"
        )
        assert float(np.abs(got_w - want_w).max()) <= TOLERANCE, f"{name}: weights differ"
        _, clean, _ = reference.gate(text)
        changed += int(np.isin(clean[:, slot], removed).any(-1).sum())
    assert changed > 0, f"{name}: the removed experts were never chosen: the test would prove nothing"


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3", "llama4_text"])
def test_zero_weight_keeps_the_choice_and_zeroes_the_removed(name, loaded):
    intervener, reference = loaded(name)
    removed = _most_chosen(reference, 0)
    text = TEXTS[3]
    _, clean, clean_weights = reference.gate(text)
    index, weights = _routing_after(
        intervener, 0, text, Condition(excluded={0: tuple(removed)}, mode=ZERO_WEIGHT)
    )
    got_e, got_w = by_expert(index, weights)
    want_e, want_w = by_expert(clean[:, 0], clean_weights[:, 0])
    assert (got_e == want_e).all()
    want_w = np.where(np.isin(want_e, removed), 0.0, want_w)
    assert np.isin(want_e, removed).any() and float(np.abs(got_w - want_w).max()) <= TOLERANCE


# ---- every family of the router contract --------------------------------------------------------------
FAMILY_NAMES = sorted(FAMILY_CASES)
# A rule put in place of the family's own (the negative control): other gate weights, the same choice.
WRONG_RULE = {
    selection.SOFTMAX: selection.SelectionRule(selection.SIGMOID_BIAS, values=selection.SIGMOID_OF_LOGITS),
    selection.SIGMOID_BIAS: selection.SelectionRule(selection.SOFTMAX, values=selection.SOFTMAX_OF_LOGITS),
    selection.SCORE_FN_BIAS: selection.SelectionRule(
        selection.SIGMOID_BIAS, values=selection.SIGMOID_OF_LOGITS
    ),
    selection.LOGITS_SOFTMAX: selection.SelectionRule(selection.LOGITS_SIGMOID),
}


@pytest.fixture(scope="module")
def family_loaded(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp(f"select-{name}")
            build_family_model(name).save_pretrained(path)
            write_tokenizer(path)
            engine = HFEngine(str(path))
            pad = engine.tokenizer.pad_token_id
            intervener = Intervener(
                engine.detach_model(), engine.adapter, engine.spec, engine.encode, engine.device, pad or 0
            )
            cache[name] = (intervener, FamilyReference(path, name))
        return cache[name]

    yield get
    for intervener, _ in cache.values():
        intervener.close()


def _learned_slot(name: str) -> int:
    """The first MoE slot routed by a learned score (DeepSeek-V4's first MoE layer is a hash layer)."""
    kinds = [kind for kind in FAMILY_CASES[name].routing_kind if kind != "dense"]
    return kinds.index("learned")


def _family_removed(reference, slot: int) -> list[int]:
    """The two experts chosen most often at `slot` on TEXTS (by the recomputation), plus the most chosen
    zero-computation expert where the family has them."""
    case = reference.case
    counts = None
    for text in TEXTS:
        _, layers = reference.gate(text)
        index = layers[slot][0].numpy()
        counts = np.bincount(index.reshape(-1), minlength=layers[slot][2].shape[-1]) + (
            0 if counts is None else counts
        )
    order = [int(e) for e in np.argsort(-counts, kind="stable")]
    removed = order[:REMOVED]
    if case.zero_experts:
        first_zero = len(counts) - case.zero_experts
        zero = next(e for e in order if e >= first_zero)
        if zero not in removed:
            removed.append(zero)
    return removed


def _family_ablation_disagreement(name, intervener, reference, slot, removed):
    """(mismatched expert sets, worst weight difference, tokens whose clean choice had a removed expert)."""
    mismatched, worst, changed = 0, 0.0, 0
    for text in TEXTS:
        _, clean = reference.gate(text)
        _, ablated = reference.gate(text, removed=removed)
        want_index, want_weights, _ = ablated[slot]
        index, weights = _routing_after(
            intervener, slot, text, Condition(excluded={slot: tuple(removed)}, mode=REROUTE)
        )
        assert not np.isin(index, removed).any(), f"{name}: a removed expert was chosen"
        assert not np.isin(want_index.numpy(), removed).any()
        got_e, got_w = by_expert(index, weights)
        want_e, want_w = by_expert(want_index.numpy(), want_weights.numpy())
        mismatched += int((got_e != want_e).any(-1).sum())
        same = (got_e == want_e).all(-1)
        if same.any():
            worst = max(worst, float(np.abs(got_w - want_w)[same].max()))
        changed += int(np.isin(clean[slot][0].numpy(), removed).any(-1).sum())
    return mismatched, worst, changed


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_ablation_equals_the_recomputation_with_experts_removed(name, family_loaded):
    intervener, reference = family_loaded(name)
    slot = _learned_slot(name)
    removed = _family_removed(reference, slot)
    mismatched, worst, changed = _family_ablation_disagreement(name, intervener, reference, slot, removed)
    assert changed > 0, f"{name}: the removed experts were never chosen: the test would prove nothing"
    assert mismatched == 0, f"{name}: {mismatched} expert sets differ from the recomputation"
    assert worst <= TOLERANCE, f"{name}: weights differ by up to {worst:.3g}"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_wrong_choice_rule_is_caught(name, family_loaded, monkeypatch):
    intervener, reference = family_loaded(name)
    own = selection.rule_for(intervener.adapter)
    wrong = WRONG_RULE[own.name]
    monkeypatch.setattr(type(intervener.adapter), "selection_rule", wrong)
    assert selection.rule_for(intervener.adapter) is wrong
    slot = _learned_slot(name)
    removed = _family_removed(reference, slot)
    mismatched, worst, _ = _family_ablation_disagreement(name, intervener, reference, slot, removed)
    assert mismatched > 0 or worst > TOLERANCE, (
        f"{name}: rule {wrong.name} agrees with {own.name}: blind test"
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_transplanting_the_routers_own_set_gives_back_its_own_weights(name, family_loaded):
    """A forced set's weights are the family's weight rule (`weights_for`): forcing the set the router chose
    for the first token gives back the weights the float64 recomputation gives it."""
    intervener, reference = family_loaded(name)
    slot = _learned_slot(name)
    worst = 0.0
    for text in TEXTS:
        _, clean = reference.gate(text)
        index, weights, _ = clean[slot]
        own = tuple(int(e) for e in index[0])
        got_index, got_weights = _routing_after(intervener, slot, text, Condition(forced={slot: own}))
        got_e, got_w = by_expert(got_index[:1], got_weights[:1])
        want_e, want_w = by_expert(index[:1].numpy(), weights[:1].numpy())
        assert (got_e == want_e).all(), f"{name}: the forced set was not run"
        worst = max(worst, float(np.abs(got_w - want_w).max()))
    assert worst <= TOLERANCE, f"{name}: forced weights differ by up to {worst:.3g}"


def test_every_adapter_has_a_choice_rule_and_contract_rules_come_from_the_row():
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)()
        rule = selection.rule_for(adapter)
        if isinstance(adapter, TableAdapter):
            assert name not in selection.RULES, f"{name}: a contract family's rule is derived, not listed"
            assert rule == selection.family_rule(adapter.row)
            assert rule.outputs == adapter.row.outputs


def test_removing_a_group_down_below_top_k_is_refused(family_loaded):
    """dots1: 16 experts in 4 groups of 4, the best 2 groups kept, k = 3 (noaux_tc: a group needs 2 left)."""
    intervener, _ = family_loaded("dots1")
    adapter, spec = intervener.adapter, intervener.spec
    layer = spec.moe_layers[0]
    selection.refuse_reroute(adapter, spec, layer, (0, 1, 4, 5))  # every group keeps >= 2: at least 4 left
    with pytest.raises(UnsupportedModelError, match="fewer than top-k") as error:
        # Groups 0-2 keep one expert each (no finite group score): one eligible group where 2 are kept.
        selection.refuse_reroute(adapter, spec, layer, (0, 1, 2, 4, 5, 6, 8, 9, 10))
    assert "\n" not in str(error.value)


def test_rerouting_at_a_hash_layer_is_refused(family_loaded):
    intervener, _ = family_loaded("deepseek_v4")
    spec, adapter = intervener.spec, intervener.adapter
    (hash_layer,) = spec.hash_layers
    with pytest.raises(UnsupportedModelError, match="token-id hash table") as error:
        selection.refuse_reroute(adapter, spec, hash_layer)
    assert "\n" not in str(error.value) and "zero_weight" in str(error.value)
    selection.refuse_reroute(adapter, spec, spec.moe_layers[1])  # a learned layer: allowed
    ids = np.asarray(intervener.encode([TEXTS[0]])[0]["ids"])
    slot = intervener.slot_of[hash_layer]
    with pytest.raises(UnsupportedModelError, match="hash router"):
        intervener.run([(Encoded(ids, np.array([0])), Condition(excluded={slot: (0,)}, mode=REROUTE))])


# ---- `atlas intervene` end to end on contract families -------------------------------------------------
def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _family_atlas(name, tmp_path):
    from click.testing import CliRunner

    from atlas_build.cli import main

    checkpoint = tmp_path / "ckpt"
    build_family_model(name).save_pretrained(checkpoint)
    write_tokenizer(checkpoint)
    atlas = tmp_path / "atlas"
    args = ["build", "--model", str(checkpoint), "--out", str(atlas), "--max-lemmas", "2", "--slug", "m"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return checkpoint, atlas


def _small_plan(path, layer, experts, **settings):
    import json

    plan = {
        "name": "small",
        "seed": 0,
        "baseline_draws": 3,
        "bootstrap": 20,
        "max_texts": 4,
        **settings,
        "hypotheses": [
            {"id": "h", "layer": layer, "experts": experts, "interventions": ["ablate"]},
        ],
    }
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["deepseek_v4", "longcat_flash", "ernie4_5_moe"])
def test_atlas_intervene_runs_on_contract_families_and_refuses_a_hash_layer(name, tmp_path, requires_wordnet):
    from click.testing import CliRunner

    from atlas_build.cli import main

    checkpoint, atlas = _family_atlas(name, tmp_path)
    kinds = list(FAMILY_CASES[name].routing_kind)
    learned = kinds.index("learned")
    n_zero = FAMILY_CASES[name].zero_experts
    # LongCat: a zero-computation (identity) expert among the removed ones (the last ids).
    experts = [0, FAMILY_CASES[name].config["n_routed_experts"] + n_zero - 1] if n_zero else [0]
    plan = _small_plan(tmp_path / "plan.json", learned, experts)
    base = ["intervene", str(atlas), "--plan", str(plan), "--model", str(checkpoint), "--no-record"]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    assert "hypotheses of plan 'small' survive" in result.output
    if "hash" not in kinds:
        return
    hash_layer = kinds.index("hash")
    before = _files(atlas)
    refused = _small_plan(tmp_path / "hash.json", hash_layer, [0])
    result = CliRunner().invoke(main, [*base[:3], str(refused), *base[4:]])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "token-id hash table" in lines[0] and "Traceback" not in result.output
    assert _files(atlas) == before
    # Zeroing the gate weights keeps the table's choice: allowed at a hash layer.
    zero = _small_plan(tmp_path / "zero.json", hash_layer, [0], ablation="zero_weight")
    result = CliRunner().invoke(main, [*base[:3], str(zero), *base[4:]])
    assert result.exit_code == 0, result.output
