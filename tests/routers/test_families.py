"""Every family read through the router contract, verified on a tiny random checkpoint of its transformers
config against a float64 recomputation written from its modeling code (tests/routers/family_cases.py).

Per family: the engine's routing with `--scores` (all N scores) equals the recomputation (0 mismatched
expert sets, highest weight first, weights within 1e-5 of float64 in a float32 run, selection scores within
1e-5 relative); `atlas build --scores` end to end validates and stores that routing (weights within float16's
tolerance); the models row records `routing_kind` per layer and the zero-computation experts; a checkpoint
missing a router tensor is refused in one line; and the recomputation with one routing setting changed (the
group limit, the normalisation flag, the bias, the hash table) disagrees with the model, so the comparison
can fail. The checkpoints are RANDOM-INIT: these tests check the capture, not findings.
"""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas_build.atlas.routing import routing_array
from atlas_build.cli import main
from atlas_build.engines.hf import HFEngine, ModelLoadError

from .conftest import TEXTS, write_tokenizer
from .family_cases import FAMILY_CASES

TOLERANCE = 1e-5
FLOAT16_TOLERANCE = 1e-3  # stored weights are float16: half an ulp near 1 is ~5e-4
NAMES = sorted(FAMILY_CASES)


def build_family_model(name: str, seed: int = 0):
    """Seeded random-init model of a family, with wide routers, random biases and (DeepSeek-V4) a random
    hash table of distinct experts per token id."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    case = FAMILY_CASES[name]
    if case.wrapper is not None:
        config = AutoConfig.for_model(case.model_type, text_config=dict(case.config), **case.wrapper)
    else:
        config = AutoConfig.for_model(case.model_type, **case.config)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if case.wrapper is not None else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.modules():
            for router in list(block.children()):
                if type(router).__name__ not in case.routers:
                    continue
                for pname, param in router.named_parameters():
                    if pname.endswith("weight"):
                        param.normal_(0.0, case.router_std, generator=generator)
                for path in case.biases:
                    target = block if path.startswith("block.") else router
                    for part in path.removeprefix("block.").split("."):
                        target = getattr(target, part, None)
                    if target is not None:  # DeepSeek-V4's hash router has no correction bias
                        target.copy_(torch.randn(target.shape, generator=generator) * case.bias_std)
                if hasattr(router, "tid2eid"):
                    table = torch.stack(
                        [
                            torch.randperm(router.num_experts, generator=generator)[: router.top_k]
                            for _ in range(router.tid2eid.shape[0])
                        ]
                    )
                    router.tid2eid.copy_(table)
    return model.eval()


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            path = tmp_path_factory.mktemp(f"family-{name}")
            build_family_model(name).save_pretrained(path)
            write_tokenizer(path)
            built[name] = path
        return built[name]

    return get


class Reference:
    """A separately loaded copy: routers found by their modeling-code class names, their inputs captured by
    pre-hooks, each text run alone; the recomputation reads only the routers' (and blocks') tensors."""

    def __init__(self, path, name):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        self.case = FAMILY_CASES[name]
        auto = AutoModelForImageTextToText if self.case.wrapper is not None else AutoModelForCausalLM
        self.model = auto.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # A wrapper runs its text tower alone (no image), as the engine does.
        self.decoder = self.model.model.language_model if self.case.wrapper is not None else self.model.model
        self.config = self.model.config.get_text_config(decoder=True)
        self.routers, self.tensors = [], []
        for block in self.model.modules():
            for router in block.children():
                if type(router).__name__ in self.case.routers:
                    tensors = {
                        n: t.detach().double()
                        for n, t in [*router.named_parameters(), *router.named_buffers()]
                    }
                    for attr in self.case.block_tensors:
                        tensors[f"block.{attr}"] = getattr(block, attr).detach().double()
                    self.routers.append(router)
                    self.tensors.append(tensors)

    def gate(self, text, **variant):
        """Token ids, and per MoE layer `(index, weights, scores)` recomputed from the router inputs."""
        captured = []
        hooks = [
            r.register_forward_pre_hook(
                lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1]).double())
            )
            for r in self.routers
        ]
        try:
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                self.decoder(input_ids=ids, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        assert len(captured) == len(self.routers)
        token_ids = ids[0].numpy()
        out = [
            self.case.recompute(x, t, self.config, token_ids, **{**self.case.extra, **variant})
            for x, t in zip(captured, self.tensors, strict=True)
        ]
        return token_ids, out


def split(batch, field):
    return np.split(getattr(batch, field), np.cumsum(batch.token_counts)[:-1])


def sorted_by_expert(experts, weights):
    order = np.argsort(experts, axis=-1, kind="stable")
    return np.take_along_axis(experts, order, -1), np.take_along_axis(weights, order, -1)


def disagreement(experts, weights, ref_layers) -> tuple[int, float]:
    """(mismatched expert sets, worst weight difference) of one text's routing `[T, L, k]` and a recomputation."""
    want_e = torch.stack([index for index, _, _ in ref_layers], dim=1).numpy().astype(np.int64)
    want_w = torch.stack([w for _, w, _ in ref_layers], dim=1).numpy()
    got_e, got_w = sorted_by_expert(experts.astype(np.int64), weights.astype(np.float64))
    want_e, want_w = sorted_by_expert(want_e, want_w)
    mismatched = int((got_e != want_e).any(-1).sum())
    same = (got_e == want_e).all(-1)
    worst = float(np.abs(got_w - want_w)[same].max()) if same.any() else 0.0
    return mismatched, worst


