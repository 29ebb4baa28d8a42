"""A release's `scripts/` recompute the headline numbers with only datasets, scipy and matplotlib: the
script runs in a Python where `atlas_build` is not importable, on the metric code the release carries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from atlas_build.metrics import MetricsOptions, run_metrics
from atlas_build.metrics.provenance.bundle import BUNDLE_DIR, metric_modules, write_bundle
from dataset_cards.render import render_template
from dataset_cards.synthetic import write_synthetic_atlas

OPTIONS = {"target": "last", "min_count": 5, "n_bootstrap": 200, "n_permutations": 49, "seed": 3}


def test_bundle_holds_only_the_metrics_and_the_ground_floor():
    modules = set(metric_modules())
    assert {
        "atlas_build.metrics.compute",
        "atlas_build.metrics.controls.regression",
        "atlas_build.atlas.schema",
    } <= modules
    allowed = ("atlas_build.metrics", "atlas_build.atlas")
    assert all(m == "atlas_build" or m.startswith(allowed) for m in modules), modules


@pytest.fixture
def release(tmp_path, hf_cache):
    """A release-shaped folder: the atlas, its metrics/, and scripts/ as the publisher writes them."""
    root = write_synthetic_atlas(tmp_path / "release", n_lemmas=20, n_experts=16, n_layers=3, top_k=2, seed=4)
    run_metrics(root, root / "metrics", options=MetricsOptions(**OPTIONS), cache_dir=hf_cache)
    values = {
        "version": "1.2.3",
        "tag": "v1.2.3",
        "hub_id": None,
        "local_path": str(root),
        "options": {**OPTIONS, "confidence": 0.95},
        "cli_options": "",
        "has_metrics": True,
        "random_init": ["synthetic-moe"],
    }
    scripts = root / "scripts"
    scripts.mkdir()
    (scripts / "reproduce_metrics.py").write_text(render_template("reproduce_metrics.py.jinja", **values))
    (scripts / "README.md").write_text(render_template("scripts_README.md.jinja", **values))
    write_bundle(scripts, code_version="1.2.3+test")
    return root


# Only the interpreter's own site-packages (datasets, scipy, matplotlib, ...): `-S` skips the .pth files,
# among them the editable install of routing-atlas, and `-I` drops PYTHONPATH and the script's folder.
RUNNER = textwrap.dedent(
    """
    import importlib.util, runpy, sys
    sys.path.append({site!r})
    assert importlib.util.find_spec("atlas_build") is None, "atlas_build must not be importable here"
    sys.argv = ["reproduce_metrics.py", *{args!r}]
    try:
        runpy.run_path({script!r}, run_name="__main__")
    finally:
        print("atlas_build from", sys.modules["atlas_build"].__file__ if "atlas_build" in sys.modules else None)
    """
)


def run_release_script(release, tmp_path, *args):
    site = sysconfig.get_paths()["purelib"]
    code = RUNNER.format(site=site, args=list(args), script=str(release / "scripts" / "reproduce_metrics.py"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )


def test_release_script_recomputes_the_headline_numbers_without_atlas_build(release, tmp_path):
    out = tmp_path / "reproduced"
    proc = run_release_script(release, tmp_path, "--out", str(out), "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "headline numbers match the published metrics of v1.2.3" in proc.stdout
    assert f"scripts/{BUNDLE_DIR}/atlas_build/__init__.py" in proc.stdout.replace(os.sep, "/")
    recomputed = json.loads((out / "metrics.json").read_text())
    assert recomputed["provenance"]["code_version"] == "1.2.3+test"
    assert recomputed["provenance"]["verified"] is True
    assert set(recomputed["models"]["synthetic-moe"]["sense_pairs"]["controls"]) >= {"context_words", "all"}


def test_release_script_check_fails_on_a_changed_number(release, tmp_path):
    published = release / "metrics" / "metrics.json"
    metrics = json.loads(published.read_text())
    metrics["models"]["synthetic-moe"]["sense_pairs"]["controls"]["context_words"]["layer_mean"]["delta"][
        "estimate"
    ] += 0.5
    published.write_text(json.dumps(metrics))
    proc = run_release_script(release, tmp_path, "--out", str(tmp_path / "again"), "--check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "differs: synthetic-moe: delta_kappa.context_words.estimate" in proc.stdout


def test_release_script_refuses_altered_data(release, tmp_path):
    shard = next((release / "senses").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    copy = tmp_path / "backup.parquet"
    shutil.copy2(shard, copy)
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = run_release_script(release, tmp_path, "--out", str(tmp_path / "bad"))
    assert proc.returncode != 0
    assert "does not match its manifest.json" in proc.stdout + proc.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()
