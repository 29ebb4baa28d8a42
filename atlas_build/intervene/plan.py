"""The plan of `atlas intervene`: pre-registered hypotheses, written before the run, stored by its sha256.

A plan is one JSON object::

    {
      "name": "bank-river",                     # results are recorded under this name
      "seed": 0,                                # baseline draws and bootstrap resamples
      "baseline_draws": 39,                     # random load-matched expert sets per intervention
      "bootstrap": 1000,                        # cluster bootstrap resamples
      "alpha": 0.05,                            # family-wise: each hypothesis is judged at alpha / hypotheses
      "ablation": "reroute",                    # or "zero_weight"
      "max_texts": null,                        # a seeded sample of at most this many texts per hypothesis
      "hypotheses": [
        {"id": "h1",
         "claim": "expert 5 at layer 1 carries the river sense of bank",
         "layer": 1,                            # a decoder layer index (the models row's moe_layers)
         "experts": [5],
         "lemma": "bank", "sense": "bank%river",  # the texts it is tested on (null: every lemma / sense)
         "interventions": ["ablate", "transplant"],
         "donor_sense": "bank%money",           # transplant: whose recorded routing (default: the most
                                                #   frequent other sense of the lemma)
         "primary_outcome": "next_token_logprob"}
      ]
    }

Outcomes: next_token_logprob, target_logprob, downstream_identical, sense_probe (see outcomes.py). The plan's
hash is the sha256 of the file's bytes: a plan whose name is recorded with another hash was edited after its
results were recorded, and is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atlas_build.intervene.examples import Example, InterveneError

OUTCOMES = ("next_token_logprob", "target_logprob", "downstream_identical", "sense_probe")
INTERVENTIONS = ("ablate", "transplant")
ABLATIONS = ("reroute", "zero_weight")
PLAN_KEYS = {
    "name",
    "description",
    "seed",
    "baseline_draws",
    "bootstrap",
    "alpha",
    "ablation",
    "max_texts",
    "hypotheses",
}
HYPOTHESIS_KEYS = {
    "id",
    "claim",
    "layer",
    "experts",
    "lemma",
    "sense",
    "interventions",
    "donor_sense",
    "primary_outcome",
}
DEFAULTS = {
    "seed": 0,
    "baseline_draws": 39,
    "bootstrap": 1000,
    "alpha": 0.05,
    "ablation": "reroute",
    "max_texts": None,
}


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    layer: int
    experts: tuple[int, ...]
    lemma: str | None = None
    sense: str | None = None
    interventions: tuple[str, ...] = ("ablate",)
    donor_sense: str | None = None
    primary_outcome: str = "next_token_logprob"

    def population(self, examples: list[Example]) -> list[Example]:
        """The texts the hypothesis is tested on."""
        return [
            e
            for e in examples
            if (self.lemma is None or e.lemma == self.lemma) and (self.sense is None or e.sense == self.sense)
        ]


@dataclass(frozen=True)
class Plan:
    name: str
    sha256: str
    hypotheses: tuple[Hypothesis, ...]
    seed: int = 0
    baseline_draws: int = 39
    bootstrap: int = 1000
    alpha: float = 0.05
    ablation: str = "reroute"
    max_texts: int | None = None
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _fail(where: str, message: str) -> InterveneError:
    return InterveneError(f"{where}: {message}")


def _int(value, where: str, name: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise _fail(where, f"{name!r} must be an integer of at least {least}, got {value!r}")
    return value


def parse_plan(data: Any, sha256: str, where: str = "plan") -> Plan:
    """Check a plan object's shape (its fit to the model is `check_against`)."""
    if not isinstance(data, dict):
        raise _fail(where, "a plan is one JSON object with `name` and `hypotheses`")
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; a plan has {', '.join(sorted(PLAN_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, "`name` must be a non-empty string (results are recorded under it)")
    values = {**DEFAULTS, **{k: v for k, v in data.items() if k in DEFAULTS}}
    seed = _int(values["seed"], where, "seed", 0)
    draws = _int(values["baseline_draws"], where, "baseline_draws", 1)
    bootstrap = _int(values["bootstrap"], where, "bootstrap", 10)
    alpha = values["alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise _fail(where, f"`alpha` must lie in (0, 1), got {alpha!r}")
    if values["ablation"] not in ABLATIONS:
        raise _fail(where, f"`ablation` must be one of {', '.join(ABLATIONS)}, got {values['ablation']!r}")
    max_texts = values["max_texts"]
    if max_texts is not None:
        max_texts = _int(max_texts, where, "max_texts", 2)
    items = data.get("hypotheses")
    if not isinstance(items, list) or not items:
        raise _fail(where, "`hypotheses` must be a non-empty list")
    hypotheses, ids = [], set()
    for i, item in enumerate(items):
        hypothesis = _hypothesis(item, f"{where} hypothesis {i}")
        if hypothesis.id in ids:
            raise _fail(where, f"hypothesis id {hypothesis.id!r} appears twice")
        ids.add(hypothesis.id)
        hypotheses.append(hypothesis)
    return Plan(
        name=name,
        sha256=sha256,
        hypotheses=tuple(hypotheses),
        seed=seed,
        baseline_draws=draws,
        bootstrap=bootstrap,
        alpha=float(alpha),
        ablation=values["ablation"],
        max_texts=max_texts,
        description=str(data.get("description") or ""),
        raw=data,
    )


def _hypothesis(item: Any, where: str) -> Hypothesis:
    if not isinstance(item, dict):
        raise _fail(where, "a hypothesis is a JSON object")
    unknown = sorted(set(item) - HYPOTHESIS_KEYS)
    if unknown:
        raise _fail(
            where,
            f"unknown key(s) {', '.join(unknown)}; a hypothesis has {', '.join(sorted(HYPOTHESIS_KEYS))}",
        )
    hid = item.get("id")
    if not isinstance(hid, str) or not hid.strip():
        raise _fail(where, "`id` must be a non-empty string")
    layer = _int(item.get("layer"), where, "layer", 0)
    experts = item.get("experts")
    if not isinstance(experts, list) or not experts:
        raise _fail(where, "`experts` must be a non-empty list of expert ids")
    experts = tuple(_int(e, where, "experts[]", 0) for e in experts)
    if len(set(experts)) != len(experts):
        raise _fail(where, f"`experts` lists an expert twice: {list(experts)}")
    interventions = item.get("interventions", ["ablate"])
    if (
        not isinstance(interventions, list)
        or not interventions
        or any(x not in INTERVENTIONS for x in interventions)
    ):
        raise _fail(where, f"`interventions` must be a non-empty list of {', '.join(INTERVENTIONS)}")
    primary = item.get("primary_outcome", "next_token_logprob")
    if primary not in OUTCOMES:
        raise _fail(where, f"`primary_outcome` must be one of {', '.join(OUTCOMES)}, got {primary!r}")
    text = {}
    for key in ("lemma", "sense", "donor_sense"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(where, f"`{key}` must be a string or null, got {value!r}")
        text[key] = value
    if "transplant" in interventions and (text["lemma"] is None or text["sense"] is None):
        raise _fail(
            where, "a transplant needs `lemma` and `sense` (whose texts get the other sense's routing)"
        )
    claim = item.get("claim") or f"experts {list(experts)} at layer {layer} matter"
    return Hypothesis(
        id=hid,
        claim=str(claim),
        layer=layer,
        experts=experts,
        interventions=tuple(dict.fromkeys(interventions)),
        primary_outcome=primary,
        **text,
    )


def load_plan(path: Path) -> Plan:
    """Read and check a plan file; its hash is the sha256 of its bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InterveneError(f"cannot read the plan {path}: {error.strerror or error}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InterveneError(f"{path} is not a JSON plan: {error}") from None
    return parse_plan(data, hashlib.sha256(raw).hexdigest(), str(path))


def check_against(plan: Plan, row: dict, examples: list[Example]) -> None:
    """Refuse a plan naming a layer, expert, lemma or sense the model or atlas does not have."""
    layers = list(row["moe_layers"])
    n, k = int(row["n_routed_experts"]), int(row["top_k"])
    lemmas = {e.lemma for e in examples}
    senses = {(e.lemma, e.sense) for e in examples}
    for h in plan.hypotheses:
        where = f"plan {plan.name!r} hypothesis {h.id!r}"
        if h.layer not in layers:
            raise _fail(
                where, f"layer {h.layer} is not an MoE layer of {row['model_id']} (its MoE layers: {layers})"
            )
        bad = [e for e in h.experts if e >= n]
        if bad:
            raise _fail(where, f"expert(s) {bad} do not exist: {row['model_id']} has experts 0-{n - 1}")
        if len(h.experts) > n - k:
            raise _fail(
                where, f"removing {len(h.experts)} of {n} experts leaves fewer than top-k = {k} to choose"
            )
        if h.lemma is not None and h.lemma not in lemmas:
            raise _fail(where, f"the atlas has no labelled texts of lemma {h.lemma!r}")
        for key in (h.sense, h.donor_sense):
            if key is not None and (h.lemma, key) not in senses and h.lemma is not None:
                raise _fail(where, f"the atlas has no texts of sense {key!r} of {h.lemma!r}")
        if not h.population(examples):
            raise _fail(where, "no labelled text of the atlas matches its lemma and sense")


# ---- proposing a plan from the atlas's own routing ---------------------------------------------------------
def sense_selectivity(examples: list[Example], targets: dict, n_layers: int, n_experts: int) -> np.ndarray:
    """float64 `[L, N]`: per lemma with two or more senses, the spread (max - min over senses) of the share of
    its target tokens routed to each expert, averaged over those lemmas."""
    by_lemma: dict[str, dict[str, list[np.ndarray]]] = {}
    for e in examples:
        if e.key in targets:
            by_lemma.setdefault(e.lemma, {}).setdefault(e.sense, []).append(targets[e.key])
    spreads = []
    for senses in by_lemma.values():
        if len(senses) < 2:
            continue
        shares = []
        for rows in senses.values():
            experts = np.concatenate(rows)  # [tokens, L, k]
            onehot = np.zeros((len(experts), n_layers, n_experts))
            np.put_along_axis(onehot, experts, 1.0, axis=2)
            shares.append(onehot.mean(axis=0))
        stack = np.stack(shares)
        spreads.append(stack.max(axis=0) - stack.min(axis=0))
    return np.mean(spreads, axis=0) if spreads else np.zeros((n_layers, n_experts))


def pair_separation(
    examples: list[Example], targets: dict, pairs: list[tuple], n_layers: int, n_experts: int
):
    """float64 `[L, N]`: P(both targets routed to the expert | same sense) - P(... | different sense), over the
    atlas's pairs (first target token of each text)."""
    first = {e.key: targets[e.key][0] for e in examples if e.key in targets}
    same = np.zeros((n_layers, n_experts))
    diff = np.zeros((n_layers, n_experts))
    counts = [0, 0]
    for a, b, is_same in pairs:
        if a not in first or b not in first:
            continue
        both = np.zeros((n_layers, n_experts))
        for layer in range(n_layers):
            shared = np.intersect1d(first[a][layer], first[b][layer])
            both[layer, shared] = 1.0
        if is_same:
            same += both
            counts[0] += 1
        else:
            diff += both
            counts[1] += 1
    if not all(counts):
        return np.zeros((n_layers, n_experts))
    return same / counts[0] - diff / counts[1]


def propose(
    name: str,
    row: dict,
    examples: list[Example],
    targets: dict,
    pairs: list[tuple],
    per_layer: int = 1,
    layers: list[int] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plan (as a JSON object) from the atlas's own routing: per MoE layer (hash layers only when named in
    `layers`), the most sense-selective expert and the expert whose co-routing best separates same- from
    different-sense pairs."""
    moe_layers = list(row["moe_layers"])
    kinds = list(row.get("routing_kind") or [])
    # Token-id hash layers (DeepSeek-V4) have no learned choice to re-route: proposed only when asked for.
    learned = [layer for layer in moe_layers if layer >= len(kinds) or kinds[layer] != "hash"]
    wanted = learned if layers is None else layers
    bad = [layer for layer in wanted if layer not in moe_layers]
    if bad:
        raise InterveneError(
            f"--layers {bad}: not MoE layers of {row['model_id']} (its MoE layers: {moe_layers})"
        )
    n = int(row["n_routed_experts"])
    if not 1 <= per_layer <= n - int(row["top_k"]):
        raise InterveneError(f"--per-layer must lie in [1, {n - int(row['top_k'])}], got {per_layer}")
    selective = sense_selectivity(examples, targets, len(moe_layers), n)
    separating = pair_separation(examples, targets, pairs, len(moe_layers), n)
    hypotheses = []
    for slot, layer in enumerate(moe_layers):
        if layer not in wanted:
            continue
        chosen = [int(e) for e in np.argsort(-selective[slot], kind="stable")[:per_layer]]
        hypotheses.append(
            {
                "id": f"selective-L{layer}",
                "claim": f"the most sense-selective expert(s) {chosen} at layer {layer} (spread "
                f"{selective[slot, chosen].mean():.3f}) matter for the target words' prediction",
                "layer": layer,
                "experts": chosen,
                "interventions": ["ablate"],
                "primary_outcome": "next_token_logprob",
            }
        )
        if separating.any():
            order = [int(e) for e in np.argsort(-separating[slot], kind="stable") if int(e) not in chosen]
            hypotheses.append(
                {
                    "id": f"separating-L{layer}",
                    "claim": f"the expert(s) {order[:per_layer]} whose co-routing best separates same- from "
                    f"different-sense pairs at layer {layer} carry sense",
                    "layer": layer,
                    "experts": order[:per_layer],
                    "interventions": ["ablate"],
                    "primary_outcome": "sense_probe",
                }
            )
    return {"name": name, **DEFAULTS, **(settings or {}), "hypotheses": hypotheses}
