"""Custom great-expectations expectations for the routing-atlas rules.

Each one is a subclass of a built-in column expectation (the GX 1.x way to name and document a rule),
bound to a column that `validation.corpora` and `validation.routing` derive from the Parquet batches: the
heavy per-token work (comparing top-k sets, summing weights, tiling character spans) happens once in
vectorised numpy, and great-expectations evaluates, counts and reports the rule over the derived column.
"""

from __future__ import annotations

import great_expectations.expectations as gxe

# ---- corpora ---------------------------------------------------------------------------------------


class ExpectTargetSpanInsideText(gxe.ExpectColumnValuesToBeInSet):
    """0 <= target_start < target_end <= len(text)."""

    column: str = "span_inside"
    value_set: list = [True]
    description: str = "the target span is a non-empty span inside the text"


class ExpectTargetFormAtSpan(gxe.ExpectColumnValuesToBeInSet):
    """text[target_start:target_end] == target_form."""

    column: str = "form_at_span"
    value_set: list = [True]
    description: str = "text[target_start:target_end] equals target_form"


class ExpectTargetSpanWordAligned(gxe.ExpectColumnValuesToBeInSet):
    """No letter or digit immediately before or after the target span."""

    column: str = "span_word_aligned"
    value_set: list = [True]
    description: str = "the target span starts and ends at word boundaries"


class ExpectTargetFormOfLemma(gxe.ExpectColumnValuesToBeInSet):
    """The form in the span can be an inflection of the lemma (`validation.rules.is_form_of`)."""

    column: str = "form_of_lemma"
    value_set: list = [True]
    description: str = "the target span holds a form of the lemma"


class ExpectReferencedExampleExists(gxe.ExpectColumnValuesToBeInSet):
    """A senses.example_id referenced by another config exists."""

    column: str = "example_exists"
    value_set: list = [True]
    description: str = "the referenced senses example exists"


class ExpectReferencedExampleOfLemma(gxe.ExpectColumnValuesToBeInSet):
    """A referenced example has the referencing row's lemma and pos."""

    column: str = "example_of_lemma"
    value_set: list = [True]
    description: str = "the referenced example has the same lemma and pos"


class ExpectReferencedSynsetsMatch(gxe.ExpectColumnValuesToBeInSet):
    """The synsets copied into a row equal the referenced examples' synsets."""

    column: str = "synsets_match"
    value_set: list = [True]
    description: str = "the row's synsets are its examples' synsets"


class ExpectTraceSegmentsValid(gxe.ExpectColumnValuesToBeInSet):
    """Trace segments lie inside the text, in order, without overlap, with known names."""

    column: str = "segments_ok"
    value_set: list = [True]
    description: str = "segment spans are ordered, disjoint, inside the text and named"


class ExpectJsonObjectOrNull(gxe.ExpectColumnValuesToBeInSet):
    """traces.meta is a JSON object or null."""

    column: str = "meta_ok"
    value_set: list = [True]
    description: str = "meta parses as a JSON object"


class ExpectMoeLayersValid(gxe.ExpectColumnValuesToBeInSet):
    """models.moe_layers is non-empty, strictly increasing and inside [0, num_hidden_layers)."""

    column: str = "moe_layers_ok"
    value_set: list = [True]
    description: str = "moe_layers are strictly increasing decoder layer indices"


# ---- routing: per token ----------------------------------------------------------------------------


class ExpectRoutingSourceToExist(gxe.ExpectColumnValuesToBeInSet):
    """The (corpus, source_id) of a routing row names an existing text."""

    column: str = "source_found"
    value_set: list = [True]
    description: str = "source_id exists in the config named by corpus"


class ExpectMoeLayerCount(gxe.ExpectColumnValuesToBeBetween):
    """The outer length of experts equals len(models.moe_layers) (bounds set to it)."""

    column: str = "moe_layers_in_row"
    description: str = "one experts entry per MoE layer"


class ExpectTopKWidth(gxe.ExpectColumnValuesToBeBetween):
    """The inner length of experts equals models.top_k (bounds set to it)."""

    column: str = "top_k_in_row"
    description: str = "top_k experts per layer"


class ExpectTopKDistinctExperts(gxe.ExpectColumnValuesToBeBetween):
    """The fewest distinct expert ids in any layer of the token equals top_k (bounds set to it)."""

    column: str = "distinct_experts_min"
    description: str = "every token-layer has top_k distinct expert ids"


class ExpectExpertIdsBelowExpertCount(gxe.ExpectColumnValuesToBeBetween):
    """The largest expert id of the token is below n_routed_experts (max_value set to N - 1)."""

    column: str = "expert_max"
    description: str = "expert ids < n_routed_experts"


