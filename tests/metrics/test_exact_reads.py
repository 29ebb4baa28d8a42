"""Exact reads: the metrics compute on the rows of the files they verified, never on rows `datasets` cached
for another atlas of the same folder name, or for this folder before it was rebuilt; a cache whose rows were
altered is refused in one line. The atlases are SYNTHETIC (random routing): these test the reading, not
findings.

Every number is checked against an independent computation from the Parquet files, read here with pyarrow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.rows import FIELD, check_rows, column_fingerprints, exact_cache_dir, file_fingerprints
from atlas_build.atlas.synthetic import random_routing
from atlas_build.commands.metrics import command
from atlas_build.metrics import MetricsOptions, compute_metrics
from atlas_build.metrics.provenance.source import AtlasSource, RowsError
from atlas_build.metrics.report.markdown import to_json
from dataset_cards.synthetic import write_synthetic_atlas

SLUG = "synthetic-moe"
ROUTING = f"routing-{SLUG}"
N_EXPERTS, N_LAYERS, TOP_K = 32, 4, 4
SMALL = {"n_bootstrap": 20, "n_permutations": 9}


def relabelled(shift: int):
    """Random routing with every expert id shifted by `shift` (mod N): other routing, same Parquet sizes."""

    def routing(senses, counts, spans, is_target, rng):
        experts, weights = random_routing(rng, int(counts.sum()), N_LAYERS, N_EXPERTS, TOP_K)
        return (experts + shift) % N_EXPERTS, weights

    return routing


def card_info(root: Path) -> list:
    return DatasetCard.load(root / "README.md").data.to_dict()["dataset_info"]


def twin_of(reference: Path, root: Path) -> Path:
    """An atlas at `root` with other routing than `reference` but the same card metadata (split sizes and
    bytes), the case `datasets` keys to one cache entry: ids relabelled by the first shift that keeps the
    compressed size."""
    for shift in range(1, N_EXPERTS):
        if root.exists():
            shutil.rmtree(root)
        write_synthetic_atlas(root, routing_fn=relabelled(shift))
        if card_info(root) == card_info(reference):
            return root
    raise AssertionError("no relabelling kept the Parquet sizes: the test cannot build its twin atlas")


def expert_load(root: Path) -> np.ndarray:
    """Load share per (layer, expert) = slots(e) / (T k), from the Parquet files (float64, independent)."""
    manifest = json.loads((root / "manifest.json").read_text())
    files = sorted(rel for rel, meta in manifest["files"].items() if meta["config"] == ROUTING)
    experts = pa.concat_tables(pq.read_table(root / rel, columns=["experts"]) for rel in files)
    ids = np.array(experts.column("experts").to_pylist(), dtype=np.int64)  # [T, L, k]
    load = np.stack([np.bincount(ids[:, layer].ravel(), minlength=N_EXPERTS) for layer in range(N_LAYERS)])
    return load / (ids.shape[0] * TOP_K)


def metrics_of(root: Path, cache: Path) -> dict:
    result = compute_metrics(str(root), options=MetricsOptions(**SMALL), cache_dir=cache)
    return to_json(result.metrics)


def assert_own_numbers(metrics: dict, root: Path) -> None:
    got = np.array(metrics["models"][SLUG]["experts"]["load"], dtype=np.float64)
    np.testing.assert_allclose(got, expert_load(root), rtol=1e-5, atol=1e-6)
    assert metrics["provenance"]["rows_checked"][ROUTING].startswith("rows checked against manifest.json")


@pytest.fixture
def runs(tmp_path):
    """`runs/a/atlas` and `runs/b/atlas`: same folder name, same card metadata, different routing."""
    a = write_synthetic_atlas(tmp_path / "runs" / "a" / "atlas", routing_fn=relabelled(0))
    b = twin_of(a, tmp_path / "runs" / "b" / "atlas")
    assert not np.allclose(expert_load(a), expert_load(b))
    return a, b


def test_plain_load_dataset_serves_the_other_atlas_rows(runs, tmp_path):
    """The hazard itself (datasets behaviour): one cache, two folders called `atlas`, the second load
    returns the first atlas's rows. If this ever fails, datasets keys its cache by content itself."""
    a, b = runs
    cache = tmp_path / "plain-cache"
    datasets.load_dataset(str(a), ROUTING, split="train", cache_dir=str(cache))
    served = datasets.load_dataset(str(b), ROUTING, split="train", cache_dir=str(cache)).data.table
    files_b = pq.read_table(next((b / ROUTING).glob("*.parquet")))
    files_a = pq.read_table(next((a / ROUTING).glob("*.parquet")))
    assert served.column("experts").equals(files_a.column("experts"))
    assert not served.column("experts").equals(files_b.column("experts"))


