"""The `audits[]` records of manifest.json: one verdict per part (sets, order, weights) and the record's hash.

An audit compares, per token and MoE layer, three parts of the stored routing with the model's:

    sets      the same top-k expert ids
    order     ... in the same order (a swap of two experts whose weights are equal within tolerance is no
              difference: the order of a tie is not the model's to give)
    weights   each expert's weight within the tolerance of the storage and compute dtypes

Each part has its own threshold (least share of token-layers that agree) and its own exact (Clopper-Pearson)
95% interval on its mismatch rate; the audit passes when every part checked passes. `weights` is not checked
(`checked: false`) when the atlas stores ids only.

`record_sha256` is the sha256 of the record's canonical JSON (sorted keys, without `record_sha256`): a record
edited by hand no longer hashes to it. A hash anyone can recompute proves no authorship, so `atlas publish
--require-audit` also re-routes a fresh sample (publish/audits.py); this module only says whether a record
is whole and adds up. Read by the audit, validation, the card and publishing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PARTS = ("sets", "order", "weights")
PART_NAMES = {
    "sets": "identical expert sets",
    "order": "identical order",
    "weights": "weights within tolerance",
}


def record_sha256(record: dict[str, Any]) -> str:
    """sha256 of `record`'s canonical JSON, its own `record_sha256` left out."""
    body = {key: value for key, value in record.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def part_passes(part: dict[str, Any]) -> bool:
    """Whether one part's counts reach its threshold (a part with no token-layers never passes)."""
    trials = int(part["trials"])
    return trials > 0 and int(part["agree"]) / trials >= float(part["threshold"])


def failed_parts(record: dict[str, Any]) -> list[str]:
    """The checked parts of an audit record that did not reach their threshold, in PARTS order."""
    parts = record.get("parts") or {}
    return [
        name
        for name in PARTS
        if (parts.get(name) or {}).get("checked", True) and not part_passes(parts[name])
    ]


def record_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with one audit record as a record: missing parts, counts that do not add up, a
    `passed` its parts do not give, a hash that does not match. Empty when it is whole and consistent.
    """
    problems: list[str] = []
    parts = record.get("parts")
    if not isinstance(parts, dict) or any(not isinstance(parts.get(name), dict) for name in PARTS):
        return ["it has no per-part verdict (sets, order, weights): it predates them or was edited"]
    try:
        for name in PARTS:
            part = parts[name]
            if not part.get("checked", True):
                continue
            agree, trials = int(part["agree"]), int(part["trials"])
            if not 0 <= agree <= trials or trials != int(record["token_layers"]):
                problems.append(f"its {name} counts ({agree} of {trials}) do not add up")
            if bool(part["passed"]) != part_passes(part):
                problems.append(
                    f"its {name} part says passed={part['passed']}, {agree} of {trials} at threshold "
                    f"{part['threshold']} gives {part_passes(part)}"
                )
        if bool(record["passed"]) != (not failed_parts(record)):
            problems.append(f"it says passed={record['passed']}, its parts give {not failed_parts(record)}")
    except (KeyError, TypeError, ValueError) as error:
        problems.append(f"it is malformed ({type(error).__name__}: {error})")
    if record.get("record_sha256") != record_sha256(record):
        problems.append("it does not hash to its record_sha256 (edited or forged)")
    return problems
