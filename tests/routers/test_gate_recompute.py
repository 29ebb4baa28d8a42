"""Every router adapter, verified against an independent recomputation of its architecture's gate.

For each tiny checkpoint the engine's routing (hooks on the routers' outputs, read by the adapter) is
compared with a plain-torch float64 recomputation of the gate from the router's *input*, captured by a
separate pre-hook on a separately loaded copy of the model, each text run alone (no padding). Neither the
router module nor the adapter is called in the recomputation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_build.engines.hf import HFEngine

from .conftest import CASES, TEXTS

BUILTIN = "tiny-deepseek-v3"
TOLERANCE = 1e-5


# ---- the gates, written from each architecture's routing formula ---------------------------------------
def _softmax_topk(x, weight, k, renormalise):
    probs = torch.softmax(x @ weight.T, dim=-1)
    top, index = probs.topk(k, dim=-1)
    if renormalise:
        top = top / top.sum(dim=-1, keepdim=True)
    return index, top


def _keep_best_groups(group_scores, keep, per_group):
    """Boolean expert mask `[T, N]`: True for the experts of each token's `keep` best groups."""
    best = group_scores.argsort(dim=-1, descending=True)[:, :keep]
    groups = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    return groups.repeat_interleave(per_group, dim=1)


def deepseek_v2_gate(x, router, config, grouped=None):
    """softmax; greedy or group-limited (group score = max prob) top-k; times routed_scaling_factor."""
    probs = torch.softmax(x @ router["weight"].T, dim=-1)
    grouped = config.topk_method == "group_limited_greedy" if grouped is None else grouped
    choice = probs
    if grouped:
        n_experts = probs.shape[-1]
        per_group = n_experts // config.n_group
        group_scores = probs.view(-1, config.n_group, per_group).amax(dim=-1)
        choice = probs.where(_keep_best_groups(group_scores, config.topk_group, per_group), -1.0)
    index = choice.topk(config.num_experts_per_tok, dim=-1).indices
    return index, probs.gather(1, index) * config.routed_scaling_factor


def deepseek_v3_gate(x, router, config, use_bias=True, grouped=True):
    """sigmoid; bias-corrected group-limited top-k (group score = sum of its top-2); normalised; scaled."""
    scores = torch.sigmoid(x @ router["weight"].T)
    choice = scores + router["e_score_correction_bias"] if use_bias else scores
    if grouped:
        per_group = scores.shape[-1] // config.n_group
        group_scores = choice.view(-1, config.n_group, per_group).topk(2, dim=-1).values.sum(dim=-1)
        choice = choice.where(_keep_best_groups(group_scores, config.topk_group, per_group), -np.inf)
    index = choice.topk(config.num_experts_per_tok, dim=-1).indices
    weights = scores.gather(1, index)
    if config.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return index, weights * config.routed_scaling_factor


def gpt_oss_gate(x, router, config, use_bias=True):
    """Logits with the router's bias; top-k of the logits; softmax over the k chosen logits (OpenAI's rule)."""
    logits = x @ router["weight"].T + (router["bias"] if use_bias else 0.0)
    top, index = logits.topk(config.num_experts_per_tok, dim=-1)
    return index, torch.softmax(top, dim=-1)


def llama4_gate(x, router, config):
    """Top-k of the raw logits; each chosen expert's weight is the sigmoid of its own logit (Meta's rule)."""
    top, index = (x @ router["weight"].T).topk(config.num_experts_per_tok, dim=-1)
    return index, torch.sigmoid(top)


