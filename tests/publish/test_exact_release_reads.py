"""A published release read twice, before and after a new release with the same row counts took its place in
the reader's folder (`snapshot_download(local_dir=...)` of the next version, say), through one datasets
cache: `atlas metrics` and the release's own `scripts/reproduce_metrics.py` each give that release's numbers.

SYNTHETIC atlases with random routing: these test the reading, not findings.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys

import numpy as np
import pytest

import tests.metrics.test_exact_reads as metrics_tests
from atlas_build.publish import publish_local

from .helpers import add_metrics, cached_validation


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory):
    """v0.1.0 and v0.2.0 of one atlas whose routing changed between them (same rows, same card sizes)."""
    base = tmp_path_factory.mktemp("exact-releases")
    v1 = metrics_tests.write_synthetic_atlas(base / "v1" / "atlas", routing_fn=metrics_tests.relabelled(0))
    v2 = metrics_tests.twin_of(v1, base / "v2" / "atlas")
    releases = base / "releases"
    for root, version in ((v1, "0.1.0"), (v2, "0.2.0")):
        add_metrics(root)
        publish_local(root, version, releases, validate=cached_validation, log=lambda *_: None)
    return releases


def _reproduce(release, out, capsys) -> dict:
    """Run the release's companion script with --check (its own bundled metric code); the metrics it wrote."""
    bundled = [m for m in sys.modules if m == "atlas_build" or m.startswith("atlas_build.")]
    saved = {m: sys.modules.pop(m) for m in bundled}  # the script must import the release's copy
    path = list(sys.path)
    try:
        namespace = runpy.run_path(str(release / "scripts" / "reproduce_metrics.py"), run_name="reproduce")
        code = namespace["main"](["--check", "--out", str(out)])
    finally:
        for m in [m for m in sys.modules if m == "atlas_build" or m.startswith("atlas_build.")]:
            del sys.modules[m]
        sys.modules.update(saved)
        sys.path[:] = path
    assert code == 0, capsys.readouterr().out
    return json.loads((out / "metrics.json").read_text())


def test_a_release_read_twice_around_a_newer_one_gives_its_own_numbers(two_releases, tmp_path, capsys):
    assert metrics_tests.card_info(two_releases / "v0.1.0") == metrics_tests.card_info(
        two_releases / "v0.2.0"
    )
    local, cache = tmp_path / "downloads" / "atlas", tmp_path / "cache"
    seen = {}
    for n, tag in enumerate(("v0.1.0", "v0.2.0", "v0.1.0")):
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(two_releases / tag, local)
        metrics = metrics_tests.metrics_of(local, cache)
        metrics_tests.assert_own_numbers(metrics, local)
        published = json.loads((two_releases / tag / "metrics" / "metrics.json").read_text())
        load = np.array(metrics["models"][metrics_tests.SLUG]["experts"]["load"])
        assert np.allclose(load, published["models"][metrics_tests.SLUG]["experts"]["load"])
        reproduced = _reproduce(local, tmp_path / f"reproduced-{n}", capsys)
        metrics_tests.assert_own_numbers(reproduced, local)
        seen.setdefault(tag, load)
    assert not np.allclose(seen["v0.1.0"], seen["v0.2.0"])
