"""The atlas quality gate: great-expectations suites for every config of a routing atlas, and a runner.

    from validation import run_validation
    report = run_validation(Path("atlas-demo"))
    report.passed, report.results, report.to_dict()

`verify_files(root)` (manifest vs files on disk) is importable without loading great-expectations.
Validation reads the atlas only (Parquet through pyarrow, the manifest): it never imports the engines,
routers, models, corpus builders or torch; transformers is loaded only to check token strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from validation.checks import CHECKS
from validation.integrity import FileProblem, verify_files
from validation.report import CheckResult, ValidationReport

if TYPE_CHECKING:
    from validation.runner import AtlasNotFoundError, run_validation

__all__ = [
    "CHECKS",
    "AtlasNotFoundError",
    "CheckResult",
    "FileProblem",
    "ValidationReport",
    "run_validation",
    "verify_files",
]


def __getattr__(name: str) -> Any:
    # The runner imports great-expectations (seconds): only when asked for.
    if name in ("run_validation", "AtlasNotFoundError"):
        from validation import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'validation' has no attribute {name!r}")
