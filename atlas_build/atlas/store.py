"""Writing whole configs into an atlas directory: shards + manifest entries."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.writer import WrittenFile, write_parquet_atomic

DEFAULT_SHARD_ROWS = 250_000


def write_config(
    root: Path,
    manifest: Manifest,
    config: str,
    table: pa.Table,
    schema: pa.Schema,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> list[WrittenFile]:
    """Replace `config` in the atlas with `table`, split into shards of at most `shard_rows` rows.

    The manifest is updated in memory; the caller saves it once the step is complete. An empty table
    removes the config: `datasets` cannot read a Parquet file without rows, so none is written.
    """
    layout = AtlasLayout(root)
    config_dir = layout.config_dir(config)
    n_shards = -(-table.num_rows // shard_rows)
    written = [
        write_parquet_atomic(table.slice(i * shard_rows, shard_rows), layout.shard_path(config, i), schema)
        for i in range(n_shards)
    ]
    keep = {w.path.name for w in written}
    # Shards of an earlier, larger version of this config would otherwise be picked up by the glob.
    for stale in config_dir.glob(f"{config}-*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    manifest.drop_config(config)
    for w in written:
        manifest.record(root, config, w)
    return written


def read_config(root: Path, manifest: Manifest, config: str) -> pa.Table:
    """A fixed-schema config of the atlas, read through the manifest's file list (empty when absent)."""
    import pyarrow.parquet as pq

    from atlas_build.atlas.schema import FIXED_SCHEMAS

    files = manifest.config_files(config)
    if not files:
        return FIXED_SCHEMAS[config].empty_table()
    return pa.concat_tables([pq.read_table(Path(root) / rel, schema=FIXED_SCHEMAS[config]) for rel in files])
