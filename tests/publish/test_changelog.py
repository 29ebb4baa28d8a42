"""The changelog's schema and model diffs, on two SYNTHETIC atlases (random-init models) without publishing."""

from __future__ import annotations

from atlas_build.publish import Version, changelog_entry, diff_releases, full_changelog, snapshot_of_atlas
from dataset_cards.synthetic import write_synthetic_atlas


def test_schema_and_model_changes_are_listed(tmp_path):
    old = snapshot_of_atlas(write_synthetic_atlas(tmp_path / "old", n_lemmas=4, top_k=4), "1.0.0")
    new = snapshot_of_atlas(write_synthetic_atlas(tmp_path / "new", n_lemmas=4, top_k=2))
    diff = diff_releases(old, new)
    assert diff.schema == [
        "`routing-synthetic-moe`: column `experts` type "
        "`fixed_size_list<element: fixed_size_list<element: uint8>[4]>[4]` → "
        "`fixed_size_list<element: fixed_size_list<element: uint8>[2]>[4]`",
        "`routing-synthetic-moe`: column `weights` type "
        "`fixed_size_list<element: fixed_size_list<element: halffloat>[4]>[4]` → "
        "`fixed_size_list<element: fixed_size_list<element: halffloat>[2]>[4]`",
    ]
    assert diff.models == {"added": [], "removed": [], "changed": {"synthetic-moe": {"top_k": (4, 2)}}}
    routing = next(c for c in diff.configs if c["config"] == "routing-synthetic-moe")
    # Same texts and tokens: same keys, new content.
    assert (routing["added"], routing["removed"], routing["files_changed"]) == (0, 0, True)
    senses = next(c for c in diff.configs if c["config"] == "senses")
    assert (senses["added"], senses["removed"], senses["files_changed"]) == (0, 0, False)

    entry = changelog_entry(diff, new, Version.parse("1.1.0"), "2025-01-02")
    assert entry.startswith("## v1.1.0 (2025-01-02)\n\nCompared with v1.0.0.")
    assert "| `senses` | 24 | 0 | 0 | 0 | unchanged |" in entry
    assert "| `routing-synthetic-moe` random-init | 120 | 0 | 0 | 0 | changed |" in entry
    assert "- Changed: `synthetic-moe` (random-init): top_k 4 → 2" in entry
    assert "- `routing-synthetic-moe`: column `experts` type" in entry
    assert "- No metrics in this release." in entry


def test_full_changelog_keeps_earlier_entries_newest_first():
    first = full_changelog("## v0.1.0 (2025-01-01)\n\nFirst release.\n", None)
    second = full_changelog("## v0.2.0 (2025-02-01)\n\nCompared with v0.1.0.\n", first)
    third = full_changelog("## v0.3.0 (2025-03-01)\n\nCompared with v0.2.0.\n", second)
    assert third.startswith("# Changelog\n")
    assert third.count("# Changelog") == 1
    assert third.index("## v0.3.0") < third.index("## v0.2.0") < third.index("## v0.1.0")
    assert third.endswith("## v0.1.0 (2025-01-01)\n\nFirst release.\n")
