"""Collects check outcomes across batches and configs, then turns them into `CheckResult`s.

A check on a routing config is evaluated once per batch (and once more on per-text and per-layer
summaries); the ledger sums the counts and keeps the first few failing examples, so the report holds one
row per (config, check) however many batches were read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from validation.checks import check_order
from validation.report import ERROR, FAILED, PASSED, SKIPPED, CheckResult
from validation.rules import MAX_EXAMPLES


@dataclass
class _Entry:
    expectations: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    failing: int = 0
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None
    failed: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """One expectation evaluated on one frame (see `validation.gxrun`)."""

    check: str
    label: str  # expectation type and column, e.g. expect_top_k_distinct_experts(distinct_experts_min)
    column: str  # the (first) column the expectation reads
    element_count: int
    unexpected_count: int
    positions: list[int]  # frame positions of the first unexpected rows
    values: list[Any]  # their values
    error: str | None = None


class Ledger:
    def __init__(self, max_examples: int = MAX_EXAMPLES):
        self.max_examples = max_examples
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._config_order: list[str] = []

    def _entry(self, config: str, check: str) -> _Entry:
        if config not in self._config_order:
            self._config_order.append(config)
        return self._entries.setdefault((config, check), _Entry())

    def wants_examples(self, config: str, check: str) -> bool:
        return len(self._entry(config, check).examples) < self.max_examples

    # ---- recording ------------------------------------------------------------------------------
    def declare(self, config: str, check: str, **details: Any) -> None:
        """Make the check appear in the report (passed unless something fails it)."""
        self._entry(config, check).details.update(details)

    def count(self, config: str, check: str, label: str, checked: int, failing: int) -> None:
        entry = self._entry(config, check)
        counts = entry.expectations.setdefault(label, {"checked": 0, "failing": 0})
        counts["checked"] += int(checked)
        counts["failing"] += int(failing)
        entry.failing += int(failing)

    def add_examples(self, config: str, check: str, examples: Iterable[str]) -> None:
        entry = self._entry(config, check)
        for example in examples:
            if len(entry.examples) >= self.max_examples:
                break
            entry.examples.append(example)

    def fail(
        self, config: str, check: str, examples: Iterable[str] = (), failing: int | None = None, **details
    ):
        entry = self._entry(config, check)
        entry.failed = True
        examples = list(examples)
        entry.failing += failing if failing is not None else max(len(examples), 1)
        self.add_examples(config, check, examples)
        entry.details.update(details)

    def skip(self, config: str, check: str, reason: str) -> None:
        self._entry(config, check).skipped = reason

    def error(self, config: str, check: str, message: str) -> None:
        entry = self._entry(config, check)
        if message not in entry.errors:
            entry.errors.append(message)

    def add_outcomes(
        self, config: str, outcomes: Iterable[Outcome], describe: Callable[[int, Outcome], str]
    ) -> None:
        """Record GX outcomes; `describe(position, outcome)` formats a failing row for the report."""
        for outcome in outcomes:
            if outcome.error:
                self.error(config, outcome.check, f"{outcome.label}: {outcome.error}")
                continue
            self.count(config, outcome.check, outcome.label, outcome.element_count, outcome.unexpected_count)
            if outcome.unexpected_count and self.wants_examples(config, outcome.check):
                self.add_examples(
                    config, outcome.check, (describe(pos, outcome) for pos in outcome.positions)
                )

    # ---- results ----------------------------------------------------------------------------------
    def status(self, config: str, check: str) -> str:
        return self._status(self._entry(config, check))

    @staticmethod
    def _status(entry: _Entry) -> str:
        if entry.errors:
            return ERROR
        if entry.failing or entry.failed:
            return FAILED
        if entry.skipped is not None and not entry.expectations:
            return SKIPPED
        return PASSED

    def results(self) -> list[CheckResult]:
        keys = sorted(self._entries, key=lambda k: (self._config_order.index(k[0]), check_order(k[1]), k[1]))
        out = []
        for config, check in keys:
            entry = self._entries[(config, check)]
            status = self._status(entry)
            details: dict[str, Any] = dict(entry.details)
            if entry.expectations:
                details["expectations"] = entry.expectations
                details["checked"] = max(c["checked"] for c in entry.expectations.values())
            details["failing"] = entry.failing
            if entry.errors:
                details["message"] = "; ".join(entry.errors)
            if status == SKIPPED:
                details["reason"] = entry.skipped
            out.append(CheckResult(config, check, status, list(entry.examples), details))
        return out


def _safe(describe: Callable[[int, Outcome], str], position: int, outcome: Outcome) -> str:
    # A formatting slip must never hide the failure itself.
    try:
        return describe(position, outcome)
    except Exception as error:  # noqa: BLE001
        return f"row {position}: {outcome.column} ({type(error).__name__} while describing it)"
