"""`atlas model list`: every supported architecture, named with what tests/routers verified of it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atlas_build.cli import main
from atlas_build.routers import ADAPTERS, VERIFIED_FOR_ALL

from .test_build_families import FAMILIES

BUILT_CLAIM = "atlas build + atlas validate on the tiny checkpoint"


def test_model_list_names_every_architecture_and_what_was_verified():
    result = CliRunner().invoke(main, ["model", "list"])
    assert result.exit_code == 0, result.output
    assert "tiny-deepseek-v3" in result.output and "RANDOM-INIT" in result.output
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        assert f"  {name}\t{adapter.family}\n" in result.output
        for claim in adapter.verified:
            assert claim in result.output
    for claim in VERIFIED_FOR_ALL:
        assert claim in result.output


def test_model_list_json():
    result = CliRunner().invoke(main, ["model", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert "tiny-deepseek-v3" in listed["builtin"]
    by_type = {arch["model_type"]: arch for arch in listed["architectures"]}
    assert sorted(by_type) == ADAPTERS.names()
    for name, arch in by_type.items():
        assert arch["verified"][: len(VERIFIED_FOR_ALL)] == list(VERIFIED_FOR_ALL)
        assert arch["family"] == ADAPTERS.get(name).family


def test_claimed_end_to_end_builds_are_the_ones_tested():
    """An adapter that says `atlas build` was verified on its tiny checkpoint is built in test_build_families."""
    claimed = {
        name for name in ADAPTERS.names() if any(BUILT_CLAIM in c for c in ADAPTERS.get(name).verified)
    }
    assert claimed == set(FAMILIES)


def test_every_moe_family_of_the_installed_transformers_is_supported_or_named():
    """Fails the day transformers adds an MoE family that the project neither verifies nor refuses by name."""
    from atlas_build.routers.catalog import family_status, installed_families

    families = installed_families()
    # The scan sees the families this project knows to be MoE (it is not blind).
    assert {"mixtral", "deepseek_v4", "longcat_flash", "dbrx", "phimoe", "switch_transformers"} <= set(
        families
    )
    unnamed = sorted(m for m, types in families.items() if family_status(m, types)[0] == "unknown")
    assert not unnamed, (
        f"transformers has MoE families the atlas neither supports nor refuses: {unnamed}; add a Family row "
        "(routers/families.py) with its recomputation (tests/routers/family_cases.py), or a reason to "
        "routers/catalog.py REFUSED / NOT_MOE"
    )


def test_model_list_shows_every_family_with_its_status():
    from atlas_build.routers.catalog import REFUSED

    result = CliRunner().invoke(main, ["model", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["family"]: row for row in json.loads(result.output)["families"]}
    for name in ADAPTERS.names():
        assert any(name in row["model_types"] and row["status"] == "verified" for row in rows.values()), name
    for module, reason in REFUSED.items():
        assert rows[module]["status"] == "refused" and rows[module]["detail"] == reason
    assert rows["vitpose_backbone"]["status"] == "not MoE"
    assert {row["status"] for row in rows.values()} <= {"verified", "refused", "not MoE"}


@pytest.mark.parametrize("model_type", ["phimoe", "dbrx", "jetmoe"])
def test_a_refused_family_is_refused_with_its_reason(model_type):
    from transformers import AutoConfig

    from atlas_build.routers import UnsupportedModelError, adapter_for
    from atlas_build.routers.catalog import REFUSED

    with pytest.raises(UnsupportedModelError) as error:
        adapter_for(AutoConfig.for_model(model_type))
    assert REFUSED[model_type] in str(error.value)


def test_readme_family_table_lists_every_family_with_its_rule():
    from pathlib import Path

    from atlas_build.routers.catalog import NOT_MOE, REFUSED
    from atlas_build.routers.families import FAMILIES

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    table = {
        line.split("|")[1].strip().strip("`"): line for line in readme.splitlines() if line.startswith("| `")
    }
    for name in ADAPTERS.names():
        assert name in table and "verified" in table[name], name
    for name, row in FAMILIES.items():
        assert row.rule in table[name], name
    for name, reason in {**REFUSED, **NOT_MOE}.items():
        assert name in table and reason in table[name], name
