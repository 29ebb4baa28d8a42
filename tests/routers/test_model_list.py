"""`atlas model list`: every supported architecture, named with what tests/routers verified of it."""

from __future__ import annotations

import json

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
