"""The card's and the README's "load a local copy safely" snippets do what they say: two atlases in folders of
one name, with the same card sizes and other routing, each load their own rows through one cache root.
SYNTHETIC atlases (random routing)."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq

import tests.metrics.test_exact_reads as exact

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(text: str, needle: str) -> str:
    """The first ```python block of `text` that contains `needle`."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if needle in b)


def run_snippet(code: str, atlas: Path, home: Path, monkeypatch) -> datasets.Dataset:
    """Exec the snippet for `atlas` (its path substituted), then load the routing the same way."""
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    code = re.sub(r'atlas = Path\("[^"]*"\)', f"atlas = Path({str(atlas)!r})", code)
    code = code.replace("routing-tiny-deepseek-v3", exact.ROUTING)  # the README's demo model
    namespace: dict = {}
    exec(compile(code, "<snippet>", "exec"), namespace)  # noqa: S102 - the documented snippet itself
    return datasets.load_dataset(
        str(namespace["atlas"]), exact.ROUTING, split="train", cache_dir=str(namespace["cache"])
    )


def test_the_documented_snippets_load_each_atlas_own_rows(tmp_path, monkeypatch):
    a = exact.write_synthetic_atlas(tmp_path / "runs" / "a" / "atlas", routing_fn=exact.relabelled(0))
    b = exact.twin_of(a, tmp_path / "runs" / "b" / "atlas")
    card = snippet((a / "README.md").read_text(), "cache_dir")
    assert 'Path(".")' in card  # a local card names its own folder, never the build machine's path
    for code in (card, snippet(README.read_text(), "cache_dir")):
        home = tmp_path / f"home-{len(code)}"
        for root in (a, b, a):
            loaded = run_snippet(code, root, home, monkeypatch).data.table
            files = pq.read_table(next((root / exact.ROUTING).glob("*.parquet")))
            assert loaded.column("experts").equals(files.column("experts")), root