# Keyed by the loaded model's config.model_type: a wrapper checkpoint loads as its text decoder.
GATES = {
    "deepseek_v2": deepseek_v2_gate,
    "deepseek_v3": deepseek_v3_gate,
    # GLM-4 MoE publishes DeepSeek-V3's rule: sigmoid, bias-corrected group-limited top-k, normalised, scaled.
    "glm4_moe": deepseek_v3_gate,
    "gpt_oss": gpt_oss_gate,
    "llama4_text": llama4_gate,
    "qwen3_5_moe_text": lambda x, r, c: _softmax_topk(x, r["weight"], c.num_experts_per_tok, True),
    "mixtral": lambda x, r, c: _softmax_topk(x, r["weight"], c.num_experts_per_tok, True),
    "qwen2_moe": lambda x, r, c: _softmax_topk(x, r["weight"], c.num_experts_per_tok, c.norm_topk_prob),
    "qwen3_moe": lambda x, r, c: _softmax_topk(x, r["weight"], c.num_experts_per_tok, c.norm_topk_prob),
    "olmoe": lambda x, r, c: _softmax_topk(x, r["weight"], c.num_experts_per_tok, c.norm_topk_prob),
}
# (MoE block class, decoder-layer attribute of the block, block attribute of the router)
MOE_BLOCKS = {name: (case.moe_block, case.block_attr, case.router_attr) for name, case in CASES.items()} | {
    BUILTIN: ("DeepseekV3MoE", "mlp", "gate")
}


