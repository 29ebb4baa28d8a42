"""Checks of a `routing-<slug>` config, streamed one Parquet batch at a time.

The experts and weights rules and the per-layer degeneracy check live in validation/routing_experts.py
(`ExpertChecks`, mixed in): every check still runs over the same streamed batch in one pass, so an atlas
larger than memory is read once.

Per batch, vectorised numpy turns the nested `experts`/`weights` columns and the token columns into one
row of scalar rule columns per token (fewest distinct experts in any layer, largest id, worst weight-sum
deviation, uncovered characters, ...), which the config's GX suite validates. Rows are processed in
chunks of whole texts: the rows of the text that runs past the end of a batch are carried into the next
batch, so every relation between neighbouring tokens of a text is seen inside one chunk.

Cross-row rules stay streaming: each chunk contributes *segments* (runs of one text with token_index
increasing by exactly 1, normally one per text) as `(text code, first index, last index)`; at the end the
segments, sorted per text, give the exact number of duplicated (source_id, token_index) keys (overlaps)
and missing indices (gaps). Per-layer expert counts accumulate into an `[moe_layers, n_experts]` array.
Memory is therefore one batch plus O(texts + moe_layers * n_experts), whatever the config's size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.schema import TEXT_CONFIGS, TRACES
from validation import expectations as ex
from validation.corpora import TextRegistry
from validation.gxrun import FramePool, GXRunner
from validation.ledger import Ledger, Outcome
from validation.reading import iter_batches, require
from validation.routing_experts import ExpertChecks
from validation.rules import BATCH_ROWS, SEGMENT_NAMES, weight_sum_rtol

ROUTING_COLUMNS = [
    "source_id",
    "corpus",
    "token_index",
    "token_id",
    "token",
    "char_start",
    "char_end",
    "is_target",
    "segment",
    "marker",
    "experts",
    "weights",
]

# A text longer than this many batches is cut into several chunks (its boundary relations are then not
# checked), so that a defective config whose rows never change source_id cannot fill memory.
MAX_CARRY_BATCHES = 8

_INDEX_CLIP = 2**30  # token indices are clipped to +-2^30 in the segment arithmetic
_KEY_STRIDE = np.int64(2**32)

WEIGHT_CHECKS = ("weights-finite-nonnegative", "weights-sorted", "weights-sum")
CHECKS = (
    "source-exists",
    "corpus-coverage",
    "token-keys-unique",
    "token-index-contiguous",
    "experts-top-k",
    "experts-in-range",
    "weights-null",
    *WEIGHT_CHECKS,
    "char-offsets",
    "token-coverage",
    "target-tokens",
    "segment-labels",
    "token-ids",
    "token-strings",
    "routing-not-degenerate",
)


class RoutingValidator(ExpertChecks):
    """Validates one routing config; `run()` records every routing check in the ledger."""

    def __init__(
        self,
        config: str,
        files: list[Path],
        model: dict | None,
        registry: TextRegistry,
        gx: GXRunner,
        ledger: Ledger,
        tokenizer: Any = None,
        tokenizer_problem: str | None = None,
        batch_rows: int = BATCH_ROWS,
    ):
        self.config = config
        self.files = files
        self.model = model
        self.registry = registry
        self.gx = gx
        self.ledger = ledger
        self.tokenizer = tokenizer
        self.batch_rows = batch_rows
        self.rows = 0
        self.n_known = len(registry)
        self.extra_codes: dict[tuple[Any, Any], int] = {}
        self.extra_keys: list[tuple[Any, Any]] = []
        self._segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._target_count = np.zeros(self.n_known, dtype=np.int64)
        self._token_cache: dict[int, str | None] = {}
        self.vocab_size = len(tokenizer) if tokenizer is not None else None

        if model is not None:
            self.layer_ids = list(model["moe_layers"])
            self.n_layers = len(self.layer_ids)
            self.top_k = int(model["top_k"])
            self.n_experts = int(model["n_routed_experts"])
            self.weights_dtype = model["weights_dtype"]
            self.norm = bool(model["norm_topk_prob"])
            self.scale = float(model["routed_scaling_factor"])
            self.scoring = model["scoring_func"]
            self.rtol = weight_sum_rtol(self.weights_dtype, model.get("dtype"))
            self._layer_counts = np.zeros((self.n_layers, self.n_experts), dtype=np.int64)
            self._zero_ids = np.zeros(self.n_layers, dtype=np.int64)
            self._zero_weights = np.zeros(self.n_layers, dtype=np.int64)
            self._layer_tokens = 0
            self._weighted_tokens = 0
        for check in CHECKS:
            ledger.declare(config, check)
        if model is None:
            reason = "no single models row for this config (see models-consistency)"
            for check in (
                "experts-top-k",
                "experts-in-range",
                "weights-null",
                *WEIGHT_CHECKS,
                "token-strings",
                "routing-not-degenerate",
            ):
                ledger.skip(config, check, reason)
        else:
            ledger.declare(config, "weights-sum", rtol=self.rtol, scale=self.scale, norm_topk_prob=self.norm)
            if self.weights_dtype is None:
                for check in WEIGHT_CHECKS:
                    ledger.skip(config, check, "weights_dtype is null: the engine gives expert ids only")
        if tokenizer is None:
            ledger.skip(config, "token-strings", tokenizer_problem or "tokenizer not available")
        self.suite = gx.add_suite(config, self._expectations())
        self.pool = FramePool(gx, self.suite, ledger, config)
        self.text_suite = gx.add_suite(
            f"{config}-texts",
            [
                ("token-keys-unique", ex.ExpectUniqueTokenKeys()),
                ("token-index-contiguous", ex.ExpectContiguousTokenIndices()),
                ("target-tokens", ex.ExpectTargetTokenPresent()),
            ],
        )

    # ---- suites ------------------------------------------------------------------------------------
    def _expectations(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [
            ("source-exists", gxe.ExpectColumnValuesToBeInSet(column="corpus", value_set=list(TEXT_CONFIGS))),
            ("source-exists", ex.ExpectRoutingSourceToExist()),
            ("token-index-contiguous", gxe.ExpectColumnValuesToBeBetween(column="token_index", min_value=0)),
            ("char-offsets", ex.ExpectCharOffsetsInsideText()),
            ("char-offsets", ex.ExpectCharOffsetsForward()),
            ("token-coverage", ex.ExpectTokensCoverText()),
            (
                "target-tokens",
                gxe.ExpectColumnPairValuesToBeEqual(column_A="is_target", column_B="target_expected"),
            ),
            ("segment-labels", ex.ExpectSegmentLabels()),
        ]
        if self.vocab_size is not None:
            token_ids = gxe.ExpectColumnValuesToBeBetween(
                column="token_id", min_value=0, max_value=self.vocab_size - 1
            )
        else:
            token_ids = gxe.ExpectColumnValuesToBeBetween(column="token_id", min_value=0)
        out.append(("token-ids", token_ids))
        if self.tokenizer is not None:
            out.append(("token-strings", ex.ExpectTokenStringsMatchIds()))
        if self.model is None:
            return out
        k, layers = self.top_k, self.n_layers
        out += [
            ("experts-top-k", ex.ExpectMoeLayerCount(min_value=layers, max_value=layers)),
            ("experts-top-k", ex.ExpectTopKWidth(min_value=k, max_value=k)),
            ("experts-top-k", ex.ExpectTopKDistinctExperts(min_value=k, max_value=k)),
            ("experts-in-range", ex.ExpectExpertIdsNonNegative()),
            ("experts-in-range", ex.ExpectExpertIdsBelowExpertCount(max_value=self.n_experts - 1)),
            ("weights-null", ex.ExpectWeightsNullity(value_set=[self.weights_dtype is None])),
        ]
        if self.weights_dtype is not None:
            out += [
                ("weights-finite-nonnegative", ex.ExpectWeightsFinite()),
                ("weights-finite-nonnegative", ex.ExpectWeightsNonNegative()),
                ("weights-sorted", ex.ExpectWeightsSortedDescending()),
                ("weights-sum", ex.ExpectWeightSumsConsistent(max_value=self.rtol)),
            ]
        return out

    # ---- streaming ---------------------------------------------------------------------------------
    def run(self) -> int:
        for chunk, head_continued, tail_open in self._chunks():
            self._process(chunk, head_continued, tail_open)
        self.pool.flush()
        self._finish_texts()
        self._finish_layers()
        return self.rows

    def _chunks(self):
        """Chunks of whole texts: `(batch, first text continues a previous chunk, last text continues)`."""
        pending: pa.RecordBatch | None = None
        continued = False
        for batch in iter_batches(self.files, ROUTING_COLUMNS, self.batch_rows):
            require(batch, ROUTING_COLUMNS, self.config)
            if pending is not None:
                if pending.schema.equals(batch.schema):
                    batch = pa.concat_batches([pending, batch])
                else:  # another file layout: flush what is pending on its own
                    yield pending, continued, False
                    continued = False
                pending = None
            cut = _last_run_start(batch)
            if cut > 0:
                yield batch.slice(0, cut), continued, False
                continued = False
                pending = batch.slice(cut)
            else:
                pending = batch
            if pending.num_rows >= MAX_CARRY_BATCHES * self.batch_rows:
                yield pending, continued, True
                continued, pending = True, None
        if pending is not None and pending.num_rows:
            yield pending, continued, False

    def _code(self, corpus: Any, source_id: Any) -> int:
        code = self.registry.codes.get((corpus, source_id))
        if code is not None:
            return code
        key = (corpus, source_id)
        code = self.extra_codes.get(key)
        if code is None:
            code = self.n_known + len(self.extra_keys)
            self.extra_codes[key] = code
            self.extra_keys.append(key)
        return code

    def _key(self, code: int) -> tuple[Any, Any]:
        return self.registry.keys[code] if code < self.n_known else self.extra_keys[code - self.n_known]

    def _process(self, rb: pa.RecordBatch, head_continued: bool, tail_open: bool) -> None:
        n = rb.num_rows
        if n == 0:
            return
        self.rows += n
        reg = self.registry
        col = {name: rb.column(name) for name in ROUTING_COLUMNS}

        # Runs of one text, and their codes.
        change = _changes(col["source_id"], col["corpus"])
        run_starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        run_lengths = np.diff(np.append(run_starts, n))
        run_sources = col["source_id"].take(pa.array(run_starts)).to_pylist()
        run_corpora = col["corpus"].take(pa.array(run_starts)).to_pylist()
        run_codes = np.fromiter(
            (self._code(c, s) for c, s in zip(run_corpora, run_sources, strict=True)),
            np.int64,
            len(run_starts),
        )
        codes = np.repeat(run_codes, run_lengths)
        found = codes < self.n_known
        known = np.where(found, codes, 0) if self.n_known else np.zeros(n, dtype=np.int64)

        # Segments (consecutive token indices of one text) for uniqueness and contiguity.
        idx = np.clip(_int64(col["token_index"]), -_INDEX_CLIP, _INDEX_CLIP)
        breaks = np.ones(n, dtype=bool)
        breaks[1:] = change | (idx[1:] != idx[:-1] + 1)
        seg_starts = np.flatnonzero(breaks)
        seg_ends = np.append(seg_starts[1:], n) - 1
        self._segments.append((codes[seg_starts], idx[seg_starts], idx[seg_ends]))

        # Character offsets: inside the text, never backwards.
        cs, ce = _int64(col["char_start"]), _int64(col["char_end"])
        text_len = reg.length[known] if self.n_known else np.zeros(n, dtype=np.int64)
        special = (cs == -1) & (ce == -1)
        inside = special | ((cs >= 0) & (cs <= ce) & (ce <= text_len)) | ~found
        non_special = np.flatnonzero(~special)
        backwards = np.zeros(n, dtype=bool)
        prev_span = np.full((n, 2), -1, dtype=np.int64)
        if len(non_special) > 1:
            a, b = non_special[:-1], non_special[1:]
            same = codes[b] == codes[a]
            backwards[b] = same & ((cs[b] < cs[a]) | (ce[b] < ce[a]))
            prev_span[b, 0], prev_span[b, 1] = cs[a], ce[a]

        # Coverage: non-whitespace characters outside every token span, per text, order-independent.
        uncovered = self._uncovered(
            codes, found, special, cs, ce, text_len, run_starts, head_continued, tail_open
        )

        # Target flags.
        t_start = reg.target_start[known] if self.n_known else np.full(n, -1)
        t_end = reg.target_end[known] if self.n_known else np.full(n, -1)
        is_target = col["is_target"].to_numpy(zero_copy_only=False).astype(bool)
        overlap = found & (t_start >= 0) & (cs >= 0) & (cs < t_end) & (ce > t_start)  # as the build marks it
        target_expected = np.where(found, overlap, is_target)
        self._add_targets(codes, is_target)

        # Segment labels: only on trace tokens.
        is_trace = pc.fill_null(pc.equal(col["corpus"], TRACES), False)
        segment_null, marker_null = pc.is_null(col["segment"]), pc.is_null(col["marker"])
        segment_known = pc.fill_null(pc.is_in(col["segment"], value_set=pa.array(SEGMENT_NAMES)), False)
        segment_ok = pc.if_else(
            is_trace, pc.or_(segment_null, segment_known), pc.and_(segment_null, marker_null)
        ).to_numpy(zero_copy_only=False)

        token_id = _int64(col["token_id"])
        frame: dict[str, Any] = {
            "corpus": col["corpus"].to_pandas(),
            "source_found": found,
            "token_index": idx,
            "token_id": token_id,
            "char_inside": inside,
            "char_backwards": backwards,
            "uncovered_chars": uncovered,
            "is_target": is_target,
            "target_expected": target_expected,
            "segment_ok": segment_ok,
        }
        explain: dict[str, Callable[[int], str]] = {
            "corpus": lambda i: f"corpus={run_corpora[np.searchsorted(run_starts, i, 'right') - 1]!r}",
            "source_found": lambda i: "no such text in the corpus config",
            "token_index": lambda i: f"token_index={idx[i]}",
            "token_id": lambda i: (
                f"token_id={token_id[i]}" + (f" (vocab {self.vocab_size})" if self.vocab_size else "")
            ),
            "char_inside": lambda i: f"char span ({cs[i]}, {ce[i]}), len(text)={text_len[i]}",
            "char_backwards": lambda i: (
                f"char span ({cs[i]}, {ce[i]}) after ({prev_span[i, 0]}, {prev_span[i, 1]})"
            ),
            "uncovered_chars": lambda i: (
                f"{uncovered[i]} non-whitespace char(s) of the text outside every token "
                f"(around token span ({cs[i]}, {ce[i]}), len(text)={text_len[i]})"
            ),
            "is_target": lambda i: (
                f"is_target={bool(is_target[i])} but span ({cs[i]}, {ce[i]}) "
                f"{'overlaps' if overlap[i] else 'misses'} target ({t_start[i]}, {t_end[i]})"
            ),
            "segment_ok": lambda i: (
                f"segment={col['segment'][i].as_py()!r} marker={col['marker'][i].as_py()!r}"
            ),
        }
        if self.tokenizer is not None:
            matches, expected = self._token_matches(col["token"], token_id)
            frame["token_matches"] = matches
            explain["token_matches"] = lambda i: (
                f"token={col['token'][i].as_py()!r}, "
                f"tokenizer gives {expected[i].as_py()!r} for id {token_id[i]}"
            )
        if self.model is not None:
            self._experts_and_weights(col, n, frame, explain)

        def describe(pos: int, outcome: Outcome) -> str:
            corpus, source = self._key(int(codes[pos]))
            what = explain.get(outcome.column, lambda i: f"{outcome.column}={frame[outcome.column][i]!r}")(
                pos
            )
            return f"{corpus}:{source} token {idx[pos]}: {what}"

        self.pool.add(pd.DataFrame(frame, index=pd.RangeIndex(n)), describe)

    def _uncovered(self, codes, found, special, cs, ce, text_len, run_starts, head_continued, tail_open):
        """Per row: non-whitespace characters of its text that no token covers, in the gap before the row's
        span (in start order) or, for the text's furthest-reaching token, after it."""
        n = len(codes)
        uncovered = np.zeros(n, dtype=np.int64)
        if not self.n_known:
            return uncovered
        reg = self.registry
        # Only texts with a target (senses, substitutions): plain texts whose offsets are exact. Trace texts
        # hold chat-template markup that tokenizers turn into special tokens without offsets, and generated
        # continuations may have no offsets at all.
        found = found & (reg.target_start[np.where(found, codes, 0)] >= 0)
        rows = np.flatnonzero(found & ~special)
        if len(rows):
            length = text_len[rows]
            start = np.clip(cs[rows], 0, length)
            end = np.clip(ce[rows], start, length)
            c = codes[rows]
            order = np.lexsort((start, c))
            rows, length, start, end, c = rows[order], length[order], start[order], end[order], c[order]
            offset = reg.offset[c]
            first = np.ones(len(c), dtype=bool)
            first[1:] = c[1:] != c[:-1]
            last = np.ones(len(c), dtype=bool)
            last[:-1] = c[1:] != c[:-1]
            base = c * _KEY_STRIDE
            reach = np.maximum.accumulate(base + end) - base  # furthest end so far, within the text
            before = np.empty_like(reach)
            before[1:] = reach[:-1]
            before[first] = 0
            prefix = reg.prefix
            gap = np.where(start > before, prefix[offset + start] - prefix[offset + before], 0)
            tail = np.where(last, prefix[offset + length] - prefix[offset + reach], 0)
            if head_continued:  # the text began in the previous chunk
                gap[first & (c == codes[0])] = 0
            if tail_open:  # the text goes on in the next chunk
                tail[last & (c == codes[-1])] = 0
            uncovered[rows] = gap + tail
        # Texts with no token spans at all: the whole text is uncovered.
        spans = np.add.reduceat((found & ~special).astype(np.int64), run_starts)
        empty = run_starts[(spans == 0) & found[run_starts]]
        if len(empty):
            code = codes[empty]
            uncovered[empty] = reg.prefix[reg.offset[code] + reg.length[code]] - reg.prefix[reg.offset[code]]
        return uncovered

    def _add_targets(self, codes: np.ndarray, is_target: np.ndarray) -> None:
        size = int(codes.max()) + 1
        if size > len(self._target_count):
            self._target_count = np.concatenate(
                [self._target_count, np.zeros(size - len(self._target_count), np.int64)]
            )
        self._target_count[:size] += np.bincount(codes, weights=is_target, minlength=size).astype(np.int64)

    def _token_matches(self, tokens: pa.Array, token_id: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        unique, inverse = np.unique(token_id, return_inverse=True)
        missing = [int(i) for i in unique if int(i) not in self._token_cache]
        if missing:
            valid = [i for i in missing if 0 <= i < self.vocab_size]
            strings = self.tokenizer.convert_ids_to_tokens(valid) if valid else []
            self._token_cache.update(dict.fromkeys(missing))
            self._token_cache.update(zip(valid, strings, strict=True))
        expected = pa.array([self._token_cache[int(i)] for i in unique], pa.string()).take(pa.array(inverse))
        matches = pc.fill_null(pc.equal(tokens, expected), False).to_numpy(zero_copy_only=False)
        return matches, expected

    # ---- end of stream ------------------------------------------------------------------------------
    def _finish_texts(self) -> None:
        if not self._segments:
            self._corpus_coverage(np.zeros(0, np.int64))
            return
        c = np.concatenate([s[0] for s in self._segments])
        lo = np.concatenate([s[1] for s in self._segments])
        hi = np.concatenate([s[2] for s in self._segments])
        self._segments = []
        order = np.lexsort((lo, c))
        c, lo, hi = c[order], lo[order], hi[order]
        first = np.ones(len(c), dtype=bool)
        first[1:] = c[1:] != c[:-1]
        base = c * _KEY_STRIDE + _INDEX_CLIP * 2
        reach = np.maximum.accumulate(base + hi) - base  # highest index so far within the text
        before = np.empty_like(reach)
        before[1:] = reach[:-1]
        before[first] = -(2**40)
        duplicates = np.clip(np.minimum(hi, before) - lo + 1, 0, None)
        missing = np.clip(lo - np.maximum(before, -1) - 1, 0, None)
        texts = c[first]
        group = np.cumsum(first) - 1
        dup = np.bincount(group, weights=duplicates).astype(np.int64)
        gaps = np.bincount(group, weights=missing).astype(np.int64)
        last = np.maximum.reduceat(hi, np.flatnonzero(first))  # highest token index of each text
        self._corpus_coverage(texts)
        keys = [self._key(int(code)) for code in texts]
        corpora = [k[0] for k in keys]
        targets = self._target_count[texts].astype(np.float64)
        # Every known text with a target span needs a target token (senses, substitutions, the user's corpora
        # with targets); traces and unlabelled texts have none.
        known = texts < self.n_known
        needs_target = np.zeros(len(texts), dtype=bool)
        needs_target[known] = self.registry.target_start[texts[known]] >= 0
        targets[~needs_target] = np.nan  # traces have no target; unknown texts are reported by source-exists
        frame = pd.DataFrame(
            {"corpus": corpora, "duplicate_tokens": dup, "missing_indices": gaps, "target_tokens": targets},
            index=pd.RangeIndex(len(texts)),
        )

        def describe(pos: int, outcome: Outcome) -> str:
            corpus, source = keys[pos]
            what = {
                "duplicate_tokens": f"{dup[pos]} duplicated (source_id, token_index) row(s)",
                "missing_indices": f"{gaps[pos]} token index(es) missing from 0..{last[pos]}",
                "target_tokens": "no token has is_target",
            }.get(outcome.column, outcome.column)
            return f"{corpus}:{source}: {what}"

        self.ledger.add_outcomes(self.config, self.gx.validate(self.text_suite, frame), describe)

    def _corpus_coverage(self, texts: np.ndarray) -> None:
        """`corpus-coverage`: per text config, how many of its texts this model routed; all or none pass.

        `texts` are the distinct codes of the routed texts. The details name the configs routed and not routed.
        """
        seen = np.zeros(self.n_known, dtype=bool)
        seen[texts[texts < self.n_known]] = True
        held: dict[str, int] = {}
        routed: dict[str, int] = {}
        missing: dict[str, str] = {}
        for (corpus, text_id), code in self.registry.codes.items():  # unique keys (repeated ids: ids-unique)
            held[corpus] = held.get(corpus, 0) + 1
            if seen[code]:
                routed[corpus] = routed.get(corpus, 0) + 1
            else:
                missing.setdefault(corpus, text_id)
        self.ledger.declare(
            self.config,
            "corpus-coverage",
            routed_corpora=sorted(routed),
            not_routed=sorted(set(held) - set(routed)),
        )
        # Traces are each model's own (formatted with its chat template, `traces.model_slug`): exempt.
        partial = [c for c in sorted(routed) if routed[c] < held[c] and c != TRACES]
        if partial:
            examples = [
                f"{c}: {held[c] - routed[c]} of {held[c]} texts not routed (e.g. {missing[c]!r}); "
                "rerun its `atlas build` to resume"
                for c in partial
            ]
            self.ledger.fail(self.config, "corpus-coverage", examples, failing=len(partial))


def _int64(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _changes(source_id: pa.Array, corpus: pa.Array) -> np.ndarray:
    """Boolean `[n - 1]`: row i + 1 starts another text than row i."""
    if len(source_id) < 2:
        return np.zeros(0, dtype=bool)
    a, b = source_id.slice(0, len(source_id) - 1), source_id.slice(1)
    ca, cb = corpus.slice(0, len(corpus) - 1), corpus.slice(1)
    changed = pc.or_(pc.fill_null(pc.not_equal(a, b), True), pc.fill_null(pc.not_equal(ca, cb), True))
    return changed.to_numpy(zero_copy_only=False)


def _last_run_start(batch: pa.RecordBatch) -> int:
    change = _changes(batch.column("source_id"), batch.column("corpus"))
    hits = np.flatnonzero(change)
    return int(hits[-1]) + 1 if len(hits) else 0