@pytest.fixture(scope="module")
def routed(family_checkpoint):
    """`routed(name) -> (batch, models row, Reference)`: the engine's routing with all N scores."""
    cache = {}

    def get(name):
        if name not in cache:
            path = family_checkpoint(name)
            probe = HFEngine(str(path))
            n = probe.spec.n_routed_experts
            probe.close()
            # One right-padded batch of all texts: padding must not change routing.
            engine = HFEngine(str(path), batch_size=len(TEXTS), scores_top_m=n)
            batch, row = engine.route(TEXTS), engine.model_row()
            engine.close()
            cache[name] = (batch, row, Reference(path, name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_routing_and_scores_equal_the_recomputation_from_the_modeling_code(name, routed):
    batch, row, ref = routed(name)
    case = FAMILY_CASES[name]
    assert row["router_adapter"] == name and row["model_type"] == case.model_type
    assert row["routing_kind"] == list(case.routing_kind)
    assert row["moe_layers"] == [i for i, kind in enumerate(case.routing_kind) if kind != "dense"]
    assert row["n_zero_experts"] == case.zero_experts
    if case.zero_experts:  # the zero-computation experts take the last ids, and the router does choose them
        first_zero = row["n_routed_experts"] - case.zero_experts
        assert (batch.experts >= first_zero).any() and (batch.experts < first_zero).any()
    assert (np.diff(batch.weights, axis=-1) <= 0).all()  # highest weight first
    mismatched, worst, worst_score = 0, 0.0, 0.0
    for text, ids, experts, weights, score_ids, scores in zip(
        TEXTS,
        split(batch, "token_ids"),
        split(batch, "experts"),
        split(batch, "weights"),
        split(batch, "score_experts"),
        split(batch, "scores"),
        strict=True,
    ):
        ref_ids, layers = ref.gate(text)
        np.testing.assert_array_equal(ids, ref_ids)
        m, w = disagreement(experts, weights, layers)
        mismatched, worst = mismatched + m, max(worst, w)
        full = torch.stack([s for _, _, s in layers], dim=1).numpy()  # [T, L, N]
        want = np.take_along_axis(full, score_ids.astype(np.int64), -1)
        finite = np.isfinite(want)
        # Relative to max(|score|, 1): relative for large scores (logits), absolute below 1 (probabilities,
        # and logits near 0, where float32 rounding of W h is absolute, not relative).
        rel = np.abs(scores[finite] - want[finite]) / np.maximum(np.abs(want[finite]), 1.0)
        worst_score = max(worst_score, float(rel.max()))
    assert mismatched == 0, f"{name}: {mismatched} expert sets differ from the recomputed router"
    assert worst <= TOLERANCE, f"{name}: weights differ by up to {worst:.3g}"
    assert worst_score <= TOLERANCE, f"{name}: selection scores differ by up to {worst_score:.3g} (relative)"


@pytest.mark.parametrize("name", NAMES)
def test_a_changed_routing_setting_is_caught(name, routed):
    batch, _, ref = routed(name)
    mismatched, worst = 0, 0.0
    for text, experts, weights in zip(TEXTS, split(batch, "experts"), split(batch, "weights"), strict=True):
        _, layers = ref.gate(text, **FAMILY_CASES[name].control)
        m, w = disagreement(experts, weights, layers)
        mismatched, worst = mismatched + m, max(worst, w)
    assert mismatched > 0 or worst > TOLERANCE, (
        f"{name}: the recomputation with {FAMILY_CASES[name].control} agrees with the model: the test is blind to it"
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_router_tensor_is_refused(name, family_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    src = family_checkpoint(name)
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for item in src.iterdir():
        if item.suffix != ".safetensors":
            (dst / item.name).write_bytes(item.read_bytes())
    (weights_file,) = src.glob("*.safetensors")
    tensors = load_file(weights_file)
    # The router's own tensors (a hash table first: the one DeepSeek-V4's hash layers cannot do without).
    router_keys = sorted(
        (not k.endswith("tid2eid"), k)
        for k in tensors
        if re.search(r"\.(mlp|ffn|moe|feed_forward|block_sparse_moe)\.(gate|router)\.", k)
        and (k.endswith("weight") or k.endswith("tid2eid"))
    )
    dropped = router_keys[0][1]
    save_file(
        {k: v for k, v in tensors.items() if k != dropped}, dst / weights_file.name, metadata={"format": "pt"}
    )
    with pytest.raises(ModelLoadError, match="missing") as error:
        HFEngine(str(dst))
    assert dropped.split(".")[-1] in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_atlas_build_with_scores_stores_the_recomputed_routing(
    name, family_checkpoint, tmp_path, requires_wordnet
):
    path = family_checkpoint(name)
    out = tmp_path / "atlas"
    slug = name.replace("_", "-")
    args = [
        "build",
        "--model",
        str(path),
        "--out",
        str(out),
        "--max-lemmas",
        "1",
        "--slug",
        slug,
        "--scores",
        "4",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # A local checkpoint's tokenizer: given as its directory (the atlas names the model by a portable id).
    result = CliRunner().invoke(main, ["validate", str(out), "--problems-only", "--tokenizer", str(path)])
    assert result.exit_code == 0, result.output
    (row,) = datasets.load_dataset(str(out), "models", split="train").to_list()
    assert row["routing_kind"] == list(FAMILY_CASES[name].routing_kind)
    card = (out / "README.md").read_text(encoding="utf-8")
    if "hash" in row["routing_kind"]:
        assert "token-id hash table" in card and "excluded from the sense metrics" in card
    if FAMILY_CASES[name].zero_experts:
        assert "zero-computation experts" in card
    routing = datasets.load_dataset(str(out), f"routing-{slug}", split="train").with_format("arrow")[:]
    experts = routing_array(routing.column("experts")).astype(np.int64)
    weights = routing_array(routing.column("weights")).astype(np.float64)
    texts = {
        r["example_id"]: r["text"]
        for r in datasets.load_dataset(str(out), "senses", split="train")
        .select_columns(["example_id", "text"])
        .to_list()
    }
    source_ids = routing.column("source_id").to_pylist()
    ref = Reference(path, name)
    mismatched, worst, start = 0, 0.0, 0
    for i in range(1, len(source_ids) + 1):
        if i == len(source_ids) or source_ids[i] != source_ids[start]:
            if source_ids[start] in texts:
                _, layers = ref.gate(texts[source_ids[start]])
                m, w = disagreement(experts[start:i], weights[start:i], layers)
                mismatched, worst = mismatched + m, max(worst, w)
            start = i
    assert mismatched == 0 and worst <= FLOAT16_TOLERANCE, (name, mismatched, worst)
    assert (np.diff(weights, axis=-1) <= 0).all()


def test_hash_layers_are_left_out_of_the_sense_metrics_by_default(
    family_checkpoint, tmp_path, requires_wordnet
):
    """DeepSeek-V4's hash layer (decoder layer 0) is recorded, but the sense metrics read only the learned
    layers unless asked: their per-layer κ equal the learned layers' columns of the all-layers computation."""
    from atlas_build.metrics.compute import MetricsOptions, compute_metrics

    out = tmp_path / "atlas"
    args = ["build", "--model", str(family_checkpoint("deepseek_v4")), "--out", str(out), "--max-lemmas", "4"]
    result = CliRunner().invoke(main, [*args, "--slug", "v4"])
    assert result.exit_code == 0, result.output
    fast = {"n_bootstrap": 20, "n_permutations": 19}
    default = compute_metrics(out, options=MetricsOptions(**fast)).metrics
    full = compute_metrics(out, options=MetricsOptions(**fast, include_hash_layers=True)).metrics
    sp, sp_all = default["models"]["v4"]["sense_pairs"], full["models"]["v4"]["sense_pairs"]
    assert default["models"]["v4"]["model"]["moe_layers"] == [0, 1, 2]
    assert sp["sense_layers"] == [1, 2] and sp["hash_layers_excluded"] == [0]
    assert sp_all["sense_layers"] == [0, 1, 2] and sp_all["hash_layers_excluded"] == []
    for key in ("kappa_same", "kappa_different"):
        np.testing.assert_allclose(sp[key]["estimate"], sp_all[key]["estimate"][1:])
    assert any("token-id hash table" in note for note in default["notes"])
