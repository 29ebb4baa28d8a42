"""docs/architecture.md is the code's own map: its floor table is `FLOORS`, every room and inner room of the
house is described there, and no source file grows past 600 lines without saying why in its first lines."""

from __future__ import annotations

import re

from tests.architecture.test_imports import FLOORS, PACKAGES, REPO

DOC = REPO / "docs" / "architecture.md"
MAX_LINES = 600
# The reason must be in the module's first lines, where a reader opening the file sees it.
REASON = re.compile(r"over 600 lines", re.IGNORECASE)
REASON_WITHIN = 12


def documented_floors() -> dict[str, int]:
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([\w.]+)`\s*\|", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    return {room: int(floor) for floor, room in rows}


def test_the_floor_table_is_floors():
    documented = documented_floors()
    assert documented, "docs/architecture.md has no floor table (| floor | `room` | holds |)"
    missing = sorted(set(FLOORS) - set(documented))
    extra = sorted(set(documented) - set(FLOORS))
    moved = sorted(
        f"{room}: FLOORS {FLOORS[room]}, docs {documented[room]}"
        for room in set(FLOORS) & set(documented)
        if FLOORS[room] != documented[room]
    )
    assert not missing, f"rooms of FLOORS missing from docs/architecture.md: {missing}"
    assert not extra, f"rooms in docs/architecture.md that FLOORS does not have: {extra}"
    assert not moved, f"rooms on another floor in docs/architecture.md: {moved}"


def test_every_package_folder_is_described():
    """Each room folder and each inner room of metrics has its paragraph or line in the doc."""
    text = DOC.read_text(encoding="utf-8")
    folders = [p for p in sorted((REPO / "atlas_build").iterdir()) if (p / "__init__.py").is_file()]
    missing = [f"{p.name}/" for p in folders if f"**`{p.name}/`.**" not in text]
    inner = [p for p in sorted((REPO / "atlas_build" / "metrics").iterdir()) if (p / "__init__.py").is_file()]
    missing += [f"metrics/{p.name}/" for p in inner if f"`metrics/{p.name}/`" not in text]
    assert not missing, f"folders not described in docs/architecture.md: {missing}"


def long_files(paths) -> list[str]:
    """Files over MAX_LINES lines whose first lines do not say why."""
    long = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not REASON.search("\n".join(lines[:REASON_WITHIN])):
            long.append(
                f"{path.name} ({len(lines)} lines)"
                if not path.is_relative_to(REPO)
                else f"{path.relative_to(REPO)} ({len(lines)} lines)"
            )
    return long


def test_no_source_file_over_600_lines_without_a_reason():
    long = long_files(
        path for package in (*PACKAGES, "bench") for path in sorted((REPO / package).rglob("*.py"))
    )
    assert not long, (
        f"files over {MAX_LINES} lines whose first {REASON_WITHIN} lines do not say why "
        f"('Over 600 lines: <reason>'), split them by role: {long}"
    )


def test_the_size_check_catches_a_planted_long_file(tmp_path):
    """The check itself: a 601-line module without a reason is reported, the same with a reason is not,
    and a 600-line one is not."""
    body = "\n".join(["x = 1"] * (MAX_LINES + 1))
    (tmp_path / "long.py").write_text(body)
    (tmp_path / "reasoned.py").write_text('"""A module.\n\n(Over 600 lines: one table.)\n"""\n' + body)
    (tmp_path / "short.py").write_text("\n".join(["x = 1"] * MAX_LINES))
    assert long_files(sorted(tmp_path.glob("*.py"))) == [f"long.py ({MAX_LINES + 1} lines)"]
