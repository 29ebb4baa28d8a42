"""The checks of the validation gate, by name, with the rule each one enforces.

A check is reported per config (`atlas` for atlas-wide ones). Most checks are one or more
great-expectations expectations over frames derived from the Parquet batches (`validation.corpora`,
`validation.routing`); `manifest-files`, `configs`, `schema` and `models-consistency` compare files and
schemas directly.
"""

from __future__ import annotations

# Atlas-wide and per-config checks, in report order.
CHECKS: dict[str, str] = {
    # ---- the directory ------------------------------------------------------------------------
    "manifest-files": "every manifest file exists with its sha256, byte size and row count; no data file "
    "is missing from the manifest",
    "configs": "models, a text config (senses, traces or a corpus of your own) and at least one routing-<slug> "
    "config hold data; no unknown config folders",
    "schema": "the Parquet schema of every data file equals the declared schema of its config "
    "(column names, order, types, nullability, routing schema metadata)",
    # ---- every config -------------------------------------------------------------------------
    "ids-unique": "the id column of the config is unique and never null (sense-pairs: also the "
    "(example_a, example_b) pair)",
    "value-sets": "categorical columns hold declared values; numeric columns lie in their ranges",
    # ---- corpora ------------------------------------------------------------------------------
    "target-span": "0 <= target_start < target_end <= len(text); senses: text[target_start:target_end] == "
    "target_form; the span is word-aligned and holds a form of the lemma (substitutions: of the substitute)",
    "references": "sense-pairs: both examples exist, differ, have the pair's lemma and pos, and the synsets "
    "match; substitutions: the base example exists with the same lemma and pos, and the relation agrees "
    "with the synsets; the user's corpora: pairs cite two distinct examples of their corpus with targets and the "
    "pair's lemma and pos, a substitution's text is its base text with the target replaced",
    "same-sense": "sense-pairs: same_sense == (synset_a == synset_b); wic-pairs, jsonl-pairs: same_sense == "
    "(label_a == label_b) where both examples carry a label",
    "segments": "traces: segment spans lie inside the text, in order, without overlap, with known names; "
    "meta is a JSON object or null",
    # ---- models -------------------------------------------------------------------------------
    "models-fields": "models rows: unique slugs, 1 <= top_k <= n_routed_experts, moe_layers strictly "
    "increasing inside [0, num_hidden_layers), known scoring/top-k methods and weight dtypes",
    "models-consistency": "every routing config has exactly one models row and vice versa; its file's "
    "[moe_layer][k] shape and expert id type agree with that row",
    # ---- routing ------------------------------------------------------------------------------
    "source-exists": "corpus is a text config (senses, substitutions, traces, or wic-examples, swords-examples, "
    "swords-substitutions, jsonl-examples, texts), and every source_id exists in that config",
    "corpus-coverage": "a model routed each text config whole or not at all (models of one atlas may route "
    "different corpora: the details name the ones it routed, which are the ones its metrics cover); traces "
    "are exempt (each model routes its own, formatted with its chat template)",
    "token-keys-unique": "(source_id, token_index) is unique",
    "token-index-contiguous": "the token indices of every text are exactly 0..n-1",
    "experts-top-k": "every token-layer holds exactly top_k distinct expert ids; the experts list has one "
    "entry per MoE layer and top_k entries each",
    "experts-in-range": "every expert id lies in [0, n_routed_experts)",
    "weights-null": "weights are null exactly when the models row's weights_dtype is null",
    "weights-finite-nonnegative": "every weight is finite and >= 0",
    "weights-sorted": "the weights of every token-layer are ordered highest first (ties allowed)",
    "weights-sum": "per token-layer, with norm_topk_prob the weights sum to routed_scaling_factor; without "
    "it (softmax) they sum to at most routed_scaling_factor, (sigmoid) none exceeds it; relative tolerance "
    "from the storage and compute dtypes",
    "char-offsets": "special tokens have char_start = char_end = -1; other tokens have "
    "0 <= char_start <= char_end <= len(text), and within a text neither offset ever goes backwards",
    "token-coverage": "senses/substitutions: the tokens' character spans cover every non-whitespace "
    "character of their text (a dropped first, middle or last token leaves text uncovered); traces are "
    "exempt (template markup becomes special tokens without offsets)",
    "target-tokens": "is_target is true exactly on the tokens with char_start >= 0 overlapping the target "
    "span (traces: never), and every text with a target span (senses, substitutions, the user's corpora) has at least one "
    "target token",
    "segment-labels": "segment and marker are null outside traces; trace segments have known names",
    "token-ids": "token ids are >= 0, and below the tokenizer's size when the tokenizer is available",
    "token-strings": "every token string equals tokenizer.convert_ids_to_tokens(token_id) (skipped when "
    "the tokenizer cannot be loaded)",
    "routing-not-degenerate": "no MoE layer where one expert is in the top-k of every token, none where "
    "every token's expert ids (or weights) are all zero",
    "scores-reproduce-experts": "with --scores: the model's selection rule (top-k; n_group / topk_group "
    "group limits) applied to the stored top-M selection scores gives back `experts` on every token-layer "
    "the M scores decide (undecided token-layers and exact ties are counted, not failed)",
    "router-inputs": "with --router-inputs: the models row's router_input_* fields are complete and "
    "consistent (MoE layers, 1 <= D <= hidden size), the projection regenerated from the recorded seed has "
    "the recorded sha256, and `router_inputs` is [layers][D] float16, never null, every value finite",
    "tokenization": "every corpus but traces: every routed text's token ids, token strings and character offsets "
    "equal a fresh tokenization of its text with the recorded tokenizer (loaded without remote code; "
    "skipped when it cannot be loaded)",
    "text-coverage": "every text of every corpus the model routed (its build records in manifest.json, and "
    "every corpus its rows name) has routing rows, as many as a fresh tokenization of its text gives when "
    "the tokenizer is loaded (traces: presence only)",
    # ---- what the atlas claims about itself ---------------------------------------------------
    "card-configs": "the card's YAML parses; its `configs:` name exactly the manifest's configs, each "
    "data_files glob matching exactly that config's files, and dataset_info's split sizes are the rows",
    "card-current": "the card rendered again from the atlas (with the context the card records) equals the "
    "shipped card, apart from its date and its validation section",
    "random-init-labels": "a model is random-init in its models row exactly when its build records, its "
    "checkpoint's own marker and the card (label, tag, warning, routing config description) say so",
    "manifest-derived": "manifest.json's `configs` section, corpus counts and each model's last build record "
    "(model, engine, dtype, weights dtype) equal what its file list and the data imply",
    "audit-records": "every `atlas audit` record names a routing config of the atlas and its counts give its "
    "verdict (a record of routing files that changed since is noted as stale)",
    "interventions-records": "interventions (`atlas intervene`): known interventions and outcomes, layers and "
    "experts of the row's model, p in [1/(draws+1), 1], survives == (ci_high < 0 and p <= alpha), one plan hash "
    "per plan, one row per hypothesis x intervention x outcome, a hypothesis survives exactly when one of its "
    "primary rows does",
}


def check_order(name: str) -> int:
    """Report order of a check (unknown names last)."""
    names = list(CHECKS)
    return names.index(name) if name in names else len(names)
