"""Fixtures of the publishing tests: two SYNTHETIC atlas versions (random-init models, not findings) and
their releases. See `helpers` for what differs between v1 and v2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dataset_cards.synthetic import write_synthetic_atlas

from .helpers import SECOND_MODEL, V1_LEMMAS, V2_LEMMAS, add_metrics, add_synthetic_model, cached_validation

# Under `.venv/bin/pytest` the repository root is not on sys.path but `tests/` is, so the folder
# `tests/validation/` would be imported as a namespace package named `validation` in place of the real one
# (the editable install's finder comes after it). A regular package on sys.path wins over a namespace folder.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
if "validation" in sys.modules and getattr(sys.modules["validation"], "__file__", None) is None:
    del sys.modules["validation"]


@pytest.fixture(scope="session")
def atlas_v1(tmp_path_factory) -> Path:
    """SYNTHETIC atlas, 20 lemmas, one random-init model, with metrics. Read-only."""
    root = write_synthetic_atlas(tmp_path_factory.mktemp("v1") / "atlas", n_lemmas=V1_LEMMAS)
    add_metrics(root)
    return root


@pytest.fixture(scope="session")
def atlas_v2(tmp_path_factory) -> Path:
    """SYNTHETIC atlas, 25 lemmas, two random-init models, with metrics. Read-only."""
    root = write_synthetic_atlas(tmp_path_factory.mktemp("v2") / "atlas", n_lemmas=V2_LEMMAS)
    add_synthetic_model(root, SECOND_MODEL)
    add_metrics(root)
    return root


@pytest.fixture(scope="session")
def releases(tmp_path_factory, atlas_v1, atlas_v2) -> Path:
    """`atlas publish` of v0.1.0 (atlas_v1) then v0.2.0 (atlas_v2) to one folder.

    Each is really validated (`cached_validation` validates a manifest the first time it sees it), and the
    reports are kept for the tests that publish the same atlases again.
    """
    from atlas_build.publish import publish_local

    path = tmp_path_factory.mktemp("releases") / "atlas-releases"
    publish_local(atlas_v1, "0.1.0", path, validate=cached_validation, log=lambda *_: None)
    publish_local(atlas_v2, "0.2.0", path, validate=cached_validation, log=lambda *_: None)
    return path
