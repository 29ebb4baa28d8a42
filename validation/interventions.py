"""The `interventions-records` check: the `interventions` config (`atlas intervene`) says what its numbers give.

Per row: known intervention, ablation and outcome names (an ablation says reroute or zero_weight, a transplant
neither); the layer is an MoE layer of the row's model and the experts exist; 0 < p <= 1 and p is at least
1 / (draws + 1); ci_low <= ci_high; the row survives exactly when ci_high < 0 and p <= alpha. Per plan: one
plan hash; per (plan, hypothesis, intervention, outcome) one row; a hypothesis survives exactly when one of its
primary-outcome rows does. Reads the config and the models rows only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from validation.ledger import Ledger

CHECK = "interventions-records"
DESCRIPTION = (
    "interventions: known interventions and outcomes, layers and experts of the row's model, p in "
    "[1/(draws+1), 1], `survives` == (ci_high < 0 and p <= alpha), one plan hash per plan, one row per "
    "hypothesis x intervention x outcome, a hypothesis survives exactly when one of its primary rows does"
)
CONFIG = "interventions"
INTERVENTIONS = {"ablate": ("reroute", "zero_weight"), "transplant": (None,)}
OUTCOMES = ("next_token_logprob", "target_logprob", "downstream_identical", "sense_probe")


def row_problems(row: dict, model: dict | None) -> list[str]:
    where = f"{row['plan_name']}/{row['hypothesis_id']}/{row['intervention']}/{row['outcome']}"
    problems = []
    if row["intervention"] not in INTERVENTIONS or row["ablation"] not in INTERVENTIONS[row["intervention"]]:
        problems.append(f"{where}: intervention {row['intervention']!r} with ablation {row['ablation']!r}")
    if row["outcome"] not in OUTCOMES:
        problems.append(f"{where}: unknown outcome {row['outcome']!r}")
    if model is None:
        problems.append(f"{where}: model_slug {row['model_slug']!r} has no models row")
    else:
        if row["layer"] not in list(model["moe_layers"]):
            problems.append(f"{where}: layer {row['layer']} is not an MoE layer of {row['model_slug']}")
        if any(not 0 <= e < model["n_routed_experts"] for e in row["experts"]):
            problems.append(f"{where}: experts {row['experts']} outside [0, {model['n_routed_experts']})")
    p, draws = row["p_value"], row["baseline_draws"]
    if not (draws >= 1 and 1 / (draws + 1) - 1e-12 <= p <= 1):
        problems.append(f"{where}: p = {p} with {draws} baseline draws")
    if not row["ci_low"] <= row["ci_high"]:
        problems.append(f"{where}: ci_low {row['ci_low']} > ci_high {row['ci_high']}")
    if row["survives"] != bool(row["ci_high"] < 0 and p <= row["alpha"]):
        problems.append(
            f"{where}: survives={row['survives']} with ci_high {row['ci_high']}, p {p}, alpha {row['alpha']}"
        )
    return problems


def interventions_problems(rows: list[dict], models: dict[str, dict]) -> list[str]:
    problems = []
    hashes: dict[str, set] = defaultdict(set)
    keys: dict[tuple, int] = defaultdict(int)
    primary: dict[tuple, list[bool]] = defaultdict(list)
    verdicts: dict[tuple, set] = defaultdict(set)
    for row in rows:
        problems += row_problems(row, models.get(row["model_slug"]))
        hashes[row["plan_name"]].add(row["plan_sha256"])
        keys[(row["plan_name"], row["hypothesis_id"], row["intervention"], row["outcome"])] += 1
        hypothesis = (row["plan_name"], row["hypothesis_id"])
        verdicts[hypothesis].add(row["hypothesis_survives"])
        if row["primary"]:
            primary[hypothesis].append(row["survives"])
    problems += [
        f"plan {name!r} is recorded with {len(h)} hashes" for name, h in hashes.items() if len(h) > 1
    ]
    problems += [f"{'/'.join(key)}: {n} rows" for key, n in keys.items() if n > 1]
    for hypothesis, seen in verdicts.items():
        expect = any(primary.get(hypothesis, []))
        if seen != {expect}:
            problems.append(
                f"{'/'.join(hypothesis)}: hypothesis_survives {sorted(seen)}, its primary rows give {expect}"
            )
    return problems


def check_interventions(files: list[Path], models: dict[str, list[dict]], ledger: Ledger) -> None:
    """Record `interventions-records` (declared only when the atlas has the config)."""
    ledger.declare(CONFIG, CHECK)
    rows = [r for path in files for r in pq.read_table(path).to_pylist()]
    one_row = {slug: found[0] for slug, found in models.items() if len(found) == 1}
    problems = interventions_problems(rows, one_row)
    ledger.count(CONFIG, CHECK, "intervention rows add up", len(rows), len(problems))
    ledger.add_examples(CONFIG, CHECK, problems)
