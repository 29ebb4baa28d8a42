"""Build state stays inside the atlas (issue 31): a `.atlas/shards/<config>` linked to an outside folder is
refused by a resumed build, which never writes through it, and by `atlas verify`."""

from __future__ import annotations

import shutil

import pytest

from atlas_build.atlas.layout import AtlasLayout, UnsafeStateError

from ._support import FAKE_ARGS
from .conftest import cli


def _linked_state(tmp_path, fakes_ok=True):
    out = tmp_path / "atlas"
    assert cli(["build", "--out", str(out), *FAKE_ARGS]).exit_code == 0
    shards = out / ".atlas" / "shards"
    config = next(p.name for p in out.iterdir() if p.name.startswith("routing-"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00000.json").write_text("precious\n")
    if (shards / config).exists():
        shutil.rmtree(shards / config)
    shards.mkdir(parents=True, exist_ok=True)
    (shards / config).symlink_to(outside)
    return out, config, outside


def test_a_resumed_build_refuses_a_linked_state_folder(tmp_path, fakes):
    out, config, outside = _linked_state(tmp_path)
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert result.exit_code == 3, result.output  # an unsafe atlas
    assert f".atlas/shards/{config} is a symbolic link" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in outside.iterdir()) == ["00000.json"]
    assert (outside / "00000.json").read_text() == "precious\n"


def test_verify_reports_a_linked_state_folder(tmp_path, fakes):
    out, config, _ = _linked_state(tmp_path)
    result = cli(["verify", str(out)])
    assert result.exit_code == 3 and f".atlas/shards/{config} is a symbolic link" in result.output


def test_the_layout_never_follows_a_state_link(tmp_path):
    root = tmp_path / "atlas"
    (root / ".atlas").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / ".atlas" / "shards").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeStateError, match="never followed"):
        AtlasLayout(root).marker_path("senses", 0)
