"""Render `DIR/README.md` (the dataset card) from the atlas itself: manifest, `models` rows, counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS, TRACES

TEMPLATE = Path(__file__).with_name("template.md")

CONFIG_DESCRIPTIONS = {
    SENSES: "a WordNet 3.0 example sentence of a polysemous lemma, with the lemma's span",
    SENSE_PAIRS: "two examples of one lemma, same sense or different sense (WiC-like)",
    SUBSTITUTIONS: "an example with its target replaced by a synonym or an other-sense lemma",
    TRACES: "a reasoning trace: formatted text and its segment spans",
    MODELS: "a routed model: architecture, routing hyper-parameters, sizes, engine",
}
ROUTING_DESCRIPTION = "a token of a routed text: top-k experts and gate weights for every MoE layer"

COLUMN_DOCS = {
    "example_id": "id of the example (`senses`)",
    "lemma": "WordNet lemma (`_` joins multiword lemmas)",
    "pos": "part of speech: n, v, a (satellites included), r",
    "synset": "WordNet synset name, e.g. `bank.n.01`",
    "sense_key": "WordNet sense key of the lemma in this synset",
    "sense_number": "rank of the synset among the lemma's synsets (1 = most frequent in WordNet)",
    "lemma_n_senses": "number of synsets of the lemma in this part of speech",
    "lexname": "WordNet lexicographer file, e.g. `noun.artifact`",
    "gloss": "definition of the synset",
    "text": "the sentence (or formatted trace) that was routed",
    "target_start": "character offset of the target word (inclusive)",
    "target_end": "character offset of the target word (exclusive)",
    "target_form": "the target as it appears in the text",
    "source": "where the row comes from",
    "pair_id": "id of the pair",
    "example_a": "`senses.example_id` of the first example",
    "example_b": "`senses.example_id` of the second example",
    "synset_a": "synset of `example_a`",
    "synset_b": "synset of `example_b`",
    "same_sense": "whether both examples use the lemma in the same synset",
    "substitution_id": "id of the substituted sentence",
    "relation": "`synonym` (same synset) or `other-sense` (a lemma of another synset of the word)",
    "substitute": "the lemma put in place of the target",
    "substitute_synset": "synset the substitute was taken from",
    "trace_id": "id of the trace",
    "model_slug": "slug of the model; its routing is in `routing-<model_slug>`",
    "template": "`chat` (the model's chat template) or `plain`",
    "segments": "segment spans (prompt, think, answer) in `text`",
    "meta": "JSON metadata given with the trace",
    "model_id": "hub id, built-in name or local path of the model",
    "revision": "hub revision of the checkpoint, when known",
    "checkpoint_sha256": "sha256 over the checkpoint's config and weight files, when local",
    "architecture": "transformers architecture class",
    "model_type": "transformers model type",
    "router_adapter": "routing-atlas adapter that read the router",
    "num_hidden_layers": "decoder layers of the model",
    "moe_layers": "decoder layer index of each entry of `experts`/`weights`",
    "n_routed_experts": "routed experts per MoE layer (N)",
    "top_k": "experts chosen per token and layer (k)",
    "n_shared_experts": "always-on shared experts per MoE layer",
    "scoring_func": "router scoring: softmax or sigmoid",
    "topk_method": "expert selection: greedy, group-limited, or noaux_tc (bias-corrected, group-limited)",
    "n_group": "expert groups (group-limited routing)",
    "topk_group": "groups a token may use",
    "norm_topk_prob": "whether the top-k weights are renormalised to sum to 1 (before scaling)",
    "routed_scaling_factor": "factor applied to the routed weights",
    "total_params": "parameters of the model",
    "active_params": "parameters used per token (dense + shared + top-k routed)",
    "dtype": "compute dtype of the run",
    "engine": "engine that ran the model: hf (transformers) or vllm",
    "weights_dtype": "storage dtype of `weights`; null when the engine gives ids only",
    "tokenizer": "where the tokenizer was loaded from",
    "add_bos_token": "whether the tokenizer prepends its begin-of-sentence token",
    "random_init": "**true: random weights, routing carries no finding**",
    "seed": "seed of the random-init weights",
    "source_id": "id of the routed text in `senses`, `substitutions` or `traces`",
    "corpus": "config that holds the routed text",
    "token_index": "position of the token in the text, 0..n-1",
    "token_id": "token id under the model's tokenizer",
    "token": "token string under the model's tokenizer",
    "char_start": "character offset where the token starts in the text (-1: special token)",
    "char_end": "character offset where the token ends (exclusive; -1: special token)",
    "is_target": "whether the token overlaps the target span",
    "segment": "trace segment of the token (prompt, think, answer); null outside traces",
    "marker": "reasoning marker the token belongs to; null if none",
    "experts": "[MoE layer][k] expert ids, highest gate weight first",
    "weights": "[MoE layer][k] gate weights the model multiplies the expert outputs by; null: ids-only engine",
}


def _models_rows(root: Path, manifest: Manifest) -> list[dict[str, Any]]:
    files = manifest.config_files(MODELS)
    rows: list[dict[str, Any]] = []
    for rel in files:
        rows.extend(pq.read_table(root / rel).to_pylist())
    for row in rows:
        row["n_moe_layers"] = len(row["moe_layers"])
    return sorted(rows, key=lambda r: r["model_slug"])


def _schema_tables(root: Path, manifest: Manifest) -> list[dict[str, Any]]:
    out = []
    for config in manifest.configs():
        first = manifest.config_files(config)[0]
        schema = pq.read_schema(root / first)
        columns = [
            {"name": f.name, "type": str(f.type), "meaning": COLUMN_DOCS.get(f.name, "")} for f in schema
        ]
        out.append({"name": config, "columns": columns})
    return out


def card_data(root: Path, manifest: Manifest, models: list[dict[str, Any]]) -> DatasetCardData:
    layout = AtlasLayout(root)
    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": layout.data_glob(name)}]}
        for name in manifest.configs()
    ]
    total_rows = sum(c["rows"] for c in manifest.configs().values())
    size = "n<1K" if total_rows < 1e3 else "1K<n<10K" if total_rows < 1e4 else "10K<n<100K"
    if total_rows >= 1e5:
        size = "100K<n<1M" if total_rows < 1e6 else "1M<n<10M" if total_rows < 1e7 else "10M<n<100M"
    return DatasetCardData(
        language=["en"],
        license="other",
        license_name="wordnet-3.0-and-model-licenses",
        license_details=(
            "Sense corpora: WordNet 3.0 license (Princeton University), which permits use, copying and "
            "distribution with the copyright notice. Routing data: subject to each model's license "
            "(see the Models section)."
        ),
        pretty_name="routing-atlas: MoE routing over WordNet senses",
        size_categories=[size],
        task_categories=["text-classification"],
        tags=["mixture-of-experts", "routing", "interpretability", "wordnet", "word-sense"],
        configs=configs,
    )


def render_card(root: Path, repo_ref: str | None = None) -> str:
    """The card's markdown for the atlas at `root` (`repo_ref`: what the load snippet names)."""
    root = Path(root)
    manifest = Manifest.load(root)
    models = _models_rows(root, manifest)
    data = card_data(root, manifest, models)
    configs = []
    for name, info in manifest.configs().items():
        description = (
            ROUTING_DESCRIPTION if name.startswith(ROUTING_PREFIX) else CONFIG_DESCRIPTIONS.get(name, "")
        )
        var = name.replace("-", "_")
        configs.append(
            {
                "name": name,
                "rows": info["rows"],
                "files": len(info["files"]),
                "description": description,
                "var": var,
            }
        )
    builds = [{"summary": b.get("summary", b.get("kind", ""))} for b in manifest.builds]
    random_init = [m["model_slug"] for m in models if m["random_init"]]
    card = DatasetCard.from_template(
        data,
        template_path=str(TEMPLATE),
        pretty_name=data.pretty_name,
        summary=(
            "For every token of WordNet-derived sense corpora (and reasoning traces, when present), and every "
            "MoE layer of each routed model: the top-k experts the router chose and their gate weights. Built "
            "to test whether Mixture-of-Experts routing is semantic or token-driven."
        ),
        random_init_models=random_init,
        configs=configs,
        repo_ref=repo_ref or str(root.resolve()),
        schemas=_schema_tables(root, manifest),
        models=models,
        corpus_counts=manifest.corpus_counts,
        corpus_notes=[],
        code_version=manifest.code_version,
        schema_version=manifest.schema_version,
        builds=builds,
    )
    return str(card)


def write_card(root: Path, repo_ref: str | None = None) -> Path:
    from atlas_build.atlas.writer import write_text_atomic

    path = AtlasLayout(root).card_path
    write_text_atomic(path, render_card(root, repo_ref))
    return path
