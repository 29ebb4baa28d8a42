"""`atlas verify DIR`: recompute every data file's checksum and compare the files with `manifest.json`; the card's
configs with the manifest; a release's `release.json` with its manifest; tell an unfinished build from damage."""

from __future__ import annotations

from pathlib import Path

import click

from atlas_build.errors import EXIT_CHECKS_FAILED

# Exit status when files disagree with the manifest (atlas_build/errors.py: the check found problems).
EXIT_PROBLEMS = EXIT_CHECKS_FAILED
# Order of the table, worst first. stale: a card or release record that no longer describes the files.
STATUSES = ("missing", "truncated", "altered", "unexpected", "stale")


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


def card_rows(root: Path, manifest) -> list[tuple[str, str, str]]:
    """The card's `configs:` against the manifest: a card written before a step that then failed (a full disk)
    misses the step's configs."""
    from atlas_build.atlas.layout import CARD
    from validation.claims import card_configs_problems, read_card

    text, meta, problem = read_card(root)
    if text is None:
        return []
    problems = [problem] if problem else card_configs_problems(root, manifest, meta)
    return [("stale", CARD, p) for p in problems[:5]]


def release_rows(root: Path) -> list[tuple[str, str, str]]:
    """A published release's `release.json` (and validation.json) against its manifest.json."""
    import json

    from atlas_build.atlas.layout import MANIFEST
    from atlas_build.atlas.manifest import RELEASE_MARKER, Manifest, published_release
    from atlas_build.atlas.writer import sha256_file

    if published_release(root) is None:
        return []
    try:
        release = json.loads((root / RELEASE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [("altered", RELEASE_MARKER, f"not readable JSON ({error})")]
    digest = sha256_file(root / MANIFEST)
    rows = []
    if release.get("manifest_sha256") != digest:
        rows.append(
            (
                "altered",
                MANIFEST,
                f"sha256 {_short(digest)}, release.json says {_short(release.get('manifest_sha256'))}",
            )
        )
    try:
        validation = json.loads((root / "validation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        validation = None
    if validation is None:
        rows.append(("missing", "validation.json", "a release holds the report of its validation"))
    elif validation.get("manifest_sha256") != release.get("manifest_sha256"):
        rows.append(("stale", "validation.json", "validated another manifest.json than release.json names"))
    manifest = Manifest.load(root)
    from atlas_build.publish.staging import release_file_rows

    rows += release_file_rows(root, manifest, release)
    configs = manifest.configs()
    recorded = release.get("configs") or {}
    for name in sorted(set(configs) | set(recorded)):
        have, said = configs.get(name), recorded.get(name) or {}
        if have is None or have["rows"] != said.get("rows") or len(have["files"]) != said.get("files"):
            rows.append(
                (
                    "stale",
                    RELEASE_MARKER,
                    f"{name}: {said.get('rows')} rows in {said.get('files')} files, the manifest "
                    + (
                        f"{have['rows']} rows in {len(have['files'])} files" if have else "has no such config"
                    ),
                )
            )
    return rows


def unfinished_build(root: Path) -> str | None:
    """Why the atlas is mid-build, or None: the lock file of a build that is running, or that never
    released it (killed). A build that ends in any other way removes it."""
    import fcntl
    import json
    import os
    import time

    from atlas_build.atlas.layout import AtlasLayout

    path = AtlasLayout(root).state_dir / "lock"
    try:
        owner = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started") or 0))
    who = f"pid {owner.get('pid')} on {owner.get('host')!r}, started {started}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return f"a build is writing it now ({who}): wait for it to finish"
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return (
        f"a build of it was interrupted ({who}): rerun the same `atlas build` command to finish it; "
        "it keeps the finished shards"
    )


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
    missing, or unexpected (not in the manifest; e.g. left by an interrupted build), a card whose configs
    are not the manifest's, and for a published release a release.json or validation.json that names
    another manifest. Says whether a build is unfinished (rerun it) rather than the atlas damaged. Symbolic
    links and hidden files in the data folders are refused. Exits 0 when everything matches, 1 otherwise
    (2 when DIRECTORY is not a readable atlas).
    """
    from atlas_build.atlas.manifest import Manifest, ManifestError
    from atlas_build.errors import AtlasError, DamagedAtlasError
    from validation.integrity import verify_files

    if not directory.is_dir():
        raise AtlasError(f"{directory} is not a directory")
    try:
        manifest = Manifest.load(directory)
    except ManifestError as error:
        unfinished = unfinished_build(directory)
        if unfinished:  # killed before its first manifest, or while writing it: nothing is damaged
            raise AtlasError(f"{directory} is not finished, not damaged: {unfinished}") from error
        if isinstance(error.__cause__, (OSError, ValueError)):
            raise DamagedAtlasError(
                f"{directory}/manifest.json is damaged ({error.__cause__}): the atlas cannot be verified. "
                "Restore manifest.json, or rebuild into a new directory"
            ) from error
        raise
    rows = classify(verify_files(directory, manifest, hashes=True)) + temp_files(directory)
    rows += card_rows(directory, manifest) + release_rows(directory)
    rows.sort(key=lambda r: (STATUSES.index(r[0]), r[1]))
    unfinished = unfinished_build(directory)
    n_files = len(manifest.files)
    if not rows:
        click.echo(f"ok: the {n_files} data files of {directory} match manifest.json (sha256, bytes, rows)")
        if unfinished:
            click.echo(f"note: {unfinished}", err=True)
        return
    click.echo(format_table(rows))
    counts = ", ".join(
        f"{sum(r[0] == s for r in rows)} {s}" for s in STATUSES if any(r[0] == s for r in rows)
    )
    if unfinished:
        advice = f"Not finished, not damaged: {unfinished}. Do not publish it until then."
    elif all(r[1] == "README.md" for r in rows):
        advice = (
            "The card does not describe the data (a build that failed while writing it?): rerun the same "
            f"`atlas build` command, or `atlas card {directory}`. Do not publish it until then."
        )
    else:
        advice = (
            "Do not publish it. If a build was interrupted, rerun the same `atlas build` command to finish it; "
            "otherwise rebuild the damaged configs (a published release: restore it from its source)."
        )
    click.echo(f"\n{directory}: {counts} (manifest lists {n_files} data files). {advice}", err=True)
    click.get_current_context().exit(EXIT_PROBLEMS)