class ExpectExpertIdsNonNegative(gxe.ExpectColumnValuesToBeBetween):
    """The smallest expert id of the token is >= 0 (only reachable with a drifted, signed id type)."""

    column: str = "expert_min"
    min_value: int = 0
    description: str = "expert ids >= 0"


class ExpectWeightsNullity(gxe.ExpectColumnValuesToBeInSet):
    """weights is null exactly when models.weights_dtype is null (value_set set to that)."""

    column: str = "weights_null"
    description: str = "weights null iff the engine gives expert ids only"


class ExpectWeightsFinite(gxe.ExpectColumnValuesToBeBetween):
    """No layer of the token holds a NaN or infinite weight (counts such layers)."""

    column: str = "weights_nonfinite"
    max_value: int = 0
    description: str = "weights are finite"


class ExpectWeightsNonNegative(gxe.ExpectColumnValuesToBeBetween):
    """No layer of the token holds a negative weight (counts such layers)."""

    column: str = "weights_negative"
    max_value: int = 0
    description: str = "weights are >= 0"


class ExpectWeightsSortedDescending(gxe.ExpectColumnValuesToBeBetween):
    """No layer of the token whose weights increase from one k to the next."""

    column: str = "weights_unsorted_layers"
    max_value: int = 0
    description: str = "weights ordered highest first"


class ExpectWeightSumsConsistent(gxe.ExpectColumnValuesToBeBetween):
    """The largest relative deviation of a layer's weight sum from the model's normalisation is within the
    tolerance (max_value set to it)."""

    column: str = "weights_sum_error"
    description: str = "weight sums agree with norm_topk_prob and routed_scaling_factor"


class ExpectCharOffsetsInsideText(gxe.ExpectColumnValuesToBeInSet):
    """(-1, -1) for special tokens, else 0 <= char_start <= char_end <= len(text)."""

    column: str = "char_inside"
    value_set: list = [True]
    description: str = "character offsets lie inside the text"


class ExpectCharOffsetsForward(gxe.ExpectColumnValuesToBeInSet):
    """Neither offset of a token is before the previous non-special token's of the same text."""

    column: str = "char_backwards"
    value_set: list = [False]
    description: str = "character offsets never go backwards"


class ExpectTokensCoverText(gxe.ExpectColumnValuesToBeBetween):
    """No non-whitespace character of the text lies outside every token span (counted at the token
    after the gap, or at the last token for the text's tail)."""

    column: str = "uncovered_chars"
    max_value: int = 0
    description: str = "token spans cover every non-whitespace character"


class ExpectSegmentLabels(gxe.ExpectColumnValuesToBeInSet):
    """segment/marker are null outside traces; trace segment names are known."""

    column: str = "segment_ok"
    value_set: list = [True]
    description: str = "segment labels only on trace tokens, with known names"


class ExpectTokenStringsMatchIds(gxe.ExpectColumnValuesToBeInSet):
    """token == tokenizer.convert_ids_to_tokens(token_id)."""

    column: str = "token_matches"
    value_set: list = [True]
    description: str = "token strings agree with token ids"


# ---- routing: per text and per layer ----------------------------------------------------------------


class ExpectUniqueTokenKeys(gxe.ExpectColumnValuesToBeBetween):
    """No (source_id, token_index) of the text occurs twice."""

    column: str = "duplicate_tokens"
    max_value: int = 0
    description: str = "(source_id, token_index) is unique"


class ExpectContiguousTokenIndices(gxe.ExpectColumnValuesToBeBetween):
    """No index in 0..max(token_index) of the text is missing."""

    column: str = "missing_indices"
    max_value: int = 0
    description: str = "token indices are 0..n-1 without gaps"


class ExpectTargetTokenPresent(gxe.ExpectColumnValuesToBeBetween):
    """A senses/substitutions text has at least one target token (NaN for traces: not applicable)."""

    column: str = "target_tokens"
    min_value: int = 1
    description: str = "every example has a target token"


class ExpectNoDominantExpert(gxe.ExpectColumnValuesToBeBetween):
    """The share of tokens whose top-k holds the layer's most frequent expert is below 1."""

    column: str = "top_expert_share"
    max_value: float = 1.0
    strict_max: bool = True
    description: str = "no expert takes every token of a layer"


class ExpectNoAllZeroLayer(gxe.ExpectColumnValuesToBeBetween):
    """The share of tokens whose expert ids (or weights: column set) are all zero is below 1."""

    column: str = "all_zero_ids_share"
    max_value: float = 1.0
    strict_max: bool = True
    description: str = "no layer is all zeros"
