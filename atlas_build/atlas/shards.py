"""The shard-completion protocol: a routing shard counts as done only when its marker matches.

`.atlas/shards/<config>/[<part>-]<shard>.json` records the shard file's sha256, rows, bytes and the hash of the
shard's inputs (texts + run key). A rerun keeps a shard whose marker, inputs and file checksum all agree and
redoes every other one. The local and Ray executors both write markers through here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.texts import TextItem
from atlas_build.atlas.writer import WrittenFile, sha256_file, write_text_atomic


def shard_inputs_sha256(items: list[TextItem], run_key: str = "") -> str:
    """Hash of a shard's texts and `run_key` (what else its bytes depend on): a marker only counts for the same."""
    digest = hashlib.sha256()
    if run_key:
        digest.update(run_key.encode())
    for item in items:
        digest.update(json.dumps(asdict(item), ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def done_shard(
    layout: AtlasLayout, config: str, shard: int, inputs_sha256: str, part: str = ""
) -> WrittenFile | None:
    """The finished shard, when its marker matches these inputs and the file's checksum (else None)."""
    marker = layout.marker_path(config, shard, part)
    path = layout.shard_path(config, shard, part)
    if not marker.exists() or not path.exists():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(done, dict) or done.get("inputs_sha256") != inputs_sha256:
        return None
    # The one read of the file on resume: its checksum, checked against the marker and then recorded.
    digest = sha256_file(path)
    rows = done.get("rows")
    if done.get("sha256") != digest or not isinstance(rows, int):
        return None
    fingerprint = done.get("rows_fingerprint")
    return WrittenFile(
        path, digest, rows, path.stat().st_size, fingerprint if isinstance(fingerprint, dict) else None
    )


def mark_shard_done(
    layout: AtlasLayout, config: str, shard: int, written: WrittenFile, inputs_sha256: str, part: str = ""
) -> None:
    payload = {
        "sha256": written.sha256,
        "rows": written.rows,
        "bytes": written.bytes,
        "inputs_sha256": inputs_sha256,
        **({"rows_fingerprint": written.rows_fingerprint} if written.rows_fingerprint else {}),
    }
    write_text_atomic(layout.marker_path(config, shard, part), json.dumps(payload) + "\n")