def test_two_atlases_of_one_folder_name_give_their_own_numbers(runs, tmp_path):
    a, b = runs
    cache = tmp_path / "cache"
    for root in (a, b, a):
        assert_own_numbers(metrics_of(root, cache), root)


def test_routing_rows_read_are_the_files_rows(runs, tmp_path):
    a, b = runs
    cache = tmp_path / "cache"
    for root in (a, b):
        table = AtlasSource(root, cache_dir=cache).table(ROUTING)
        files = pq.read_table(next((root / ROUTING).glob("*.parquet")))
        for name in table.column_names:
            assert table.column(name).to_pylist() == files.column(name).to_pylist(), name


@pytest.mark.parametrize("rebuild", ["another seed", "same sizes"])
def test_a_folder_rebuilt_in_place_gives_the_new_numbers(tmp_path, rebuild):
    root, cache = tmp_path / "atlas", tmp_path / "cache"
    write_synthetic_atlas(root, routing_fn=relabelled(0))
    before = expert_load(root)
    assert_own_numbers(metrics_of(root, cache), root)
    if rebuild == "another seed":
        shutil.rmtree(root)
        write_synthetic_atlas(root, seed=1)
    else:
        reference = tmp_path / "reference" / "atlas"
        shutil.copytree(root, reference)
        twin_of(reference, root)
    assert not np.allclose(before, expert_load(root))
    assert_own_numbers(metrics_of(root, cache), root)


def _tamper_cache(cache: Path) -> list[Path]:
    """Rewrite the Arrow cache files of the routing config under `cache` with every expert id shifted: same
    row count, same schema, other values. Returns the files."""
    paths = sorted(p for p in cache.rglob("*.arrow") if f"/{ROUTING}" in p.parent.as_posix())
    assert paths, f"no cached rows of {ROUTING} under {cache}"
    for path in paths:
        with pa.OSFile(str(path)) as source:  # into memory: the file is replaced below
            table = pa.ipc.open_stream(source).read_all()
        field = table.schema.field("experts")
        ids = np.array(table.column("experts").to_pylist(), dtype=np.int64)
        experts = pa.array(((ids + 1) % N_EXPERTS).tolist(), type=field.type)
        table = table.set_column(table.schema.get_field_index("experts"), field, experts)
        tmp = path.with_name(path.name + ".tampered")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        tmp.replace(path)  # a new file: maps of the old one (earlier loads) stay valid
    return paths


def test_a_tampered_cache_is_refused_in_one_line(tmp_path):
    root, cache = write_synthetic_atlas(tmp_path / "atlas"), tmp_path / "cache"
    metrics_of(root, cache)
    tampered = _tamper_cache(cache)
    with pytest.raises(RowsError) as error:
        metrics_of(root, cache)
    message = str(error.value)
    assert "\n" not in message and repr(ROUTING) in message and "experts" in message
    assert any(str(path.parent) in message for path in tampered) and "fresh --cache-dir" in message