# ---- reference: router inputs of a separately loaded model ---------------------------------------------
class Reference:
    """A separately loaded copy of a checkpoint, its MoE layers found by MoE-block class, router inputs
    captured by forward pre-hooks. Each text runs alone, so no padding is involved."""

    def __init__(self, path, moe_block: str, block_attr: str = "mlp", router_attr: str = "gate"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.config = self.model.config
        blocks = [getattr(layer, block_attr) for layer in self.model.model.layers]
        self.moe_layers = tuple(i for i, block in enumerate(blocks) if type(block).__name__ == moe_block)
        self.routers = [getattr(blocks[i], router_attr) for i in self.moe_layers]
        # The router's parameters and buffers as plain float64 tensors: the recomputation reads these.
        self.router_tensors = [
            {name: t.detach().double() for name, t in [*r.named_parameters(), *r.named_buffers()]}
            for r in self.routers
        ]

    def router_inputs(self, text: str) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Token ids of `text` and, per MoE layer, the router's input `[tokens, hidden]` (float64)."""
        captured: list[torch.Tensor] = []

        def pre_hook(module, args):
            captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).double())

        hooks = [router.register_forward_pre_hook(pre_hook) for router in self.routers]
        try:
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                self.model.model(input_ids=ids, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        assert len(captured) == len(self.routers)
        return ids[0].numpy(), captured

    def gate(self, text: str, **variant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, expert ids `[T, L, k]` and weights `[T, L, k]` recomputed from the router inputs."""
        gate = GATES[self.config.model_type]
        ids, inputs = self.router_inputs(text)
        pairs = [
            gate(x, tensors, self.config, **variant)
            for x, tensors in zip(inputs, self.router_tensors, strict=True)
        ]
        index, weights = zip(*pairs, strict=True)
        return ids, torch.stack(index, dim=1).numpy(), torch.stack(weights, dim=1).numpy()


def by_expert(experts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Experts and weights reordered by expert id, so that routings compare regardless of order."""
    order = np.argsort(experts, axis=-1, kind="stable")
    return np.take_along_axis(experts, order, -1), np.take_along_axis(weights, order, -1)


def assert_same_routing(experts_a, weights_a, experts_b, weights_b, what: str) -> None:
    ea, wa = by_expert(np.asarray(experts_a, np.int64), np.asarray(weights_a, np.float64))
    eb, wb = by_expert(np.asarray(experts_b, np.int64), np.asarray(weights_b, np.float64))
    assert ea.shape == eb.shape, what
    mismatched = int((ea != eb).any(axis=-1).sum())
    assert mismatched == 0, f"{what}: {mismatched} of {ea.shape[0] * ea.shape[1]} expert sets differ"
    worst = float(np.abs(wa - wb).max())
    assert worst <= TOLERANCE, f"{what}: weights differ by up to {worst:.3g}"


def split(batch, field):
    bounds = np.cumsum(batch.token_counts)[:-1]
    return np.split(getattr(batch, field), bounds)


# ---- fixtures -------------------------------------------------------------------------------------------
ALL = [*CASES, BUILTIN]


def checkpoint_path(name: str, tiny_checkpoint):
    if name == BUILTIN:
        from atlas_build.models import builtin_checkpoint

        return builtin_checkpoint(BUILTIN)
    return tiny_checkpoint(name)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    """`engine(name, batch_size) -> HFEngine`, one per checkpoint for the module (loading dominates)."""
    cache: dict[str, HFEngine] = {}

    def get(name: str, batch_size: int) -> HFEngine:
        if name not in cache:
            cache[name] = HFEngine(BUILTIN if name == BUILTIN else str(tiny_checkpoint(name)))
        cache[name].batch_size = batch_size
        return cache[name]

    yield get
    for loaded in cache.values():
        loaded.close()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cache[name] = Reference(checkpoint_path(name, tiny_checkpoint), *MOE_BLOCKS[name])
        return cache[name]

    return get


# ---- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_engine_routing_equals_recomputed_gate(name, engine, reference):
    ref = reference(name)
    # batch_size 2: five texts of different lengths make three padded batches.
    hf = engine(name, batch_size=2)
    batch = hf.route(TEXTS)
    row = hf.model_row()
    assert hf.spec.moe_layers == ref.moe_layers
    if name in CASES:
        assert ref.moe_layers == CASES[name].moe_layers
    assert batch.experts.dtype == np.int16 and batch.weights.dtype == np.float32
    assert batch.experts.shape == (batch.n_tokens, len(ref.moe_layers), hf.spec.top_k)
    # Highest weight first, as the RoutingBatch contract says.
    assert (np.diff(batch.weights, axis=-1) <= 0).all()
    for text, ids, experts, weights in zip(
        TEXTS, split(batch, "token_ids"), split(batch, "experts"), split(batch, "weights"), strict=True
    ):
        ref_ids, ref_experts, ref_weights = ref.gate(text)
        np.testing.assert_array_equal(ids, ref_ids)
        assert_same_routing(experts, weights, ref_experts, ref_weights, f"{name} {text!r}")
    assert row["moe_layers"] == list(ref.moe_layers)
    assert 0 < row["active_params"] < row["total_params"]


@pytest.mark.parametrize("name", ALL)
def test_padding_does_not_change_routing(name, engine):
    # All texts in one right-padded batch, then each text alone.
    together = engine(name, batch_size=len(TEXTS)).route(TEXTS)
    single = engine(name, batch_size=1).route(TEXTS)
    assert len(set(together.token_counts.tolist())) > 2  # really padded
    np.testing.assert_array_equal(together.token_counts, single.token_counts)
    for i, (ea, wa, eb, wb) in enumerate(
        zip(
            split(together, "experts"),
            split(together, "weights"),
            split(single, "experts"),
            split(single, "weights"),
            strict=True,
        )
    ):
        assert_same_routing(ea, wa, eb, wb, f"{name} text {i} batched vs alone")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("deepseek_v3", "bias"),
        ("deepseek_v3", "groups"),
        ("deepseek_v2_group_limited", "groups"),
        ("glm4_moe", "bias"),
        ("glm4_moe", "groups"),
        ("gpt_oss", "bias"),
    ],
)
def test_checkpoints_exercise_the_routing_paths(name, path, reference):
    """The bias and the group limit must change some choices, else the tests above would not test them."""
    ref = reference(name)
    variant = {"use_bias": False} if path == "bias" else {"grouped": False}
    changed = 0
    for text in TEXTS:
        _, experts, _ = ref.gate(text)
        _, plain, _ = ref.gate(text, **variant)
        changed += int((np.sort(experts, -1) != np.sort(plain, -1)).any(-1).sum())
    assert changed > 0, f"{name}: switching off the {path} changes no expert choice"
