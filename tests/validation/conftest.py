"""Fixtures of the validation tests: the clean SYNTHETIC atlas (built once per session), editable copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from validation_fixtures import AtlasEditor, build_clean_atlas


@pytest.fixture(scope="session")
def clean_atlas_template(tmp_path_factory) -> Path:
    """The clean atlas, built once per session. Read-only: tests break copies of it (`atlas_editor`)."""
    base = tmp_path_factory.mktemp("validation-atlas")
    return build_clean_atlas(base / "atlas", base / "tokenizer")


@pytest.fixture
def atlas_editor(clean_atlas_template, tmp_path) -> AtlasEditor:
    """An editor over a private copy of the clean atlas."""
    dest = tmp_path / "atlas"
    shutil.copytree(clean_atlas_template, dest)
    return AtlasEditor(dest)
