"""Tolerances and the text rules that validation applies, kept in one place so the report can state them.

Nothing here needs WordNet, a model or a tokenizer.
"""

from __future__ import annotations

import numpy as np

# Rows per Parquet batch (a quarter of the writer's 65536-row groups). Decoding the nested experts/weights
# lists materialises 2-byte repetition and definition levels per leaf value, so at DeepSeek-R1's shape
# (58 x 8) a batch costs ~16 KB of transient memory per row: ~250 MB here, ~1 GB for a whole row group.
BATCH_ROWS = 16384
# Failing examples kept per check.
MAX_EXAMPLES = 5

# Relative tolerance of a weight sum, by dtype. The stored sum of top-k weights deviates from the exact one
# by the rounding of each stored weight (float16: 2^-11 relative each) and by the rounding of the compute
# dtype in which the model normalised them (bfloat16: 2^-8 each, k of them). The tolerance of a routing
# config is the larger of its storage dtype's and its compute dtype's.
WEIGHT_SUM_RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
DEFAULT_WEIGHT_SUM_RTOL = 2e-2  # compute dtypes not listed (e.g. float8 checkpoints run in bf16)

# A layer is degenerate when one expert is in the top-k of every token of the config. Below this many
# tokens that can happen by chance, so the check is skipped.
MIN_TOKENS_FOR_DEGENERACY = 64

POS_VALUES = ("n", "v", "a", "s", "r")
SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")  # sqrtsoftplus: DeepSeek-V4
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
WEIGHT_DTYPES = ("float16", "float32")
RELATIONS = ("synonym", "other-sense")
TEMPLATES = ("chat", "plain")
SEGMENT_NAMES = ("prompt", "think", "answer")

# WordNet 3.0 exception-list forms (noun.exc, verb.exc, adj.exc, adv.exc) whose first letter differs from
# their lemma's: the only inflected forms the first-letter rule below would reject.
IRREGULAR_FORMS: dict[str, frozenset[str]] = {
    "am": frozenset({"be"}),
    "are": frozenset({"be"}),
    "is": frozenset({"be"}),
    "was": frozenset({"be"}),
    "were": frozenset({"be"}),
    "ate": frozenset({"eat"}),
    "went": frozenset({"go"}),
    "ycleped": frozenset({"clepe"}),
    "yclept": frozenset({"clepe"}),
    "best": frozenset({"good", "well"}),
    "better": frozenset({"good", "well"}),
    "worse": frozenset({"bad"}),
    "worst": frozenset({"bad"}),
    "artal": frozenset({"rotl"}),
    "artel": frozenset({"rotl"}),
    "aurar": frozenset({"eyir", "eyrir"}),
    "challoth": frozenset({"hallah"}),
    "lisente": frozenset({"sente"}),
    "listente": frozenset({"sente"}),
    "makuta": frozenset({"likuta"}),
    "maloti": frozenset({"loti"}),
    "oedemata": frozenset({"edema"}),
    "oesophagi": frozenset({"esophagus"}),
}


def weight_sum_rtol(weights_dtype: str | None, compute_dtype: str | None) -> float:
    """The relative tolerance of a weight sum for a routing config (see `WEIGHT_SUM_RTOL`)."""
    storage = WEIGHT_SUM_RTOL.get(weights_dtype or "", 0.0)
    compute = WEIGHT_SUM_RTOL.get(compute_dtype or "", DEFAULT_WEIGHT_SUM_RTOL)
    return max(storage, compute)


def _normalise(words: str) -> str:
    return " ".join(words.replace("_", " ").replace("-", " ").lower().split())


def is_form_of(form: str, lemma: str) -> bool:
    """Whether `form` (as found in a text) can be an inflected form of the WordNet `lemma`.

    WordNet inflection (nltk's morphy) only changes word endings, except for the listed irregular forms;
    without WordNet the sound rule is therefore: the normalised form (lower case, '_' and '-' as spaces)
    equals the lemma, or its first word starts with the lemma's first letter, or its first word is a
    WordNet irregular form of the lemma's first word (`IRREGULAR_FORMS`). This rejects a span that holds
    another word, never a true inflection.
    """
    form_n, lemma_n = _normalise(form), _normalise(lemma)
    if not form_n or not lemma_n:
        return False
    if form_n == lemma_n or form_n[0] == lemma_n[0]:
        return True
    first_form, first_lemma = form_n.split(" ")[0], lemma_n.split(" ")[0]
    return first_lemma in IRREGULAR_FORMS.get(first_form, frozenset()) or lemma_n in IRREGULAR_FORMS.get(
        first_form, frozenset()
    )


def is_word_aligned(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] neither starts nor ends inside a word (no letter/digit just outside it)."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not before.isalnum() and not after.isalnum()


# Every code point for which Python's str.isspace() is true.
WHITESPACE_CODEPOINTS = np.array(
    [
        9,
        10,
        11,
        12,
        13,
        28,
        29,
        30,
        31,
        32,
        133,
        160,
        5760,
        *range(8192, 8203),
        8232,
        8233,
        8239,
        8287,
        12288,
    ],
    dtype=np.uint32,
)


def non_whitespace_prefix(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-text prefix counts of non-whitespace characters.

    Returns `(prefix, offsets)`: `prefix[offsets[t] + i]` is the number of non-whitespace characters in
    `texts[t][:i]` (each text has `len + 1` entries, int32), so the non-whitespace characters of
    `texts[t][a:b]` number `prefix[offsets[t] + b] - prefix[offsets[t] + a]`.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    nonws = ~np.isin(codes, WHITESPACE_CODEPOINTS)
    total = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(nonws, out=total[1:])
    starts = np.zeros(len(texts), dtype=np.int64)  # of each text in the joined string
    if len(texts) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    offsets = starts + np.arange(len(texts))  # one extra entry per text
    # Entry j of text t is joined-string position starts[t] + j, relative to the text's own start.
    text_of = np.repeat(np.arange(len(texts)), lengths + 1)
    position = np.arange(len(text_of)) - offsets[text_of] + starts[text_of]
    prefix = (total[position] - total[starts[text_of]]).astype(np.int32)
    return prefix, offsets
