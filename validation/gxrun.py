"""A great-expectations runtime for validation: an ephemeral context, suites, and frame validation.

No project folder is created and nothing is sent anywhere: the context is ephemeral with in-memory stores,
analytics off and progress bars off. Each derived pandas frame is validated as a whole-dataframe batch.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from validation.ledger import Ledger, Outcome
from validation.rules import MAX_EXAMPLES

# Frames are pooled up to this many rows per GX run: a run costs a fixed ~0.1-0.5 s (it builds a metric
# graph per expectation) whatever the frame's size, so small batches are validated together.
POOL_ROWS = 32768


class GXRunner:
    """Owns one ephemeral GX context; suites are registered once and validated against many frames."""

    def __init__(self, max_examples: int = MAX_EXAMPLES):
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        # GX logs at INFO about every context and batch: noise in a CLI table.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        )
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self._source = self.context.data_sources.add_pandas("atlas")
        self._batch_definitions: dict[str, Any] = {}
        self._columns: dict[str, list[str]] = {}  # expectation id -> the columns it reads
        self.result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max_examples}

    def add_suite(self, name: str, expectations: list[tuple[str, Any]]):
        """Register a suite of `(check name, expectation)` pairs; returns the suite."""
        suite = self._gx.ExpectationSuite(name=name)
        columns = []
        for check, expectation in expectations:
            expectation.meta = {**(expectation.meta or {}), "check": check}
            columns.append(_columns(expectation))
            suite.add_expectation(expectation)
        suite = self.context.suites.add(suite)
        # Custom expectations bind their column by default: the result's kwargs omit it, the instance has it.
        for expectation, names in zip(suite.expectations, columns, strict=True):
            self._columns[expectation.id] = names
        return suite

    def _label(self, config) -> tuple[str, str]:
        """`type(columns)` of an expectation configuration, and its first column."""
        columns = self._columns.get(config.id) or _columns(config.kwargs)
        return f"{config.type}({','.join(columns)})", columns[0] if columns else ""

    def validate(self, suite, frame: pd.DataFrame) -> list[Outcome]:
        """Validate `frame` (a RangeIndex frame) against `suite`; one outcome per expectation."""
        definition = self._batch_definitions.get(suite.name)
        if definition is None:
            asset = self._source.add_dataframe_asset(name=suite.name)
            definition = asset.add_batch_definition_whole_dataframe(name="whole")
            self._batch_definitions[suite.name] = definition
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        # Most frames pass: a BOOLEAN_ONLY run costs about half a SUMMARY run; only a frame with a failure
        # is validated again for its counts and failing rows.
        quick = batch.validate(suite, result_format={"result_format": "BOOLEAN_ONLY"})
        if quick.success:
            return [
                Outcome(
                    item.expectation_config.meta["check"],
                    *self._label(item.expectation_config),
                    len(frame),
                    0,
                    [],
                    [],
                )
                for item in quick.results
            ]
        result = batch.validate(suite, result_format=self.result_format)
        outcomes = []
        for item in result.results:
            config = item.expectation_config
            label, column = self._label(config)
            info = item.exception_info or {}
            if info.get("raised_exception"):
                message = str(info.get("exception_message") or "expectation raised")
                outcomes.append(Outcome(config.meta["check"], label, column, 0, 0, [], [], error=message))
                continue
            res = item.result or {}
            unexpected = int(res.get("unexpected_count") or 0)
            if not item.success and not unexpected:
                # Aggregate expectations (no per-row result) that failed count as one failing value.
                unexpected = 1
            outcomes.append(
                Outcome(
                    check=config.meta["check"],
                    label=label,
                    column=column,
                    element_count=int(res.get("element_count") or len(frame)),
                    unexpected_count=unexpected,
                    positions=[_position(i) for i in res.get("partial_unexpected_index_list") or []],
                    values=list(res.get("partial_unexpected_list") or []),
                )
            )
        return outcomes


def _columns(source: Any) -> list[str]:
    """The columns an expectation (or its kwargs) reads: column, column_list, or column_A and column_B."""
    get = source.get if isinstance(source, dict) else lambda key: getattr(source, key, None)
    names = [get("column")] if get("column") else list(get("column_list") or [])
    return [str(n) for n in names + [get("column_A"), get("column_B")] if n]


def _position(index: Any) -> int:
    # Pandas batches report index values; compound expectations report dicts of them.
    if isinstance(index, dict):
        index = next(iter(index.values()))
    return int(index)


class FramePool:
    """Pools derived frames of one suite into GX runs of at least `POOL_ROWS` rows.

    Each frame comes with its own `describe(position, outcome)`; a failing row of the pooled frame is
    described by the frame it came from. Frames with other columns flush the pool first.
    """

    def __init__(
        self, gx: GXRunner, suite, ledger: Ledger, config: str, rows: int | None = None, whole_suite=None
    ):
        self.gx, self.suite, self.ledger, self.config = gx, suite, ledger, config
        self.rows = rows or POOL_ROWS
        # `suite` plus whole-config expectations (uniqueness): used when one run holds every row.
        self.whole_suite = whole_suite
        self._flushed = False
        self._frames: list[pd.DataFrame] = []
        self._starts: list[int] = []
        self._describers: list[Callable[[int, Outcome], str]] = []
        self._pooled = 0

    def add(self, frame: pd.DataFrame, describe: Callable[[int, Outcome], str]) -> None:
        if self._frames and list(frame.columns) != list(self._frames[0].columns):
            self.flush()
        self._starts.append(self._pooled)
        self._describers.append(describe)
        self._frames.append(frame)
        self._pooled += len(frame)
        if self._pooled >= self.rows:
            self.flush()

    def finish(self) -> bool:
        """Validate what is pooled; True when that covered every row with `whole_suite` (so the caller
        need not check whole-config expectations separately)."""
        whole = self.whole_suite is not None and not self._flushed and bool(self._frames)
        self.flush(whole=whole)
        return whole

    def flush(self, whole: bool = False) -> None:
        if not self._frames:
            return
        self._flushed = True
        frames, starts, describers = self._frames, self._starts, self._describers
        self._frames, self._starts, self._describers, self._pooled = [], [], [], 0
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

        def describe(pos: int, outcome: Outcome) -> str:
            part = bisect.bisect_right(starts, pos) - 1
            return describers[part](pos - starts[part], outcome)

        suite = self.whole_suite if whole else self.suite
        self.ledger.add_outcomes(self.config, self.gx.validate(suite, frame), describe)
