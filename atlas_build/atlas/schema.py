"""The atlas contract: one fixed Arrow schema per config.

Everything else (writer, validation, cards, metrics, publishing) reads these definitions. A config's
schema never depends on the data written into it; the routing configs depend only on the model's shape
(expert count, number of MoE layers, top-k), on whether the engine returns weights, and on whether the build
stored the router's selection scores (`atlas build --scores M`, the models row's `scores_top_m`).

Configs of an atlas directory::

    senses                 one row per WordNet example sentence of a polysemous lemma
    sense-pairs            same-lemma example pairs, same sense vs different sense (WiC-like)
    substitutions          examples with the target replaced by a synonym or an other-sense lemma
    traces                 reasoning traces (formatted text and segment spans)
    models                 one row per routed model
    routing-<model_slug>   one row per token of every routed text

Configs of corpora brought by the user (`atlas build --corpus wic|swords|jsonl|text`), beside WordNet's::

    wic-examples           WiC sentences, one row per sentence of a pair, with the target's span
    wic-pairs              WiC pairs: same_sense from WiC's gold labels, splits kept
    swords-examples        SWORDS targets in their contexts
    swords-substitutions   each SWORDS substitute put in place of its target, relation from human scores
    jsonl-examples         a JSONL probe set: texts, optional target spans and labels
    jsonl-pairs            its pairs (`pair_with` / `same`)
    texts                  unlabelled texts (JSONL or a saved `datasets` dataset), for corpus-wide statistics

Written by `atlas intervene` (causal tests of routing hypotheses)::

    interventions          one row per hypothesis x intervention x outcome of a recorded plan
"""

from __future__ import annotations

import re

import pyarrow as pa

# Bumped whenever a config's schema changes; an atlas of another version is refused, not mixed.
# 2: models.scores_top_m and the optional score columns of the routing configs; 3: models.router_input_* and
# the optional `router_inputs` column (`atlas build --router-inputs`).
SCHEMA_VERSION = 3

SENSES = "senses"
SENSE_PAIRS = "sense-pairs"
SUBSTITUTIONS = "substitutions"
TRACES = "traces"
MODELS = "models"
ROUTING_PREFIX = "routing-"

WIC_EXAMPLES = "wic-examples"
WIC_PAIRS = "wic-pairs"
SWORDS_EXAMPLES = "swords-examples"
SWORDS_SUBSTITUTIONS = "swords-substitutions"
JSONL_EXAMPLES = "jsonl-examples"
JSONL_PAIRS = "jsonl-pairs"
TEXTS = "texts"

# The routed configs of the user's corpora, and what each corpus kind writes (routed ones first).
CUSTOM_TEXT_CONFIGS = (WIC_EXAMPLES, SWORDS_EXAMPLES, SWORDS_SUBSTITUTIONS, JSONL_EXAMPLES, TEXTS)
CUSTOM_CORPUS_CONFIGS: dict[str, tuple[str, ...]] = {
    "wic": (WIC_EXAMPLES, WIC_PAIRS),
    "swords": (SWORDS_EXAMPLES, SWORDS_SUBSTITUTIONS),
    "jsonl": (JSONL_EXAMPLES, JSONL_PAIRS),
    "text": (TEXTS,),
}

# Corpus names as they appear in the routing configs' `corpus` column.
TEXT_CONFIGS = (SENSES, SUBSTITUTIONS, TRACES, *CUSTOM_TEXT_CONFIGS)

SENSES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("lemma", pa.string(), nullable=False),  # WordNet lemma name, '_' for spaces
        pa.field("pos", pa.string(), nullable=False),  # n, v, a (satellites included), r
        pa.field("synset", pa.string(), nullable=False),  # e.g. bank.n.01
        pa.field("sense_key", pa.string(), nullable=False),  # e.g. bank%1:17:01::
        pa.field("sense_number", pa.int16(), nullable=False),  # 1 = WordNet's most frequent sense
        pa.field("lemma_n_senses", pa.int16(), nullable=False),  # synsets of the lemma in this pos
        pa.field("lexname", pa.string(), nullable=False),  # e.g. noun.object
        pa.field("gloss", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("target_start", pa.int32(), nullable=False),  # character offsets, end exclusive
        pa.field("target_end", pa.int32(), nullable=False),
        pa.field("target_form", pa.string(), nullable=False),  # text[target_start:target_end]
        pa.field("source", pa.string(), nullable=False),  # e.g. wordnet-3.0:example
    ]
)

