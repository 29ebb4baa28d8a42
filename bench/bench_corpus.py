"""How long the WordNet corpus step of a small build takes, the first time and once the senses are cached.

    .venv/bin/python bench/bench_corpus.py [--max-lemmas 12]

Each measurement is a fresh interpreter (imports and WordNet's indexes included, as a user's build pays
them) running `build_wordnet_corpora(max_lemmas=N)` with an empty cache (the full scan of WordNet, cached
afterwards), then twice with that cache. CPU time is reported (wall time on a shared machine is noise),
with the ratio first / cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
started, cpu = time.perf_counter(), time.process_time()
from atlas_build.corpora import build_wordnet_corpora
tables = build_wordnet_corpora(max_lemmas=int(sys.argv[1]), seed=0)
print(json.dumps({"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - started,
                  "rows": tables["senses"].num_rows}))
"""


def run(max_lemmas: int, cache: str) -> dict:
    env = {**os.environ, "ROUTING_ATLAS_CACHE": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(max_lemmas)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lemmas", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = run(args.max_lemmas, cache)
        cached = min((run(args.max_lemmas, cache) for _ in range(2)), key=lambda r: r["cpu_s"])
    assert first["rows"] == cached["rows"], "the cached corpus differs from the scanned one"
    print(
        f"bench_corpus: --max-lemmas {args.max_lemmas} ({first['rows']} sense rows): first build "
        f"{first['cpu_s']:.1f} s CPU (full WordNet scan, then cached), cached {cached['cpu_s']:.1f} s CPU: "
        f"{first['cpu_s'] / cached['cpu_s']:.1f}x faster; wall {first['wall_s']:.1f} s -> {cached['wall_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
