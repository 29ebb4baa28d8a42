"""The card as the Hub and `datasets` read it: one default config, source datasets and sub-tasks, the sections a
Hub reviewer looks for, load snippets that work where the card is (relative locally, repo id + revision when
published). The atlas is SYNTHETIC (random-init model `synthetic-moe`).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from atlas_build.atlas.manifest import Manifest
from dataset_cards.render import CardContext, default_config, render_card
from dataset_cards.synthetic import write_synthetic_atlas

from .test_card import HUB_KEYS, body

# The sections of huggingface_hub's dataset card template (datasetcard_template.md) a reviewer looks for.
REVIEWED_SECTIONS = (
    "### Curation Rationale",
    "#### Who are the source data producers?",
    "### Annotations",
    "#### Annotation process",
    "#### Who are the annotators?",
    "#### Personal and Sensitive Information",
    "## Bias, Risks, and Limitations",
    "## Dataset Card Authors",
    "## Dataset Card Contact",
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_atlas(tmp_path_factory.mktemp("hub-card") / "atlas", n_lemmas=12)


def test_card_metadata_validates_with_one_default_config(synthetic):
    card = DatasetCard(render_card(synthetic))
    data = card.data
    assert isinstance(data, DatasetCardData) and set(data.to_dict()) <= HUB_KEYS
    assert DatasetCardData(**data.to_dict()).to_yaml() == data.to_yaml()
    defaults = [c["config_name"] for c in data.configs if c.get("default")]
    assert defaults == ["senses"]
    # datasets' own reading of the `configs:` block: valid data_files, exactly one default.
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert set(configs) == set(Manifest.load(synthetic).configs())
    assert configs.get_default_config_name() == "senses"
    assert data.source_datasets == ["extended|wordnet", "original"]
    assert data.task_ids == ["semantic-similarity-classification"]
    assert set(data.task_categories) == {"text-classification", "token-classification"}


def test_load_dataset_without_a_config_name_returns_the_default_config(synthetic):
    default = datasets.load_dataset(str(synthetic), split="train")
    senses = datasets.load_dataset(str(synthetic), "senses", split="train")
    assert default.features == senses.features and default.to_list() == senses.to_list()
    assert len(default) == Manifest.load(synthetic).configs()["senses"]["rows"]


def test_default_config_prefers_senses_then_routing_never_models():
    assert default_config(["models", "routing-a", "senses"]) == "senses"
    assert default_config(["models", "texts", "routing-a", "routing-b"]) == "routing-a"
    assert default_config(["models", "texts"]) == "texts"
    assert default_config([]) is None


def test_a_local_card_loads_by_relative_path_and_names_no_build_machine_path(synthetic):
    text = render_card(synthetic)
    assert str(synthetic.resolve()) not in text and str(Path.home()) not in text
    assert 'default = load_dataset(".", split="train")' in text
    assert 'load_dataset(".", "senses", split="train")' in text
    data = DatasetCard(text).data
    assert all(not f["path"].startswith("/") for c in data.configs for f in c["data_files"])


def test_a_published_card_loads_by_repo_id_and_revision(synthetic):
    context = CardContext(repo_ref="org/atlas", revision="v1.0.0", version="1.0.0", hub_id="org/atlas")
    text = render_card(synthetic, context=context)
    assert 'default = load_dataset("org/atlas", split="train", revision="v1.0.0")' in text
    assert 'load_dataset("org/atlas", "senses", split="train", revision="v1.0.0")' in text
    assert "https://huggingface.co/datasets/org/atlas" in body(text)
    assert 'load_dataset("."' not in text


def test_reviewed_sections_and_the_repository_are_on_the_card(synthetic):
    text = body(render_card(synthetic))
    positions = [text.find(heading + "\n") for heading in REVIEWED_SECTIONS]
    assert -1 not in positions, [h for h, p in zip(REVIEWED_SECTIONS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert "WordNet's lexicographers labelled the senses" in text
    assert "- **Repository:** " in text
