"""The card's sentences for `atlas intervene` results (the `interventions` config), one per recorded plan."""

from __future__ import annotations

from pathlib import Path

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import INTERVENTIONS
from atlas_build.atlas.store import read_config

DESCRIPTION = (
    "a causal test (`atlas intervene`): one hypothesis x intervention x outcome of a pre-registered plan, "
    "with its plan hash, effect, cluster bootstrap CI and p-value against random load-matched experts"
)


def intervention_lines(root: Path, manifest: Manifest, slug: str, random_init: bool = False) -> list[str]:
    """One sentence per plan recorded for `slug`: how many hypotheses survive, and which."""
    if INTERVENTIONS not in manifest.configs():
        return []
    rows = [r for r in read_config(root, manifest, INTERVENTIONS).to_pylist() if r["model_slug"] == slug]
    lines = []
    for plan in sorted({r["plan_name"] for r in rows}):
        mine = [r for r in rows if r["plan_name"] == plan]
        hypotheses = sorted({r["hypothesis_id"] for r in mine})
        survivors = sorted({r["hypothesis_id"] for r in mine if r["hypothesis_survives"]})
        line = (
            f"Interventions (`atlas intervene`, plan `{plan}`, sha256 {mine[0]['plan_sha256'][:12]}, "
            f"{mine[0]['baseline_draws']} random load-matched draws): {len(survivors)} of {len(hypotheses)} "
            "hypotheses survive" + (f" ({', '.join(f'`{h}`' for h in survivors)})" if survivors else "") + "."
        )
        if random_init:
            line += " The model is random-init: a null model, where none should survive."
        lines.append(line)
    return lines
