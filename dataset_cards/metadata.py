"""The card's YAML metadata, as the Hub and `datasets` read it: licence, language, tasks, sources, size, tags,
`configs:` (one of them the default) and `dataset_info` (features and split sizes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from huggingface_hub import DatasetCardData

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS
from dataset_cards.reading import custom_corpora_kinds, is_synthetic
from dataset_cards.vocabulary import LICENSE_FILE, PRETTY_NAME, RANDOM_INIT

SIZE_CATEGORIES = (
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
)


def size_category(n_rows: int) -> str:
    """The Hub's size bucket for a number of rows (of the largest config: a routing config's tokens)."""
    for limit, name in SIZE_CATEGORIES:
        if n_rows < limit:
            return name
    return "n>1T"


def default_config(configs: list[str]) -> str | None:
    """The config `load_dataset(repo)` opens without a config name, and the Hub's viewer first: `senses` (what
    every routing row points at), else the first routing config, else the first config that is not `models`."""
    if SENSES in configs:
        return SENSES
    routing = [name for name in configs if name.startswith(ROUTING_PREFIX)]
    others = [name for name in configs if name != MODELS]
    return (routing or others or configs or [None])[0]


def source_datasets(manifest: Manifest) -> list[str]:
    """The Hub's `source_datasets`: the texts extend WordNet (and WiC, SWORDS when the build used them); the
    routing rows are this dataset's own (`original`)."""
    configs = manifest.configs()
    kinds = set(custom_corpora_kinds(manifest))
    out = []
    if any(name in configs for name in (SENSES, SENSE_PAIRS, SUBSTITUTIONS)):
        out.append("extended|wordnet")
    out += [f"extended|{kind}" for kind in ("wic", "swords") if kind in kinds]
    if any(name.startswith(ROUTING_PREFIX) for name in configs):
        out.append("original")
    return out


def dataset_infos(root: Path, manifest: Manifest, schemas: dict[str, Any]):
    """`datasets.DatasetInfosDict`: the features (from the Parquet schemas) and split sizes of every config.

    `load_dataset` reads these from the card and checks the split sizes against the files it reads.
    """
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    infos = {}
    for config, info in manifest.configs().items():
        if config not in schemas:
            continue
        # Uncompressed column-chunk sizes: the closest footer figure to the in-memory (Arrow) size.
        num_bytes = 0
        for rel in info["files"]:
            meta = pq.ParquetFile(Path(root) / rel).metadata
            num_bytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=num_bytes, num_examples=info["rows"]))
        infos[config] = DatasetInfo(
            features=Features.from_arrow_schema(schemas[config]),
            splits=splits,
            download_size=info["bytes"],
            dataset_size=num_bytes,
            config_name=config,
        )
    return DatasetInfosDict(infos)


def card_data(
    root: Path, manifest: Manifest, models: list[dict[str, Any]], schemas: dict[str, Any]
) -> DatasetCardData:
    """The card's YAML metadata: licence, language, tasks, size, tags, `configs:` and `dataset_info`."""
    layout = AtlasLayout(root)
    configs = manifest.configs()
    largest = max((c["rows"] for c in configs.values()), default=0)
    tags = [
        "mixture-of-experts",
        "moe",
        "routing",
        "interpretability",
        "wordnet",
        "word-sense",
        "word-sense-disambiguation",
    ]
    if any(m["random_init"] for m in models):
        tags.append(RANDOM_INIT)
    if any(is_synthetic(m) for m in models) or manifest.corpus_counts.get("synthetic"):
        tags.append("synthetic")
    default = default_config(list(configs))
    data = DatasetCardData(
        language=["en"],
        license="other",
        license_name="wordnet-3.0-and-model-licenses",
        license_link=LICENSE_FILE,
        # WordNet's lexicographers (senses), the routers (routing), SWORDS' crowd when it is in.
        annotations_creators=["expert-generated", "machine-generated"]
        + (["crowdsourced"] if "swords" in custom_corpora_kinds(manifest) else []),
        language_creators=["expert-generated"],
        multilinguality=["monolingual"],
        pretty_name=PRETTY_NAME,
        size_categories=[size_category(largest)],
        source_datasets=source_datasets(manifest),
        task_categories=["text-classification", "token-classification"],
        # sense-pairs (and WiC's pairs): same sense or not, the Hub's sub-task for WiC-like pairs.
        task_ids=["semantic-similarity-classification"],
        tags=tags,
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": layout.data_glob(name)}],
                **({"default": True} if name == default else {}),
            }
            for name in configs
        ],
    )
    dataset_infos(root, manifest, schemas).to_dataset_card_data(data)
    return data