def test_the_cli_refuses_a_tampered_cache_and_writes_nothing(tmp_path):
    root, cache, out = write_synthetic_atlas(tmp_path / "atlas"), tmp_path / "cache", tmp_path / "report"
    args = [str(root), "--bootstrap", "20", "--permutations", "9", "--cache-dir", str(cache)]
    assert CliRunner().invoke(command, [*args, "--out", str(tmp_path / "first")]).exit_code == 0
    _tamper_cache(cache)
    result = CliRunner().invoke(command, [*args, "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "delete" in result.output
    assert not out.exists()


def _strip_fingerprints(root: Path) -> None:
    """Make `root` an atlas written before rows fingerprints (its manifest entries lack them)."""
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    for meta in manifest["files"].values():
        meta.pop(FIELD)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def assert_own_numbers_unfingerprinted(metrics: dict, root: Path) -> None:
    got = np.array(metrics["models"][SLUG]["experts"]["load"], dtype=np.float64)
    np.testing.assert_allclose(got, expert_load(root), rtol=1e-5, atol=1e-6)
    assert "re-read by pyarrow" in metrics["provenance"]["rows_checked"][ROUTING]


def test_an_older_atlas_is_checked_against_its_files_reread(runs, tmp_path):
    a, b = runs
    for root in (a, b):
        _strip_fingerprints(root)
    cache = tmp_path / "cache"
    for root in (a, b):
        assert_own_numbers_unfingerprinted(metrics_of(root, cache), root)
    files_a = {rel: m["sha256"] for rel, m in Manifest.raw(a)["files"].items() if m["config"] == ROUTING}
    _tamper_cache(exact_cache_dir(cache, files_a))
    with pytest.raises(RowsError, match=ROUTING):
        metrics_of(a, cache)
    assert_own_numbers_unfingerprinted(metrics_of(b, cache), b)


def test_fingerprints_ignore_chunking_and_encoding_but_not_values(tmp_path):
    root = write_synthetic_atlas(tmp_path / "atlas")
    manifest = json.loads((root / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        table = pq.read_table(root / rel)
        recorded = meta[FIELD]["columns"]
        assert file_fingerprints(root / rel) == recorded
        rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=7))
        assert column_fingerprints(rechunked) == recorded
        assert check_rows(rechunked, meta["config"], {rel: meta}, where="x", way_out="y")
    routing = next(rel for rel, meta in manifest["files"].items() if meta["config"] == ROUTING)
    table = pq.read_table(root / routing)
    flipped = table.set_column(
        table.schema.get_field_index("is_target"), "is_target", pa.compute.invert(table.column("is_target"))
    )
    changed = column_fingerprints(flipped)
    assert changed["is_target"] != manifest["files"][routing][FIELD]["columns"]["is_target"]
    assert changed["experts"] == manifest["files"][routing][FIELD]["columns"]["experts"]


def test_calibrations_of_two_atlases_measure_their_own_planted_copies(runs, tmp_path):
    """`atlas metrics calibrate` writes its planted copies to `OUT/plant-<name>` with the source's card: two
    calibrations make folders of one name and one card. Each reports the numbers of its own copy (computed
    again here through a cache of its own)."""
    from atlas_build.metrics.calibration.plants import PlantOptions, calibrate

    cache = tmp_path / "cache"
    for n, root in enumerate(runs):
        out = tmp_path / f"calibration-{n}"
        report = calibrate(
            root,
            out,
            plants=("sense",),
            plant_options=PlantOptions(seed=n),
            metrics_options=MetricsOptions(**SMALL),
            cache_dir=cache,
        )
        planted = out / "plant-sense"
        alone = compute_metrics(
            str(planted), options=MetricsOptions(**SMALL), cache_dir=tmp_path / f"alone-{n}"
        )
        delta = to_json(alone.metrics)["models"][SLUG]["sense_pairs"]["delta"]
        assert report["plants"]["sense"]["raw"]["delta"] == delta
