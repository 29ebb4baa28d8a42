"""A complete SYNTHETIC atlas with its card, for tests and benches: the ground floor's synthetic data
(`atlas_build.atlas.synthetic.write_synthetic_data`, which writes no card) plus `write_card`."""

from __future__ import annotations

from pathlib import Path

from atlas_build.atlas.synthetic import write_synthetic_data
from dataset_cards.render import write_card


def write_synthetic_atlas(root: Path, **options) -> Path:
    """`write_synthetic_data(root, **options)` (see there for the options), then the dataset card."""
    root = write_synthetic_data(root, **options)
    write_card(root)
    return root
