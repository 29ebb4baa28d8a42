"""Where `atlas build` may write: `check_out_dir` refuses unsafe `--out` folders before anything is written.

An atlas is written only into
  - a folder that does not exist yet (it is created),
  - an empty folder,
  - an existing atlas: a folder with a routing-atlas `manifest.json` of this schema version, or with the
    `.atlas/` state folder of an interrupted build (which resumes).
Everything else is refused with the reason and the way out: a folder holding other files (a project folder:
its README.md would be replaced by the card), the root or the home folder, a folder inside another atlas
(that atlas's `verify` would find files it does not list), a file, a path below a file, an unexpanded `~`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from atlas_build.atlas.layout import MANIFEST, STATE_DIR
from atlas_build.atlas.manifest import FORMAT, Manifest
from atlas_build.errors import BuildOptionsError

WAY_OUT = "pass --out with a new or empty folder, or an atlas this command built"


# What a build keeps in its state folder (`atlas.lock`, `atlas.shards`): a `.atlas` folder holding anything
# else belongs to some other program, and does not make its parent an atlas.
STATE_ENTRIES = {"lock", "shards", "runs"}


def _is_atlas(folder: Path) -> bool:
    """A routing-atlas directory: its manifest says so, or it has the state folder of a build (an
    interrupted first build has no manifest yet)."""
    state = folder / STATE_DIR
    if state.is_dir() and not state.is_symlink():
        try:
            if set(os.listdir(state)) <= STATE_ENTRIES:
                return True
        except OSError:
            pass
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def check_out_dir(out: Path | str) -> Path:
    """Refuse an `--out` that is not safe to write an atlas into; return it (`~` expanded).

    Raises:
        BuildOptionsError: one line with the reason and the way out; nothing has been written.
    """
    text = str(out)
    if text.startswith("~"):
        expanded = Path(text).expanduser()
        if str(expanded).startswith("~"):
            raise BuildOptionsError(f"--out {text}: cannot expand '~' here; {WAY_OUT} (an absolute path)")
        out = expanded
    out = Path(out)
    resolved = out.resolve()
    if resolved == Path(resolved.anchor):
        raise BuildOptionsError(f"--out {out} is the root of the file system; {WAY_OUT}")
    home = Path.home().resolve()
    if resolved == home:
        raise BuildOptionsError(f"--out {out} is your home folder; {WAY_OUT}, e.g. --out {home}/atlas")
    # The nearest existing ancestor must be a folder (a path below a file cannot be created).
    for parent in [resolved, *resolved.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == resolved else f"is below the file {parent}"
                raise BuildOptionsError(f"--out {out} {what}; {WAY_OUT}")
            break
    for parent in resolved.parents:
        if _is_atlas(parent):
            raise BuildOptionsError(
                f"--out {out} is inside the atlas {parent}: its files would break that atlas; {WAY_OUT} "
                "outside any atlas"
            )
    if not resolved.exists():
        return out
    state = out / STATE_DIR
    if state.is_symlink():
        raise BuildOptionsError(
            f"{state} is a symbolic link: a build keeps its state inside the atlas only; remove the link "
            "or build into another folder"
        )
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    if _is_atlas(out):
        if (out / MANIFEST).is_file():
            Manifest.load(out)  # a foreign or damaged manifest, another schema version: refused by name
        return out
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    raise BuildOptionsError(
        f"--out {out} already holds files that are not an atlas ({shown}); nothing was written: {WAY_OUT}"
    )