SENSE_PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("lemma", pa.string(), nullable=False),
        pa.field("pos", pa.string(), nullable=False),
        pa.field("example_a", pa.string(), nullable=False),  # senses.example_id
        pa.field("example_b", pa.string(), nullable=False),
        pa.field("synset_a", pa.string(), nullable=False),
        pa.field("synset_b", pa.string(), nullable=False),
        pa.field("same_sense", pa.bool_(), nullable=False),
    ]
)

SUBSTITUTIONS_SCHEMA = pa.schema(
    [
        pa.field("substitution_id", pa.string(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),  # the base example (senses.example_id)
        pa.field("lemma", pa.string(), nullable=False),  # the replaced lemma
        pa.field("pos", pa.string(), nullable=False),
        pa.field("relation", pa.string(), nullable=False),  # "synonym" | "other-sense"
        pa.field("substitute", pa.string(), nullable=False),  # the lemma put in its place
        pa.field("substitute_synset", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("target_start", pa.int32(), nullable=False),
        pa.field("target_end", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

TRACES_SCHEMA = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("model_slug", pa.string(), nullable=False),  # whose chat template formatted it
        pa.field("text", pa.string(), nullable=False),  # the formatted text that was routed
        pa.field("template", pa.string(), nullable=False),  # "chat" | "plain"
        # Segment spans in `text`, character offsets, end exclusive.
        pa.field(
            "segments",
            pa.list_(pa.struct([("name", pa.string()), ("start", pa.int32()), ("end", pa.int32())])),
        ),
        pa.field("source", pa.string(), nullable=False),  # "import:<file>" | "discoveryworld"
        pa.field("meta", pa.string()),  # JSON object, as given
    ]
)

MODELS_SCHEMA = pa.schema(
    [
        pa.field("model_slug", pa.string(), nullable=False),  # the routing config is routing-<model_slug>
        pa.field("model_id", pa.string(), nullable=False),  # hub id, built-in name or local path
        pa.field("revision", pa.string()),  # hub revision, when known
        pa.field("checkpoint_sha256", pa.string()),  # hash of config + weight files, when local
        pa.field("architecture", pa.string(), nullable=False),  # e.g. DeepseekV3ForCausalLM
        pa.field("model_type", pa.string(), nullable=False),  # e.g. deepseek_v3
        pa.field("router_adapter", pa.string(), nullable=False),
        pa.field("num_hidden_layers", pa.int32(), nullable=False),
        pa.field("moe_layers", pa.list_(pa.int32()), nullable=False),  # decoder layer index per experts row
        pa.field("n_routed_experts", pa.int32(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),
        pa.field("n_shared_experts", pa.int32(), nullable=False),
        pa.field("scoring_func", pa.string(), nullable=False),  # softmax | sigmoid
        pa.field("topk_method", pa.string(), nullable=False),  # greedy | group_limited_greedy | noaux_tc
        pa.field("n_group", pa.int32()),
        pa.field("topk_group", pa.int32()),
        pa.field("norm_topk_prob", pa.bool_(), nullable=False),
        pa.field("routed_scaling_factor", pa.float64(), nullable=False),
        # Per decoder-layer module (LongCat-Flash: num_layers, half its num_hidden_layers): learned (a learned
        # router chooses) | hash (a token-id table chooses: token identity by construction, left out of the
        # sense metrics by default) | dense (no routing). Null in atlases built before it was recorded: read
        # as learned for moe_layers, dense elsewhere.
        pa.field("routing_kind", pa.list_(pa.string())),
        # Zero-computation experts: the last n_zero_experts ids of n_routed_experts (LongCat-Flash); they
        # return zero, so a token routed there skips that expert's compute. Null/0: none.
        pa.field("n_zero_experts", pa.int32()),
        pa.field("total_params", pa.int64(), nullable=False),
        pa.field("active_params", pa.int64(), nullable=False),  # per token: shared + top_k routed
        pa.field("dtype", pa.string(), nullable=False),  # compute dtype of the run
        pa.field("engine", pa.string(), nullable=False),  # hf | vllm
        pa.field("weights_dtype", pa.string()),  # float16 | float32 | null (engine gives ids only)
        pa.field("tokenizer", pa.string(), nullable=False),  # where the tokenizer was loaded from
        pa.field("add_bos_token", pa.bool_(), nullable=False),
        pa.field("random_init", pa.bool_(), nullable=False),  # True: weights are random, findings are not
        pa.field("seed", pa.int64()),  # seed of random-init weights
        # M of `atlas build --scores M`: the routing config's score columns hold the top-M experts by the
        # router's selection score; null: no scores stored (the columns are absent).
        pa.field("scores_top_m", pa.int32()),
        # `atlas build --router-inputs LAYERS --router-input-dim D` (all null: no vectors stored, and the
        # routing config has no `router_inputs` column). See `atlas_build.atlas.projection`.
        pa.field("router_input_layers", pa.list_(pa.int32())),  # decoder layers of the stored vectors
        pa.field("router_input_dim", pa.int32()),  # D stored (the hidden size when the full vector is kept)
        pa.field("router_input_hidden_size", pa.int32()),  # width of the router's input before projection
        pa.field("router_input_projection", pa.string()),  # gaussian-jl-v1 | identity
        pa.field("router_input_seed", pa.int64()),  # seed of the projection matrix
        pa.field("router_input_projection_sha256", pa.string()),  # of the matrix's float64 bytes
    ]
)

# ---- the user's corpora: the roles of senses / sense-pairs / substitutions, without WordNet's columns ----

# wic-examples, swords-examples, jsonl-examples: like `senses`, with the corpus's own label for the sense.
CORPUS_EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("lemma", pa.string()),  # the target word (WiC's lemma; else as given); null without target
        pa.field(
            "pos", pa.string()
        ),  # n, v, a, r when the corpus gives a part of speech that maps, else null
        pa.field("label", pa.string()),  # sense or group id when the corpus gives one (jsonl `label`)
        pa.field("text", pa.string(), nullable=False),
        pa.field("target_start", pa.int32()),  # character offsets, end exclusive; null: no target
        pa.field("target_end", pa.int32()),
        pa.field("target_form", pa.string()),  # text[target_start:target_end]
        pa.field("split", pa.string()),  # the corpus's split (train, dev, test), when it has splits
        pa.field("source", pa.string(), nullable=False),  # e.g. wic:train.data.txt
    ]
)

# wic-pairs, jsonl-pairs: like `sense-pairs`; examples are in the same corpus's examples config.
CORPUS_PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("lemma", pa.string(), nullable=False),
        pa.field("pos", pa.string()),
        pa.field("example_a", pa.string(), nullable=False),  # <kind>-examples.example_id
        pa.field("example_b", pa.string(), nullable=False),
        pa.field("same_sense", pa.bool_(), nullable=False),  # WiC: gold T/F; jsonl: `same` or equal labels
        pa.field("split", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# swords-substitutions: like `substitutions`, the relation read off the human judgements.
CORPUS_SUBSTITUTIONS_SCHEMA = pa.schema(
    [
        pa.field("substitution_id", pa.string(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),  # the base example (swords-examples)
        pa.field("lemma", pa.string(), nullable=False),
        pa.field("pos", pa.string()),
        pa.field("relation", pa.string(), nullable=False),  # acceptable | conceivable | rejected
        pa.field("substitute", pa.string(), nullable=False),  # as given by the corpus
        pa.field("score", pa.float64(), nullable=False),  # share of annotators who accepted it
        pa.field("n_labels", pa.int16(), nullable=False),  # human judgements behind the score
        pa.field("text", pa.string(), nullable=False),
        pa.field("target_start", pa.int32(), nullable=False),  # the substitute's span in text
        pa.field("target_end", pa.int32(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# swords-substitutions.relation, from the score (the share of annotators who accepted the substitute):
# acceptable when score > SWORDS_ACCEPTABLE_ABOVE (a majority), conceivable when 0 < score <= it, rejected at 0.
SWORDS_RELATIONS = ("acceptable", "conceivable", "rejected")
SWORDS_ACCEPTABLE_ABOVE = 0.5

# texts: unlabelled texts, routed for the corpus-wide statistics only.
TEXTS_SCHEMA = pa.schema(
    [
        pa.field("text_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# interventions: `atlas intervene` results, one row per hypothesis x intervention x outcome.
INTERVENTIONS = "interventions"
INTERVENTIONS_SCHEMA = pa.schema(
    [
        pa.field("plan_name", pa.string(), nullable=False),
        pa.field("plan_sha256", pa.string(), nullable=False),  # sha256 of the plan file's bytes
        pa.field("hypothesis_id", pa.string(), nullable=False),
        pa.field("claim", pa.string(), nullable=False),
        pa.field("lemma", pa.string()),  # null: every lemma
        pa.field("sense", pa.string()),  # null: every sense
        pa.field("layer", pa.int32(), nullable=False),  # decoder layer index
        pa.field("experts", pa.list_(pa.int32()), nullable=False),
        pa.field("intervention", pa.string(), nullable=False),  # ablate | transplant
        pa.field("ablation", pa.string()),  # reroute (the family's own rule) | zero_weight; null: transplant
        pa.field("donor_sense", pa.string()),  # transplant: whose recorded routing
        pa.field("forced_experts", pa.list_(pa.int32())),  # transplant: the set the target tokens got
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("primary", pa.bool_(), nullable=False),  # the plan's pre-registered outcome
        pa.field("n_texts", pa.int32(), nullable=False),
        pa.field("n_clusters", pa.int32(), nullable=False),
        pa.field("cluster_unit", pa.string(), nullable=False),  # lemma | text
        pa.field("effect", pa.float64(), nullable=False),  # mean change, intervened minus clean
        pa.field("ci_low", pa.float64(), nullable=False),  # 95% cluster bootstrap
        pa.field("ci_high", pa.float64(), nullable=False),
        pa.field("baseline_draws", pa.int32(), nullable=False),
        pa.field("baseline_mean", pa.float64(), nullable=False),
        pa.field("baseline_sd", pa.float64(), nullable=False),
        pa.field(
            "hypothesis_load", pa.float64(), nullable=False
        ),  # mean share of tokens choosing the experts
        pa.field("baseline_load", pa.float64(), nullable=False),  # ... the random draws'
        pa.field("p_value", pa.float64(), nullable=False),  # one-sided, against the baseline draws
        pa.field("alpha", pa.float64(), nullable=False),  # the plan's alpha / hypothesis x intervention count
        pa.field("survives", pa.bool_(), nullable=False),  # this row: CI below 0 and p <= alpha
        pa.field("hypothesis_survives", pa.bool_(), nullable=False),  # the verdict of the hypothesis
        pa.field("model_slug", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("checkpoint_sha256", pa.string()),
        pa.field("random_init", pa.bool_(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("recorded", pa.string(), nullable=False),  # ISO time
    ]
)

FIXED_SCHEMAS: dict[str, pa.Schema] = {
    SENSES: SENSES_SCHEMA,
    SENSE_PAIRS: SENSE_PAIRS_SCHEMA,
    SUBSTITUTIONS: SUBSTITUTIONS_SCHEMA,
    TRACES: TRACES_SCHEMA,
    MODELS: MODELS_SCHEMA,
    WIC_EXAMPLES: CORPUS_EXAMPLES_SCHEMA,
    WIC_PAIRS: CORPUS_PAIRS_SCHEMA,
    SWORDS_EXAMPLES: CORPUS_EXAMPLES_SCHEMA,
    SWORDS_SUBSTITUTIONS: CORPUS_SUBSTITUTIONS_SCHEMA,
    JSONL_EXAMPLES: CORPUS_EXAMPLES_SCHEMA,
    JSONL_PAIRS: CORPUS_PAIRS_SCHEMA,
    TEXTS: TEXTS_SCHEMA,
    INTERVENTIONS: INTERVENTIONS_SCHEMA,
}

# Primary key column of each text config (what routing rows' source_id points at).
TEXT_ID_COLUMN = {
    SENSES: "example_id",
    SUBSTITUTIONS: "substitution_id",
    TRACES: "trace_id",
    WIC_EXAMPLES: "example_id",
    SWORDS_EXAMPLES: "example_id",
    SWORDS_SUBSTITUTIONS: "substitution_id",
    JSONL_EXAMPLES: "example_id",
    TEXTS: "text_id",
}

WEIGHT_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")


def expert_id_type(n_routed_experts: int) -> pa.DataType:
    """The smallest unsigned integer type that holds ids in [0, n_routed_experts)."""
    if n_routed_experts <= 0:
        raise ValueError(f"n_routed_experts must be positive, got {n_routed_experts}")
    if n_routed_experts <= 2**8:
        return pa.uint8()
    if n_routed_experts <= 2**16:
        return pa.uint16()
    return pa.uint32()


def routing_schema(
    n_routed_experts: int,
    n_moe_layers: int,
    top_k: int,
    weights_dtype: str | None,
    scores_top_m: int | None = None,
    router_input_layers: int | None = None,
    router_input_dim: int | None = None,
) -> pa.Schema:
    """Schema of a `routing-<model_slug>` config: one row per token of a routed text.

    `experts` and `weights` are `[moe_layer][k]`: fixed-size lists of `n_moe_layers` lists of `top_k`,
    the k entries ordered by gate weight, highest first. `weights` are the gate weights that the model
    multiplies the expert outputs by (after normalisation and `routed_scaling_factor`); they are null for
    engines that return expert ids only (`weights_dtype=None`).

    With `scores_top_m = M` (`atlas build --scores M`, M ≥ k) two more columns, `[moe_layer][M]`:
    `score_experts`, the M experts of highest *selection* score (the score the router chooses on: for
    DeepSeek-V3/R1 sigmoid(logits) + e_score_correction_bias before the group mask, for softmax routers
    the probability), highest first (ties: lower id first), and `scores`, those scores as float32. Null
    rows: tokens whose engine gave no scores. Without `scores_top_m` the columns are absent.

    With `router_input_layers = n` and `router_input_dim = D` (`atlas build --router-inputs`), one more
    column, `router_inputs` `[n][D]` float16: the router's input vector of the token at each chosen layer
    (`models.router_input_layers`), projected as `models.router_input_projection` says. Parquet is columnar: a
    reader that names its columns (`load_dataset(..., columns=[...])`) never reads these bytes.
    """
    id_type = expert_id_type(n_routed_experts)
    weight_type = WEIGHT_DTYPES[weights_dtype] if weights_dtype else pa.float16()
    return pa.schema(
        [
            pa.field("source_id", pa.string(), nullable=False),  # senses/substitutions/traces id
            pa.field("corpus", pa.string(), nullable=False),  # senses | substitutions | traces
            pa.field("token_index", pa.int32(), nullable=False),  # 0..n-1 within the text
            pa.field("token_id", pa.int32(), nullable=False),
            pa.field("token", pa.string(), nullable=False),  # the tokenizer's token string
            pa.field("char_start", pa.int32(), nullable=False),  # -1 for special tokens
            pa.field("char_end", pa.int32(), nullable=False),
            pa.field("is_target", pa.bool_(), nullable=False),  # overlaps the target span
            pa.field("segment", pa.string()),  # traces: prompt | think | answer; else null
            pa.field("marker", pa.string()),  # traces: reasoning marker this token belongs to; else null
            pa.field("experts", pa.list_(pa.list_(id_type, top_k), n_moe_layers), nullable=False),
            pa.field("weights", pa.list_(pa.list_(weight_type, top_k), n_moe_layers), nullable=True),
            *score_fields(id_type, n_moe_layers, scores_top_m),
            *router_input_fields(router_input_layers, router_input_dim),
        ],
        metadata={
            b"routing_atlas.schema_version": str(SCHEMA_VERSION).encode(),
            b"routing_atlas.weights_dtype": (weights_dtype or "none").encode(),
        },
    )


SCORE_COLUMNS = ("score_experts", "scores")


def score_fields(id_type: pa.DataType, n_moe_layers: int, scores_top_m: int | None) -> list[pa.Field]:
    """The optional score columns of a routing config (none when `scores_top_m` is None)."""
    if scores_top_m is None:
        return []
    if scores_top_m < 1:
        raise ValueError(f"scores_top_m must be at least 1, got {scores_top_m}")
    return [
        pa.field("score_experts", pa.list_(pa.list_(id_type, scores_top_m), n_moe_layers), nullable=True),
        pa.field("scores", pa.list_(pa.list_(pa.float32(), scores_top_m), n_moe_layers), nullable=True),
    ]


ROUTER_INPUTS_COLUMN = "router_inputs"


def router_input_fields(n_layers: int | None, dim: int | None) -> list[pa.Field]:
    """The optional `router_inputs` column (none unless both the layer count and D are given)."""
    if not n_layers or not dim:
        return []
    return [pa.field(ROUTER_INPUTS_COLUMN, pa.list_(pa.list_(pa.float16(), dim), n_layers), nullable=True)]


def routing_config_name(model_slug: str) -> str:
    return ROUTING_PREFIX + check_slug(model_slug)


def check_slug(model_slug: str) -> str:
    """A slug names a config and a folder: lower-case letters, digits, '.', '_' and '-', no path parts."""
    if not _SLUG_RE.match(model_slug) or ".." in model_slug:
        raise ValueError(
            f"invalid model slug {model_slug!r}: use 1-96 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (pass --slug to choose one)"
        )
    return model_slug


def slugify(model_id: str) -> str:
    """A config-safe slug from a model id: 'deepseek-ai/DeepSeek-R1' -> 'deepseek-r1' (a pinned
    '@revision' is not part of it)."""
    name = model_id.rstrip("/").split("/")[-1].split("@")[0].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("-._")
    return check_slug(name[:96] or "model")


def default_model_slug(model_id: str, random_init: bool = False, slug: str | None = None) -> str:
    """The slug a build gives its model: `slug` when given, else from the model id (a random-init twin gets
    `-random-init` appended, so it never shares a routing config with the trained model)."""
    if slug:
        return check_slug(slug)
    base = slugify(model_id)
    return f"{base}-random-init" if random_init else base


def schema_for(config: str, models_row: dict | None = None) -> pa.Schema:
    """The declared schema of a config; routing configs need their `models` row."""
    if config in FIXED_SCHEMAS:
        return FIXED_SCHEMAS[config]
    if config.startswith(ROUTING_PREFIX):
        if models_row is None:
            raise ValueError(f"the schema of {config} depends on its models row; none was given")
        return routing_schema(
            models_row["n_routed_experts"],
            len(models_row["moe_layers"]),
            models_row["top_k"],
            models_row["weights_dtype"],
            models_row.get("scores_top_m"),
            len(models_row.get("router_input_layers") or []) or None,
            models_row.get("router_input_dim"),
        )
    raise ValueError(f"unknown config {config!r}: expected one of {sorted(FIXED_SCHEMAS)} or routing-<slug>")
