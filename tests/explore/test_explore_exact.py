"""The explorer shows the files its manifest lists: two atlases of one folder name each show their own routing
(compared with the Parquet files read here), and a routing file changed after the manifest is refused in one
line. SYNTHETIC atlases (random routing): these test the reading, not findings."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from atlas_build.explore.read import ExploreError, read_atlas
from dataset_cards.synthetic import write_synthetic_atlas

ROUTING = "routing-synthetic-moe"


def target_experts(root) -> np.ndarray:
    """The senses' target tokens' experts, from the Parquet file (sorted for comparison)."""
    table = pq.read_table(next((root / ROUTING).glob("*.parquet")))
    table = table.filter(pc.and_(pc.equal(table["corpus"], "senses"), table["is_target"]))
    return np.sort(np.array(table.column("experts").to_pylist()).reshape(table.num_rows, -1), axis=0)


def test_two_atlases_of_one_folder_name_show_their_own_routing(tmp_path):
    roots = [write_synthetic_atlas(tmp_path / run / "atlas", seed=seed) for run, seed in (("a", 0), ("b", 1))]
    shown = []
    for root in roots:
        experts = read_atlas(root).routing["synthetic-moe"].experts
        shown.append(np.sort(experts.reshape(experts.shape[0], -1), axis=0))
        np.testing.assert_array_equal(shown[-1], target_experts(root))
    assert not np.array_equal(shown[0], shown[1])


def test_a_file_changed_after_the_manifest_is_refused_in_one_line(tmp_path):
    root = write_synthetic_atlas(tmp_path / "atlas")
    path = next((root / ROUTING).glob("*.parquet"))
    table = pq.read_table(path)
    flipped = pc.invert(table.column("is_target"))
    pq.write_table(table.set_column(table.schema.get_field_index("is_target"), "is_target", flipped), path)
    with pytest.raises(ExploreError) as error:
        read_atlas(root)
    message = str(error.value)
    assert (
        "\n" not in message and repr(ROUTING) in message and "sha256" in message and "atlas verify" in message
    )
