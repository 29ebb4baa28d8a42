"""The metric code a release carries, so its `scripts/` recompute the findings with only
`pip install datasets scipy matplotlib`.

The metrics import nothing of the project but `atlas_build.atlas` (the ground floor), so the modules they
need are found by following the `atlas_build` imports of `atlas_build.metrics` (top-level and inside
functions) from the source files, and copied as they are into `scripts/routing_atlas_metrics/`, with
`atlas_build/metrics/_bundled.py` recording the code version. The release's `reproduce_metrics.py` puts
that folder first on `sys.path`.
"""

from __future__ import annotations

import ast
from pathlib import Path

BUNDLE_DIR = "routing_atlas_metrics"
ENTRY_MODULES = ("atlas_build.metrics",)
# What the bundle may need besides the standard library (the release's README says so).
REQUIREMENTS = ("datasets", "scipy", "matplotlib")
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding `atlas_build/`


def _module_file(module: str) -> Path | None:
    base = _PACKAGE_ROOT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, module: str) -> set[str]:
    """`atlas_build` modules imported anywhere in the file (absolute and relative imports)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "atlas_build" or m.startswith("atlas_build.")}


def metric_modules() -> dict[str, Path]:
    """Module name -> source file of every module the metrics need (with their parent packages)."""
    todo, seen = list(ENTRY_MODULES), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if path is None:  # a name imported from a module, not a module
            continue
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(path, module))
    return dict(sorted(seen.items()))


def bundle_files(code_version: str) -> dict[str, str]:
    """Relative path (under the release's `scripts/`) -> text of every file of the metrics bundle."""
    out = {}
    for path in metric_modules().values():
        rel = path.relative_to(_PACKAGE_ROOT).as_posix()
        out[f"{BUNDLE_DIR}/{rel}"] = path.read_text(encoding="utf-8")
    out[f"{BUNDLE_DIR}/atlas_build/metrics/_bundled.py"] = (
        '"""Written by the release: the routing-atlas version this copy of the metrics comes from."""\n\n'
        f"CODE_VERSION = {code_version!r}\n"
    )
    return out


def write_bundle(scripts_dir: Path, code_version: str | None = None) -> list[str]:
    """Write the bundle into `scripts_dir`; returns the written paths relative to it."""
    from atlas_build.metrics.provenance.verify import code_version as current_version

    files = bundle_files(code_version or current_version())
    for rel, text in files.items():
        path = Path(scripts_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return sorted(files)
