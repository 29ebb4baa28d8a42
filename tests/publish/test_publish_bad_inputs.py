"""`atlas publish` inputs that once gave tracebacks: an unreachable Hub (dry runs too) and `--to` below a
file. Each gets one line with the way out, exit 2, and leaves the atlas and the filesystem as they were."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from atlas_build.cli import main

from .helpers import tree_state


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_unreachable_hub_is_one_line(atlas_v1, monkeypatch, dry_run):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = tree_state(atlas_v1)
    args = ["publish", str(atlas_v1), "--version", "0.1.0", "--repo-id", "test-org/atlas"]
    result = CliRunner().invoke(main, args + (["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "cannot reach the Hub for test-org/atlas" in message and "--to PATH" in message
    assert ("a dry run" in message) == dry_run
    assert tree_state(atlas_v1) == before


def test_to_below_a_file_is_refused(atlas_v1, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = tree_state(tmp_path)
    target = tmp_path / "notes.txt" / "releases"
    result = CliRunner().invoke(main, ["publish", str(atlas_v1), "--version", "0.1.0", "--to", str(target)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: --to {target} lies below {tmp_path / 'notes.txt'}, which is a file: pass a folder of releases"
    )
    assert tree_state(tmp_path) == before
