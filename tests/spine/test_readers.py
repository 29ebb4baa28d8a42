"""Every config of a built atlas reads in the tools researchers use: pyarrow, `datasets` (also streaming),
pandas, polars and DuckDB, each with the same values as pyarrow's.

DuckDB matters twice: it is what people run quick queries with, and what the Hub's SQL console and viewer
search run on. Before issue 12 it refused every routing config (float16 weights written BYTE_STREAM_SPLIT).
Issue 28 split the float32 `scores` by byte (BYTE_STREAM_SPLIT), so a `--scores` routing config is read here
too. The atlas routing comes from tiny-deepseek-v3, RANDOM-INIT: this checks files, not findings.
"""

from __future__ import annotations

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas_build.atlas.manifest import Manifest

from .test_build import card_configs

duckdb = pytest.importorskip("duckdb", reason="DuckDB is a test dependency: pip install -e '.[dev]'")
pl = pytest.importorskip("polars", reason="polars is a test dependency: pip install -e '.[dev]'")


def canonical_type(t: pa.DataType) -> pa.DataType:
    """One type per kind of value, whatever the reader made of it: float16/32 -> float64 (exact),
    integers -> int64, strings -> string, every list kind -> list, struct fields likewise."""
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(canonical_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, canonical_type(f.type)) for f in t])
    return t


def canonical(table: pa.Table) -> pa.Table:
    columns = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        target = canonical_type(column.type)
        if _has_half(column.type):  # pyarrow has no direct float16 -> float64 cast
            column = column.cast(_half_to_single(column.type))
        columns.append(column.cast(target))
    return pa.table(columns, names=table.column_names)


def _has_half(t: pa.DataType) -> bool:
    return t == pa.float16() or (hasattr(t, "value_type") and _has_half(t.value_type))


def _half_to_single(t: pa.DataType) -> pa.DataType:
    if t == pa.float16():
        return pa.float32()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_half_to_single(t.value_type), t.list_size)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_half_to_single(t.value_type))
    return t


@pytest.fixture(scope="module")
def atlas(small_atlas, tmp_path_factory):
    """The small atlas plus reasoning traces routed into it: every kind of config (corpora, traces with its
    segment structs, models, routing with non-null segments and markers)."""
    import shutil
    from pathlib import Path

    from atlas_build.builder import BuildConfig, run_build

    root = tmp_path_factory.mktemp("readers") / "atlas"
    shutil.copytree(small_atlas, root)
    sample = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "sample.jsonl"
    config = BuildConfig(
        model="tiny-deepseek-v3", out=root, corpus="traces", traces=str(sample), progress=False
    )
    run_build(config, log=lambda *_: None)
    # A second model slug with `--scores 16`: the float32 score columns, written BYTE_STREAM_SPLIT.
    scored = BuildConfig(
        model="tiny-deepseek-v3",
        out=root,
        corpus="traces",
        traces=str(sample),
        scores=16,
        slug="tiny-deepseek-v3-scores",
        progress=False,
    )
    run_build(scored, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def configs(atlas) -> dict[str, tuple[list[str], pa.Table]]:
    """config -> (its data files, pyarrow's reading of them): the reference every reader is held to."""
    manifest = Manifest.load(atlas)
    names = card_configs(atlas)
    assert set(names) == set(manifest.configs()) and "traces" in names
    # Every encoding the writer chooses is among what the readers are held to.
    scored = pq.ParquetFile(atlas / manifest.config_files("routing-tiny-deepseek-v3-scores")[0]).metadata
    encodings = {scored.row_group(0).column(i).path_in_schema: scored.row_group(0).column(i).encodings
                 for i in range(scored.num_columns)}  # fmt: skip
    assert "BYTE_STREAM_SPLIT" in encodings["scores.list.element.list.element"]
    assert "RLE_DICTIONARY" in encodings["experts.list.element.list.element"]
    out = {}
    for name in names:
        files = [str(atlas / rel) for rel in manifest.config_files(name)]
        out[name] = (files, canonical(pa.concat_tables([pq.read_table(f) for f in files])))
    return out


def assert_same(got: pa.Table, want: pa.Table, reader: str, config: str) -> None:
    got = canonical(got.select(want.column_names))
    assert got.num_rows == want.num_rows, (
        f"{reader} read {got.num_rows} rows of {config}, pyarrow {want.num_rows}"
    )
    for name in want.column_names:
        assert got.column(name).equals(want.column(name)), f"{reader} differs from pyarrow in {config}.{name}"


def test_duckdb_reads_every_config_with_pyarrows_values(configs):
    for name, (files, want) in configs.items():
        got = duckdb.sql(f"SELECT * FROM read_parquet({files!r})").fetch_arrow_table()
        assert_same(got, want, "DuckDB", name)
    # The quick query a researcher types, over the config's folder glob.
    routing = next(name for name in configs if name.startswith("routing-"))
    folder = configs[routing][0][0].rsplit("/", 1)[0]
    ((count,),) = duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet' WHERE is_target").fetchall()
    assert count == pa.compute.sum(configs[routing][1].column("is_target")).as_py()


def test_polars_reads_every_config_with_pyarrows_values(configs):
    for name, (files, want) in configs.items():
        assert_same(pl.read_parquet(files).to_arrow(), want, "polars", name)


def test_pandas_reads_every_config_with_pyarrows_values(configs):
    import pandas as pd
    import pyarrow.compute as pc

    for name, (files, want) in configs.items():
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        got = pa.Table.from_pandas(frame, preserve_index=False)
        # pandas makes an integer column holding nulls float64 with NaN (e.g. models.scores_top_m without
        # --scores): the same values, so NaN is read back as the null it stands for.
        for i, column in enumerate(got.column_names):
            if pa.types.is_floating(got.schema.field(column).type) and pa.types.is_integer(
                want.schema.field(column).type
            ):
                values = got.column(column)
                restored = pc.if_else(pc.is_nan(values), None, values).cast(want.schema.field(column).type)
                got = got.set_column(i, column, restored)
            elif pa.types.is_null(got.schema.field(column).type):
                # A column that is null in every row (e.g. models.router_input_layers without
                # --router-inputs) comes back from pandas untyped: the same nulls, typed as stored.
                got = got.set_column(i, column, pa.nulls(got.num_rows, want.schema.field(column).type))
        assert_same(got, want, "pandas", name)


def test_datasets_reads_every_config_with_pyarrows_values_also_streaming(atlas, configs):
    for name, (_, want) in configs.items():
        ds = datasets.load_dataset(str(atlas), name, split="train")
        assert_same(ds.data.table, want, "datasets", name)
        streamed = datasets.load_dataset(str(atlas), name, split="train", streaming=True)
        rows = [{key: row[key] for key in want.column_names} for row in streamed]
        assert rows == want.to_pylist(), f"datasets (streaming) differs from pyarrow in {name}"
