"""Where things live inside an atlas directory.

DIR/README.md                             dataset card (YAML `configs:` lists every config)
DIR/manifest.json                         every data file with sha256 and rows; build records
DIR/<config>/<config>-<shard:05d>.parquet data files, one folder per config
DIR/.atlas/                               build state: shard markers, lock (not published)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from atlas_build.atlas.schema import ROUTING_PREFIX, check_slug
from atlas_build.errors import AtlasError

MANIFEST = "manifest.json"
CARD = "README.md"
STATE_DIR = ".atlas"


class UnsafeStateError(AtlasError):
    """A path of the atlas's build state (`.atlas/...`) is a symbolic link: it is refused, never followed."""


@dataclass(frozen=True)
class AtlasLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def card_path(self) -> Path:
        return self.root / CARD

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def config_dir(self, config: str) -> Path:
        if config.startswith(ROUTING_PREFIX):
            check_slug(config[len(ROUTING_PREFIX) :])
        path = (self.root / config).resolve()
        # Config names come from options and data: never let one point outside the atlas.
        if path.parent != self.root.resolve():
            raise ValueError(f"config name {config!r} would write outside the atlas directory {self.root}")
        return self.root / config

    def shard_path(self, config: str, shard: int, part: str = "") -> Path:
        """`<config>/<config>-[<part>-]<shard:05d>.parquet`; `part` keeps the shards of one corpus (e.g.
        traces) apart from another's inside the same routing config."""
        return self.config_dir(config) / f"{config}-{_part_prefix(part)}{shard:05d}.parquet"

    def marker_path(self, config: str, shard: int, part: str = "") -> Path:
        self.config_dir(config)
        return self.state_path("shards", config, f"{_part_prefix(part)}{shard:05d}.json")

    def state_path(self, *parts: str) -> Path:
        """`.atlas/<parts...>`, refused when the state folder or any folder or file on the way is a symbolic
        link: a resumed build would otherwise write its markers wherever the link points, outside the atlas.

        Raises:
            UnsafeStateError: naming the link and the way out.
        """
        path = self.state_dir
        for part in ("", *parts):
            path = path / part if part else path
            if path.is_symlink():
                raise UnsafeStateError(
                    f"{path.relative_to(self.root).as_posix()} is a symbolic link (to {os.readlink(path)}): the "
                    "build state of an atlas stays inside it, so it is refused and never followed. Remove the "
                    "link and rerun"
                )
        return path

    def shard_name_pattern(self, config: str, part: str = "") -> re.Pattern:
        """Matches the file names of one part's shards, and no other part's."""
        return re.compile(rf"^{re.escape(config)}-{re.escape(_part_prefix(part))}\d{{5}}\.parquet$")

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def data_glob(self, config: str) -> str:
        return f"{config}/{config}-*.parquet"


def _part_prefix(part: str) -> str:
    if part and not re.fullmatch(r"[a-z][a-z0-9]*", part):
        raise ValueError(f"invalid shard part {part!r}: lower-case letters and digits")
    return f"{part}-" if part else ""
