"""The audit re-routes the texts of the files its manifest lists: a routing file changed after the manifest is
refused in one line before any model is loaded, and nothing is recorded. SYNTHETIC atlas (random routing)."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from atlas_build.audit.reroute import AuditError, audit_atlas
from dataset_cards.synthetic import write_synthetic_atlas


def test_a_routing_file_changed_after_the_manifest_is_refused(tmp_path):
    root = write_synthetic_atlas(tmp_path / "atlas")
    path = next((root / "routing-synthetic-moe").glob("*.parquet"))
    table = pq.read_table(path)
    column = pc.invert(table.column("is_target"))
    pq.write_table(table.set_column(table.schema.get_field_index("is_target"), "is_target", column), path)
    manifest = (root / "manifest.json").read_bytes()
    with pytest.raises(AuditError) as error:
        audit_atlas(root, model="no-such-model-is-loaded", log=lambda *_: None)
    message = str(error.value)
    # The file checks (size, sha256) or the row fingerprints refuse it first: either way one line naming it.
    assert "\n" not in message and "routing-synthetic-moe" in message
    assert "sha256" in message or "manifest.json says" in message
    assert (root / "manifest.json").read_bytes() == manifest
