"""The card's fixed words: names, links, what each config and column is. Read by every part of the renderer."""

from __future__ import annotations

from atlas_build.atlas.schema import (
    INTERVENTIONS,
    JSONL_EXAMPLES,
    JSONL_PAIRS,
    MODELS,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    SWORDS_EXAMPLES,
    SWORDS_SUBSTITUTIONS,
    TEXTS,
    TRACES,
    WIC_EXAMPLES,
    WIC_PAIRS,
)
from dataset_cards.interventions import DESCRIPTION as INTERVENTIONS_DESCRIPTION

LICENSE_FILE = "LICENSE.md"
VALIDATION_JSON = "validation.json"
# `atlas metrics DIR --out DIR/metrics`: the convention the card and the publisher read.
METRICS_DIR = "metrics"
METRICS_JSON = "metrics.json"
METRICS_REPORT = "report.md"

PRETTY_NAME = "routing-atlas: MoE routing over WordNet senses"
PAPER_ARXIV = "2502.10928"
WORDNET_LICENSE_URL = "https://wordnet.princeton.edu/license-and-commercial-use"
CODE_LICENSE = "Apache-2.0"
RANDOM_INIT = "random-init"
# A local atlas's card loads it from its own folder; the project's page when no repository URL is installed.
LOCAL_REPO_REF = "."
PYPI_PAGE = "https://pypi.org/project/routing-atlas/"

SUMMARY = (
    "For every token of WordNet-derived sense corpora (and reasoning traces, when present), and every MoE "
    "layer of each routed model: the top-k experts the router chose and their gate weights. Built to test "
    "whether Mixture-of-Experts routing follows word senses or only token identity, as in *Probing Semantic "
    "Routing in Large Mixture-of-Expert Models* (Olson et al., Findings of EMNLP 2025, arXiv:2502.10928)."
)

CONFIG_DESCRIPTIONS = {
    SENSES: "a WordNet 3.0 example sentence of a polysemous lemma, with the lemma's span",
    SENSE_PAIRS: "two examples of one lemma, same sense or different sense (WiC-like)",
    SUBSTITUTIONS: "an example with its target replaced by a synonym or an other-sense lemma",
    TRACES: "a reasoning trace: formatted text and its segment spans",
    MODELS: "a routed model: architecture, routing hyper-parameters, sizes, engine",
    WIC_EXAMPLES: "a WiC sentence, with its target's span (two per WiC pair)",
    WIC_PAIRS: "a WiC pair: two sentences sharing a target, same sense or not (WiC's gold label)",
    SWORDS_EXAMPLES: "a SWORDS target in its context",
    SWORDS_SUBSTITUTIONS: "a SWORDS context with its target replaced by a human-rated substitute",
    JSONL_EXAMPLES: "a text of a JSONL probe set, with its target span and label when given",
    JSONL_PAIRS: "two examples of a JSONL probe set, same sense or not",
    TEXTS: "an unlabelled text, routed for corpus-wide statistics only",
    INTERVENTIONS: INTERVENTIONS_DESCRIPTION,
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
    "source": "where the row comes from (e.g. `wordnet-3.0:example`)",
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
    "random_init": "**true: random weights (random-init), routing carries no finding**",
    "seed": "seed of the random-init weights",
    "scores_top_m": "M of `atlas build --scores M` (score columns in the routing config); null: no scores stored",
    "router_input_layers": "decoder layers whose router inputs `router_inputs` holds (`--router-inputs`); null: none",
    "router_input_dim": "D of the stored router inputs (the hidden size when the full vector is kept)",
    "router_input_hidden_size": "width of the router's input before projection",
    "router_input_projection": "how the stored vectors were made: gaussian-jl-v1 (seeded JL) or identity",
    "router_input_seed": "seed of the projection matrix (numpy RandomState, float64)",
    "router_input_projection_sha256": "sha256 of the projection matrix's float64 bytes",
    "router_inputs": "[layer][D] float16 router input of the token at `models.router_input_layers`, projected",
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
    "label": "the corpus's own sense or group id of the target, when it gives one",
    "split": "the corpus's split (train, dev, test), when it has splits",
    "score": "share of the human labels that accept the substitute (SWORDS)",
    "n_labels": "number of human labels behind `score`",
    "text_id": "id of the text (`texts`)",
    "score_experts": "[MoE layer][M] (`--scores M`) the M experts of highest selection score (the score the "
    "router chooses on), highest first",
    "scores": "[MoE layer][M] (`--scores M`) those selection scores, float32: DeepSeek-V3/R1 and GLM-4 MoE "
    "sigmoid(logits) + e_score_correction_bias before the group mask; GPT-OSS the logits with the router "
    "bias; Llama 4 the raw logits; softmax routers the probability (see the model notes)",
}
