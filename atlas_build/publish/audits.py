"""`--require-audit`: publish only an atlas whose every routing config passed `atlas audit` on its current files,
by a record that is whole and that a fresh re-route confirms.

A record is accepted when (1) it is tied to the routing files as they are now (its `data_sha256` is the hash of
the manifest's sha256s of that config's files), (2) it is whole and adds up: each part (sets, order, weights)
reaches its threshold, `passed` is what its parts give, and it hashes to its `record_sha256`
(atlas/audits.py), and (3) a fresh sample of RECHECK_SAMPLE texts, drawn with a new seed, re-routed with the
audited model at the record's thresholds, passes too. A hash anyone can recompute proves no authorship, so (3)
is what refuses a forged record over wrong routing: the forger cannot choose the texts the re-check draws.

May import: the ground floor, `publish.base`, `atlas_build.audit` (lazily: the re-check).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from atlas_build.atlas.audits import record_problems
from atlas_build.atlas.manifest import Manifest, config_data_sha256
from atlas_build.atlas.schema import ROUTING_PREFIX
from atlas_build.publish.base import PublishError

RECHECK_SAMPLE = 16  # texts re-routed at publish time: small next to an audit, never chosen by the record


def audit_gaps(manifest: Manifest) -> tuple[list[str], dict[str, dict]]:
    """(what is wrong, config -> its accepted record): routing configs without a passing, whole audit record
    of their current files, each with what is wrong."""
    gaps, accepted = [], {}
    for config in sorted(c for c in manifest.configs() if c.startswith(ROUTING_PREFIX)):
        current = config_data_sha256(manifest, config)
        records = [a for a in manifest.audits if isinstance(a, dict) and a.get("config") == config]
        fresh = [a for a in records if a.get("data_sha256") == current]
        if not records:
            gaps.append(f"{config}: never audited")
        elif not fresh:
            gaps.append(f"{config}: its routing files changed since its last audit")
        elif problems := record_problems(fresh[-1]):
            gaps.append(f"{config}: its last audit record is not trustworthy ({'; '.join(problems)})")
        elif not fresh[-1].get("passed"):
            gaps.append(
                f"{config}: its last audit failed ({', '.join(fresh[-1].get('failed_parts') or ['sets'])}; "
                f"{fresh[-1].get('identical_sets')} of {fresh[-1].get('token_layers')} token-layers identical)"
            )
        else:
            accepted[config] = fresh[-1]
    return gaps, accepted


def recheck(source: Path, config: str, record: dict, log: Callable[[str], None]) -> str | None:
    """Re-route a fresh sample of `config` as `record` was audited; None when it passes, else what failed."""
    from atlas_build.audit.reroute import audit_atlas

    seed = secrets.randbelow(2**32)
    log(f"--require-audit: re-checking {config} on {RECHECK_SAMPLE} texts drawn with seed {seed}")
    result = audit_atlas(
        source,
        model=None if record.get("against_recorded", True) else str(record.get("model")),
        slug=config[len(ROUTING_PREFIX) :],
        sample=RECHECK_SAMPLE,
        seed=seed,
        threshold=float(record["threshold"]),
        order_threshold=float(record["parts"]["order"]["threshold"]),
        weights_threshold=float(record["parts"]["weights"]["threshold"]),
        record=False,
        log=lambda *_: None,
    )
    if result.passed:
        return None
    first = f": {result.first_mismatches[0]}" if result.first_mismatches else ""
    return (
        f"{config}: its audit record says passed, a re-check of {RECHECK_SAMPLE} texts (seed {seed}) fails "
        f"({', '.join(result.failed_parts)}){first}"
    )


def require_audits(source: Path, manifest: Manifest, log: Callable[[str], None] = print) -> None:
    """Raise `PublishError` unless every routing config passed an audit of its current files, by a whole
    record that a fresh re-route confirms."""
    gaps, accepted = audit_gaps(manifest)
    if not gaps:
        gaps = [gap for config, record in accepted.items() if (gap := recheck(source, config, record, log))]
    if gaps:
        raise PublishError(
            f"--require-audit: {'; '.join(gaps)}. Run `atlas audit {source}` (with --slug for each model) and "
            "publish again; nothing was published"
        )
