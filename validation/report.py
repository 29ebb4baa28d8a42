"""Check results, the validation report, its table and its `validation.json` form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"
ERROR = "error"  # the check itself could not run (unreadable file, missing column): blocks publishing too

REPORT_FORMAT = "routing-atlas-validation"
REPORT_VERSION = 1


@dataclass
class CheckResult:
    """The outcome of one check on one config.

    Attributes:
        config: the config checked (`senses`, `routing-<slug>`, ...), or `atlas` for atlas-wide checks.
        check: the check's name (see `validation.checks.CHECKS`).
        status: `passed`, `failed`, `skipped` (not applicable or not possible here, with the reason in
            `details["reason"]`) or `error` (the check could not run).
        failing_examples: a few offending rows or files, human-readable.
        details: counts (rows checked, rows failing per expectation), tolerances, reasons.
    """

    config: str
    check: str
    status: str
    failing_examples: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, SKIPPED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "check": self.check,
            "status": self.status,
            "failing_examples": list(self.failing_examples),
            "details": _jsonable(self.details),
        }


@dataclass
class ValidationReport:
    """Every check's result for one atlas directory; `passed` only when none failed or errored."""

    root: str
    results: list[CheckResult]
    rows: dict[str, int] = field(default_factory=dict)  # rows read per config
    tolerances: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    code_version: str = "unknown"

    @property
    def passed(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    def failed_checks(self) -> set[str]:
        """Names of the checks that failed or errored, on any config."""
        return {result.check for result in self.failures}

    def get(self, config: str, check: str) -> CheckResult | None:
        return next((r for r in self.results if r.config == config and r.check == check), None)

    def counts(self) -> dict[str, int]:
        out = {"checks": len(self.results), PASSED: 0, FAILED: 0, SKIPPED: 0, ERROR: 0}
        for result in self.results:
            out[result.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        from validation.checks import CHECKS

        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "atlas": self.root,
            "passed": self.passed,
            "summary": self.counts(),
            "rows": dict(self.rows),
            "seconds": round(self.seconds, 3),
            "code_version": self.code_version,
            "tolerances": _jsonable(self.tolerances),
            "checks": {
                name: CHECKS[name] for name in sorted({r.check for r in self.results}) if name in CHECKS
            },
            "results": [result.to_dict() for result in self.results],
        }

    def write(self, path: Path) -> Path:
        from atlas_build.atlas.writer import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return Path(path)

    def render_table(
        self, max_examples: int = 3, example_width: int = 100, only_problems: bool = False
    ) -> str:
        """A plain-text table: config, check, status and a few failing examples, then a summary line."""
        rows = [r for r in self.results if not (only_problems and r.status == PASSED)]
        header = ("config", "check", "status", "examples")
        width_config = max([len(header[0])] + [len(r.config) for r in rows])
        width_check = max([len(header[1])] + [len(r.check) for r in rows])
        width_status = max(len(header[2]), 7)
        widths = (width_config, width_check, width_status)
        lines = [
            "  ".join(f"{name:<{width}}" for name, width in zip(header, widths, strict=False))
            + f"  {header[3]}",
            f"{'-' * width_config}  {'-' * width_check}  {'-' * width_status}  {'-' * 8}",
        ]
        indent = " " * (width_config + width_check + width_status + 6)
        for result in rows:
            notes = list(result.failing_examples[:max_examples])
            if result.status == SKIPPED and result.details.get("reason"):
                notes = [str(result.details["reason"])]
            elif result.status != PASSED:
                extra = _failing_count(result)
                if extra:
                    notes.insert(0, extra)
            notes = [_clip(note, example_width) for note in notes] or [""]
            lines.append(
                f"{result.config:<{width_config}}  {result.check:<{width_check}}  "
                f"{result.status.upper():<{width_status}}  {notes[0]}".rstrip()
            )
            lines.extend(f"{indent}{note}" for note in notes[1:])
        if only_problems and not rows:
            lines.append("(every check passed)")
        counts = self.counts()
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append("")
        lines.append(
            f"{verdict}: {counts['checks']} checks, {counts[PASSED]} passed, {counts[FAILED]} failed, "
            f"{counts[ERROR]} errors, {counts[SKIPPED]} skipped ({self.seconds:.1f}s)"
        )
        return "\n".join(lines)


def _failing_count(result: CheckResult) -> str:
    failing = result.details.get("failing")
    checked = result.details.get("checked")
    if failing is None:
        return str(result.details.get("message", "")) if result.status == ERROR else ""
    return f"{failing} of {checked} failing" if checked is not None else f"{failing} failing"


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _jsonable(value: Any) -> Any:
    """numpy scalars, tuples and paths -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        try:
            return value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
