"""`--require-audit`: publish only an atlas whose every routing config passed `atlas audit` on its current files.

May import: the ground floor, `publish.base`.
"""

from __future__ import annotations

from pathlib import Path

from atlas_build.atlas.manifest import Manifest, config_data_sha256
from atlas_build.atlas.schema import ROUTING_PREFIX
from atlas_build.publish.base import PublishError


def audit_gaps(manifest: Manifest) -> list[str]:
    """Routing configs without a passing audit of their current files, each with what is wrong."""
    gaps = []
    for config in sorted(c for c in manifest.configs() if c.startswith(ROUTING_PREFIX)):
        current = config_data_sha256(manifest, config)
        records = [a for a in manifest.audits if isinstance(a, dict) and a.get("config") == config]
        fresh = [a for a in records if a.get("data_sha256") == current]
        if not records:
            gaps.append(f"{config}: never audited")
        elif not fresh:
            gaps.append(f"{config}: its routing files changed since its last audit")
        elif not fresh[-1].get("passed"):
            gaps.append(
                f"{config}: its last audit failed ({fresh[-1].get('identical_sets')} of "
                f"{fresh[-1].get('token_layers')} token-layers identical)"
            )
    return gaps


def require_audits(source: Path, manifest: Manifest) -> None:
    """Raise `PublishError` unless every routing config passed an audit of its current files."""
    gaps = audit_gaps(manifest)
    if gaps:
        raise PublishError(
            f"--require-audit: {'; '.join(gaps)}. Run `atlas audit {source}` (with --slug for each model) and "
            "publish again; nothing was published"
        )
