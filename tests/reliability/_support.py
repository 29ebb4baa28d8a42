"""Shared pieces of the reliability tests: a tiny fixed corpus, a fast fake engine, atlas snapshots.

The crash tests kill dozens of builds; a real model and the WordNet corpus would cost seconds each. The
fake engine routes deterministically (no torch) and the corpus is a fixed handful of texts, so what the
tests exercise is the build's own write protocol (lock, corpora, shards, markers, manifest, card).

Run as a script it is the crash-test driver: `python _support.py build --out DIR ...` is `atlas build`
with the fake engine (`--engine fake`) and the fixed corpus installed (ROUTING_ATLAS_TEST_KILL_AT works);
`python _support.py jobs JOBS.json` runs many such builds, each in a forked child (see `run_jobs`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.schema import (
    SENSE_PAIRS,
    SENSE_PAIRS_SCHEMA,
    SENSES,
    SENSES_SCHEMA,
    SUBSTITUTIONS,
    SUBSTITUTIONS_SCHEMA,
)
from atlas_build.engines.base import Engine, RoutingBatch

FAKE_MODEL = "fake-moe"
FAKE_ROUTING = "routing-fake-moe"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# `atlas build` options of every fake build: one text per shard, so ten shards.
FAKE_ARGS = ["--model", FAKE_MODEL, "--engine", "fake", "--max-lemmas", "2", "--texts-per-shard", "1"]
FAKE_ARGS += ["--no-progress"]

# (example_id, text, target) of the senses corpus: plain, unusual Unicode and whitespace, one long text.
SENSES_TEXTS = [
    ("bank.n|bank.n.01|0", "The bank of the river was muddy after the rain.", "bank"),
    ("bank.n|bank.n.02|0", "She opened an account at the bank on Monday.", "bank"),
    ("bank.n|bank.n.02|1", "Cafe\u0301 nai\u0308ve \U0001f600 \u2014 the bank\u2019s fa\u00e7ade", "bank"),
    (
        "bank.n|bank.n.02|2",
        "A\u200db \u05e9\u05dc\u05d5\u05dd \u0627\u0644\u0633\u0644\u0627\u0645 bank x",
        "bank",
    ),
    ("bank.n|bank.n.01|1", "tab\tbank\nnew  line\r\n\u00a0\u2003end", "bank"),
    (
        "bank.n|bank.n.01|2",
        "\U0001d518\U0001d52b\U0001d526 \U0001f469\u200d\U0001f469\u200d\U0001f467 bank \U00020000 family",
        "bank",
    ),
    (
        "bank.n|bank.n.02|3",
        "The bank "
        + " ".join(f"approved loan number {i} for the small shop on the corner" for i in range(4)),
        "bank",
    ),
]
SUBSTITUTION_TEXTS = [
    ("bank.n|bank.n.01|0|synonym|shore", "bank.n|bank.n.01|0", "The shore of the river was muddy.", "shore"),
    (
        "bank.n|bank.n.02|0|synonym|lender",
        "bank.n|bank.n.02|0",
        "She opened an account at the lender.",
        "lender",
    ),
    (
        "bank.n|bank.n.02|0|other-sense|shore",
        "bank.n|bank.n.02|0",
        "She opened an account at the shore.",
        "shore",
    ),
]


def fake_wordnet_corpora(
    wordnet_dir=None, max_lemmas=None, seed=0, progress=False, log=None
) -> dict[str, pa.Table]:
    """Stands in for `atlas_build.corpora.build_wordnet_corpora`: the fixed corpus above."""
    senses = []
    for example_id, text, target in SENSES_TEXTS:
        start = text.index(target)
        synset = example_id.split("|")[1]
        senses.append(
            {
                "example_id": example_id,
                "lemma": "bank",
                "pos": "n",
                "synset": synset,
                "sense_key": f"bank%1:17:0{synset[-1]}::",
                "sense_number": int(synset[-1]),
                "lemma_n_senses": 2,
                "lexname": "noun.object",
                "gloss": "a gloss",
                "text": text,
                "target_start": start,
                "target_end": start + len(target),
                "target_form": target,
                "source": "test:fixed",
            }
        )
    pairs = [
        {
            "pair_id": "bank.n|p0",
            "lemma": "bank",
            "pos": "n",
            "example_a": SENSES_TEXTS[0][0],
            "example_b": SENSES_TEXTS[1][0],
            "synset_a": "bank.n.01",
            "synset_b": "bank.n.02",
            "same_sense": False,
        }
    ]
    subs = []
    for sub_id, base, text, target in SUBSTITUTION_TEXTS:
        start = text.index(target)
        subs.append(
            {
                "substitution_id": sub_id,
                "example_id": base,
                "lemma": "bank",
                "pos": "n",
                "relation": sub_id.split("|")[3],
                "substitute": target,
                "substitute_synset": f"{target}.n.01",
                "text": text,
                "target_start": start,
                "target_end": start + len(target),
                "source": "test:fixed",
            }
        )
    return {
        SENSES: pa.Table.from_pylist(senses, schema=SENSES_SCHEMA),
        SENSE_PAIRS: pa.Table.from_pylist(pairs, schema=SENSE_PAIRS_SCHEMA),
        SUBSTITUTIONS: pa.Table.from_pylist(subs, schema=SUBSTITUTIONS_SCHEMA),
    }


def fake_corpus_counts(tables: dict[str, pa.Table]) -> dict:
    """`atlas_build.corpora.corpus_counts` of the fixed corpus, without importing nltk (the driver's
    start-up time); test_fakes_match_the_real_corpus_counts keeps the two equal."""
    senses, pairs, subs = tables[SENSES], tables[SENSE_PAIRS], tables[SUBSTITUTIONS]
    groups = sorted(
        set(zip(senses.column("lemma").to_pylist(), senses.column("pos").to_pylist(), strict=True))
    )
    poses = [pos for _, pos in groups]
    same = sum(pairs.column("same_sense").to_pylist())
    pair_groups = set(zip(pairs.column("lemma").to_pylist(), pairs.column("pos").to_pylist(), strict=True))
    relations = subs.column("relation").to_pylist()
    return {
        "lemmas": len(groups),
        "lemmas_by_pos": {pos: poses.count(pos) for pos in sorted(set(poses))},
        "synsets": len(set(senses.column("synset").to_pylist())),
        "examples": senses.num_rows,
        "pairs": {"total": pairs.num_rows, "same": same, "different": pairs.num_rows - same},
        "pair_lemmas": len(pair_groups),
        "substitutions": {
            "total": len(relations),
            **{r: relations.count(r) for r in ("synonym", "other-sense")},
        },
    }


def _fixed_wordnet_dir(wordnet_dir=None) -> Path:
    return Path("/fixed-corpus")


def text_ids() -> set[str]:
    return {row[0] for row in SENSES_TEXTS} | {row[0] for row in SUBSTITUTION_TEXTS}


class FakeEngine(Engine):
    """Deterministic routing without a model: whitespace tokens after a BOS, experts from the token id."""

    name = "fake"
    N_EXPERTS, TOP_K, MOE_LAYERS = 16, 4, (1, 2)

    def __init__(self, model: str, **options):
        self.model_id = model
        self.options = options
        FakeEngine.last_options = options

    @property
    def tokenizer(self):
        return None

    def route(self, texts: list[str]) -> RoutingBatch:
        counts, ids, tokens, spans = [], [], [], []
        for text in texts:
            words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            counts.append(len(words) + 1)
            ids.append(0)
            tokens.append("<bos>")
            spans.append((-1, -1))
            for word, start, end in words:
                ids.append(zlib.crc32(word.encode()) % 50000 + 1)
                tokens.append(word)
                spans.append((start, end))
        token_ids = np.array(ids, dtype=np.int64)
        layers = np.arange(len(self.MOE_LAYERS))[None, :, None]
        ranks = np.arange(self.TOP_K)[None, None, :]
        experts = ((token_ids[:, None, None] + 5 * layers) + 3 * ranks) % self.N_EXPERTS
        weights = np.broadcast_to(np.array([0.4, 0.3, 0.2, 0.1], np.float32), experts.shape).copy()
        return RoutingBatch(
            token_counts=np.array(counts, dtype=np.int64),
            token_ids=token_ids,
            tokens=tokens,
            char_spans=np.array(spans, dtype=np.int32).reshape(-1, 2),
            experts=experts.astype(np.int16),
            weights=weights,
        )

    def model_row(self) -> dict:
        return {
            "model_id": self.model_id,
            "revision": None,
            "checkpoint_sha256": None,
            "architecture": "FakeMoeForCausalLM",
            "model_type": "fake_moe",
            "router_adapter": "fake",
            "num_hidden_layers": 3,
            "moe_layers": list(self.MOE_LAYERS),
            "n_routed_experts": self.N_EXPERTS,
            "top_k": self.TOP_K,
            "n_shared_experts": 0,
            "scoring_func": "softmax",
            "topk_method": "greedy",
            "n_group": None,
            "topk_group": None,
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
            "total_params": 1000,
            "active_params": 500,
            "dtype": "float32",
            "engine": self.name,
            "tokenizer": self.model_id,
            "add_bos_token": True,
            "random_init": True,
            "seed": 0,
        }


def install_fakes(setattr_, setitem) -> None:
    """Install the fake engine (`--engine fake`) and the fixed corpus with the given patchers.

    `setattr_(obj, name, value)` and `setitem(mapping, key, value)`: monkeypatch's, or plain ones.
    """
    import atlas_build.corpora as corpora
    from atlas_build.engines import ENGINES

    setitem(ENGINES._entries, "fake", f"{__name__}:FakeEngine")
    setattr_(corpora, "build_wordnet_corpora", fake_wordnet_corpora)
    setattr_(corpora, "corpus_counts", fake_corpus_counts)
    setattr_(corpora, "find_wordnet_dir", _fixed_wordnet_dir)
    setattr_(corpora, "describe_source", lambda wordnet_dir=None: "fixed test corpus (not WordNet)")
    setattr_(corpora, "CORPUS_NOTES", ["fixed test corpus for the reliability tests"])


def _stub_corpora_package() -> None:
    """The driver: `atlas_build.corpora` without its nltk import (seconds per process), submodules intact."""
    import types

    import atlas_build

    stub = types.ModuleType("atlas_build.corpora")
    stub.__path__ = [str(Path(atlas_build.__file__).parent / "corpora")]
    sys.modules["atlas_build.corpora"] = stub
    atlas_build.corpora = stub


def driver_command(*args: str) -> list[str]:
    """Command line of the crash-test driver (this file as a script)."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def run_driver_jobs(jobs: list[dict], jobs_file: Path) -> dict[str, int]:
    """Run `jobs` (see `run_jobs`) in one driver process; returns {name: exit code} (-9: SIGKILL)."""
    import json
    import subprocess

    Path(jobs_file).write_text(json.dumps(jobs))
    proc = subprocess.run(
        driver_command("jobs", str(jobs_file)),
        env=driver_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def driver_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ROUTING_ATLAS_TEST_KILL_AT"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


# ---- looking at an atlas directory ------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` (hidden ones included); {} when absent."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def temp_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob(".*.tmp"))


def routing_on_disk(root: Path, config: str) -> pa.Table:
    """Every Parquet file the data glob of `config` matches (what a loader sees), concatenated."""
    files = sorted((Path(root) / config).glob(f"{config}-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def assert_rows_complete(root: Path, config: str, expected_tokens: dict[str, int]) -> None:
    """No duplicate and no missing (source_id, token_index); every text has its token count."""
    table = routing_on_disk(root, config)
    keys = list(
        zip(table.column("source_id").to_pylist(), table.column("token_index").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)), "duplicate (source_id, token_index) rows"
    counts: dict[str, int] = {}
    for source_id, index in keys:
        counts[source_id] = max(counts.get(source_id, 0), index + 1)
    assert counts == expected_tokens
    assert sum(expected_tokens.values()) == table.num_rows


def token_counts(root: Path, config: str) -> dict[str, int]:
    table = routing_on_disk(root, config)
    counts: dict[str, int] = {}
    for source_id in table.column("source_id").to_pylist():
        counts[source_id] = counts.get(source_id, 0) + 1
    return counts


def done_shards(root, reference) -> set[str]:
    """Shards that are complete in `root`: file and marker byte-identical to the reference build's."""
    ref, now = snapshot(reference), snapshot(root)
    done = set()
    for rel, digest in ref.items():
        if rel.startswith(f"{FAKE_ROUTING}/") and now.get(rel) == digest:
            index = rel.rsplit("-", 1)[1].split(".")[0]
            marker = f".atlas/shards/{FAKE_ROUTING}/{index}.json"
            if now.get(marker) == ref[marker]:
                done.add(rel)
    return done


def assert_same_atlas(root, reference, routing=FAKE_ROUTING) -> None:
    """`root` is the reference atlas: data hashes, rows, markers; nothing left over."""
    from atlas_build.atlas.manifest import Manifest
    from validation.integrity import verify_files

    manifest, expected = Manifest.load(root), Manifest.load(reference)
    assert manifest.data_hashes() == expected.data_hashes()
    assert verify_files(root, manifest) == []
    assert temp_files(root) == []
    assert not (root / ".atlas" / "lock").exists()
    assert_rows_complete(root, routing, token_counts(reference, routing))
    assert set(token_counts(root, routing)) == text_ids()
    state = {k: v for k, v in snapshot(root).items() if k.startswith(".atlas/shards/")}
    assert state == {k: v for k, v in snapshot(reference).items() if k.startswith(".atlas/shards/")}
    assert routing in (root / "README.md").read_text(encoding="utf-8")


def run_jobs(jobs_file: Path) -> None:
    """Run the builds of `jobs_file` one after another, each in a forked child, and print their exit codes.

    `jobs_file`: JSON list of {"name", "kill_at" (or null), "args"} (the `atlas` arguments). A forked child
    is a separate process with every module already imported (a fresh interpreter per crash costs ~2 s),
    killed for real by SIGKILL. Prints {name: exit code}, a signal as its negative number.
    """
    import json
    import threading

    import dataset_cards.render  # noqa: F401 - imported once here, not in every child
    from atlas_build.cli import main

    # Forking is only safe without other threads (none holds a lock the child would inherit).
    assert threading.active_count() == 1, threading.enumerate()
    results = {}
    for job in json.loads(Path(jobs_file).read_text()):
        log = Path(f"{job['log']}")
        pid = os.fork()
        if pid == 0:  # the child: one build, then exit without running the parent's cleanup
            code = 1
            try:
                with open(log, "w") as handle:
                    os.dup2(handle.fileno(), 1)
                    os.dup2(handle.fileno(), 2)
                if job["kill_at"]:
                    os.environ["ROUTING_ATLAS_TEST_KILL_AT"] = job["kill_at"]
                main(job["args"], prog_name="atlas")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        results[job["name"]] = os.waitstatus_to_exitcode(status)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _stub_corpora_package()
    install_fakes(setattr, lambda mapping, key, value: mapping.__setitem__(key, value))
    if sys.argv[1] == "jobs":
        run_jobs(Path(sys.argv[2]))
    else:
        from atlas_build.cli import main

        main(sys.argv[1:], prog_name="atlas")
