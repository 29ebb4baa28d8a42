"""`atlas verify DIR`: recompute every data file's checksum and compare the files with `manifest.json`."""

from __future__ import annotations

from pathlib import Path

import click

# Exit status when files disagree with the manifest (2 stays "the command could not run": AtlasError).
EXIT_PROBLEMS = 1
# Order of the table, worst first.
STATUSES = ("missing", "truncated", "altered", "unexpected")


def classify(problems) -> list[tuple[str, str, str]]:
    """`validation.integrity.FileProblem`s -> one `(status, path, detail)` row per file, sorted.

    missing: listed in the manifest, not on disk. truncated: shorter than the manifest says. altered: the
    same file name with other content (checksum, size or row count differ, or not readable Parquet).
    unexpected: a data file (or a writer's temporary file) that the manifest does not list.
    """
    from validation.integrity import BYTES, MISSING, UNEXPECTED, UNREADABLE

    by_path: dict[str, list] = {}
    for problem in problems:
        by_path.setdefault(problem.path, []).append(problem)
    rows = []
    for path, found in by_path.items():
        kinds = {p.kind: p for p in found}
        if MISSING in kinds:
            status, detail = "missing", "listed in the manifest, not on disk"
        elif UNEXPECTED in kinds:
            status, detail = "unexpected", "not listed in the manifest"
        else:
            size = kinds.get(BYTES)
            shorter = size is not None and int(size.actual) < int(size.expected)
            status = "truncated" if shorter else "altered"
            details = []
            if size is not None:
                details.append(f"{size.actual} bytes, manifest says {size.expected}")
            for kind, problem in kinds.items() if not shorter else ():
                if kind == UNREADABLE:
                    details.append(f"not readable Parquet ({problem.actual})")
                elif kind != BYTES:
                    details.append(
                        f"{kind} {_short(problem.actual)}, manifest says {_short(problem.expected)}"
                    )
            detail = "; ".join(details)
        rows.append((status, path, detail))
    return sorted(rows, key=lambda r: (STATUSES.index(r[0]), r[1]))


def temp_files(root: Path) -> list[tuple[str, str, str]]:
    """Temporary files of an interrupted write (the next `atlas build` removes them)."""
    from atlas_build.atlas.writer import TEMP_SUFFIX

    return [
        ("unexpected", path.relative_to(root).as_posix(), "temporary file of an interrupted write")
        for path in sorted(root.rglob(f".*{TEMP_SUFFIX}"))
        if path.is_file()
    ]


def _short(value) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 else text  # sha256 hex digests


def format_table(rows: list[tuple[str, str, str]]) -> str:
    header = ("STATUS", "FILE", "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in [header, *rows]]
    return "\n".join(lines)


@click.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
def command(directory: Path) -> None:
    """Check that the atlas in DIRECTORY is exactly what its manifest.json lists.

    Recomputes the sha256 of every data file and reports, in a table, files that are truncated, altered,
    missing, or unexpected (not in the manifest; e.g. left by an interrupted build). Exits 0 when every
    file matches, 1 otherwise (2 when DIRECTORY is not a readable atlas).
    """
    from atlas_build.atlas.manifest import Manifest, ManifestError
    from atlas_build.errors import AtlasError
    from validation.integrity import verify_files

    if not directory.is_dir():
        raise AtlasError(f"{directory} is not a directory")
    try:
        manifest = Manifest.load(directory)
    except ManifestError as error:
        if isinstance(error.__cause__, (OSError, ValueError)):
            raise AtlasError(
                f"{directory}/manifest.json is damaged ({error.__cause__}): the atlas cannot be verified. "
                "Restore manifest.json, or rebuild into a new directory"
            ) from error
        raise
    rows = classify(verify_files(directory, manifest, hashes=True)) + temp_files(directory)
    n_files = len(manifest.files)
    if not rows:
        click.echo(f"ok: the {n_files} data files of {directory} match manifest.json (sha256, bytes, rows)")
        return
    click.echo(format_table(rows))
    counts = ", ".join(
        f"{sum(r[0] == s for r in rows)} {s}" for s in STATUSES if any(r[0] == s for r in rows)
    )
    click.echo(
        f"\n{directory}: {counts} (manifest lists {n_files} data files). Do not publish it. If a build was "
        "interrupted, rerun the same `atlas build` command to finish it; otherwise rebuild the damaged configs.",
        err=True,
    )
    click.get_current_context().exit(EXIT_PROBLEMS)
