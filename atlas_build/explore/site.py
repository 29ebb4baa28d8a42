"""`atlas explore`: write the static explorer site of an atlas.

Site layout (everything relative, so it opens from `file://` or any static host, offline)::

    SITE/index.html                       the page (hash routes: #/, #/lemma/<lemma.pos>, #/model/<slug>)
    SITE/assets/app.js, sections.js, style.css   the viewer; no library, no CDN
    SITE/data/index.js                    atlas summary, models, one line of counts per lemma
    SITE/data/sentences/<n:05d>.js        every token of lemma n's examples with its experts at every layer
    SITE/data/traces/<n:05d>.js           trace n of the traces config: text, segments, every token's experts
    SITE/data/texts.js                    the user corpora's texts (each one a data/traces/<n>.js page too)
    SITE/data/search.js                   per lemma: its glosses, sense keys, synsets and target tokens
                                          (loaded only when the search box is used)
    SITE/data/lemmas/<n:05d>.js           one lemma: senses, examples, pairs, target routing per model
    SITE/data/models/<slug>.js            a model's row and its metrics.json entry
    SITE/data/models/<slug>/coact-<l>.js  P(j | i) at MoE layer l, when the metrics' .npz is there
    SITE/data/models/<slug>/experts-<l>.js  the expert pages of MoE layer l (`explore/experts.py`)
    SITE/.routing-atlas-explorer          marks the folder as a site, so a rerun may replace it

The site is written into a temporary sibling folder and renamed into place: a failed run leaves the
previous site (or nothing) behind, and a folder that is not an explorer site is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from atlas_build.explore.encode import b64, decode_token, expert_dtype, js_call
from atlas_build.explore.experts import expert_layers
from atlas_build.explore.read import AtlasContent, ExploreError, Lemma, read_atlas

MARKER = ".routing-atlas-explorer"
STATIC_FILES = {
    "index.html": "index.html",
    "app.js": "assets/app.js",
    "sections.js": "assets/sections.js",
    "style.css": "assets/style.css",
}
# Callbacks the data scripts call (defined in app.js).
INDEX_CALLBACK = "atlasIndexLoaded"
SEARCH_CALLBACK = "atlasSearchLoaded"
SENTENCE_CALLBACK = "atlasSentenceLoaded"
TRACE_CALLBACK = "atlasTraceLoaded"
TEXTS_CALLBACK = "atlasTextsLoaded"
LEMMA_CALLBACK = "atlasLemmaLoaded"
MODEL_CALLBACK = "atlasModelLoaded"
COACT_CALLBACK = "atlasCoactLoaded"
EXPERT_CALLBACK = "atlasExpertLoaded"
# Fixed point of P(j | i) in the co-activation files: 1/65535 resolution, 2 bytes a cell.
COACT_SCALE = 65535


@dataclass
class SiteReport:
    """What was written, in bytes."""

    out: Path
    files: int = 0
    total_bytes: int = 0
    index_bytes: int = 0
    lemma_bytes: list[int] = field(default_factory=list)  # per lemma file, index order
    model_bytes: int = 0  # model pages and their co-activation files
    static_bytes: int = 0
    search_bytes: int = 0
    sentence_bytes: int = 0
    n_models: int = 0

    def summary(self) -> str:
        n = len(self.lemma_bytes)
        mean = sum(self.lemma_bytes) / n if n else 0
        return (
            f"{self.files} files, {self.total_bytes / 1e6:.2f} MB: index {self.index_bytes / 1e3:.1f} kB, "
            f"{n} lemma files ({sum(self.lemma_bytes) / 1e6:.2f} MB, {mean / 1e3:.1f} kB each on average, "
            f"{self.n_models} model(s)), model and expert pages {self.model_bytes / 1e6:.2f} MB, sentence and "
            f"trace files {self.sentence_bytes / 1e6:.2f} MB, search {self.search_bytes / 1e3:.1f} kB"
        )


def build_site(atlas_dir: Path, out: Path, metrics_path: Path | None = None) -> SiteReport:
    """Read the atlas in `atlas_dir` and write its explorer site into `out` (created or replaced)."""
    out = Path(out)
    _check_out(out)
    content = read_atlas(Path(atlas_dir), metrics_path)
    created = _missing_parents(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.explore-", dir=out.parent))
    except OSError as error:
        _remove_empty(created)
        raise ExploreError(
            f"cannot write the site into {out} ({error.strerror or error}): give a folder you can write"
        ) from None
    try:
        report = _write(content, temp)
        _swap_into_place(temp, out)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        _remove_empty(created)
        raise ExploreError(
            f"cannot write the site into {out} ({error}); check the folder and free space"
        ) from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    report.out = out
    return report


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExploreError(f"--out {out} is a file: give a new folder (or an earlier `atlas explore` site)")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ExploreError(
            f"--out {out} is a folder with other files in it, not a site written by `atlas explore`: "
            "give a new or empty folder"
        )


def _missing_parents(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet (deepest first); refused when one is below a file."""
    missing = []
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise ExploreError(f"--out {out} is below the file {parent}: give a folder path")
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this site made above `out` when it fails (only while empty: `rmdir`)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _swap_into_place(temp: Path, out: Path) -> None:
    os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a site is meant to be read by others
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        temp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- writing ------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, root: Path, report: SiteReport):
        self.root = root
        self.report = report

    def write(self, rel: str, text: str) -> int:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        path.write_bytes(data)
        self.report.files += 1
        self.report.total_bytes += len(data)
        return len(data)


def _write(content: AtlasContent, root: Path) -> SiteReport:
    report = SiteReport(out=root, n_models=len(content.routing))
    writer = _Writer(root, report)
    static = resources.files("atlas_build.explore") / "static"
    for name, rel in STATIC_FILES.items():
        report.static_bytes += writer.write(rel, (static / name).read_text(encoding="utf-8"))
    twins = twin_groups(content.models)
    for i, lemma in enumerate(content.lemmas):
        report.lemma_bytes.append(
            writer.write(lemma_file(i), js_call(LEMMA_CALLBACK, lemma.key, lemma_data(content, i)))
        )
    for i, lemma in enumerate(content.lemmas):
        report.sentence_bytes += writer.write(
            sentence_file(i), js_call(SENTENCE_CALLBACK, lemma.key, sentence_data(content, i))
        )
    for i in range(len(content.traces)):
        report.sentence_bytes += writer.write(
            f"data/traces/{i:05d}.js", js_call(TRACE_CALLBACK, str(i), trace_data(content, i))
        )
    texts = [
        {"n": n, "id": t["trace_id"], "config": t["template"], "text": t["text"][:120]}
        for n, t in enumerate(content.traces)
        if "routing_key" in t
    ]
    if texts:
        writer.write("data/texts.js", js_call(TEXTS_CALLBACK, "texts", {"texts": texts}))
    for row in content.models:
        # Not `+=` on the call: _write_model adds its co-activation and expert files to model_bytes itself.
        written = _write_model(writer, content, row)
        report.model_bytes += written
    report.index_bytes = writer.write(
        "data/index.js", js_call(INDEX_CALLBACK, "index", index_data(content, twins))
    )
    report.search_bytes = writer.write(
        "data/search.js", js_call(SEARCH_CALLBACK, "search", search_data(content))
    )
    writer.write(
        MARKER, json.dumps({"site": "routing-atlas explorer", "atlas": content.root.resolve().name}) + "\n"
    )
    return report


def lemma_file(i: int) -> str:
    return f"data/lemmas/{i:05d}.js"


def sentence_file(i: int) -> str:
    return f"data/sentences/{i:05d}.js"


def trace_data(content: AtlasContent, i: int) -> dict:
    """Trace i: its text and segments, and per model every token (decoded) with segment, marker and ids."""
    trace = content.traces[i]
    routing = {}
    for row in content.models:
        key = trace.get("routing_key", trace["trace_id"])
        found = content.trace_routing.get(row["model_slug"], {}).get(key)
        if found is None:
            continue
        routing[row["model_slug"]] = {
            "rows": len(found.tokens),
            "token_index": found.token_index.tolist(),
            "text": [decode_token(t) for t in found.tokens],
            "span": found.char_spans.tolist(),
            "segment": found.segment,
            "marker": found.marker,
            "experts": b64(found.experts, expert_dtype(row["n_routed_experts"])),
        }
    return {
        "id": trace["trace_id"],
        "model_slug": trace["model_slug"],
        "text": trace["text"],
        "template": trace["template"],
        "source": trace["source"],
        "segments": [dict(s) for s in trace["segments"] or []],
        "routing": routing,
    }


def sentence_data(content: AtlasContent, i: int) -> dict:
    """Every token of lemma i's examples per model: example index, token index, decoded text, span, ids."""
    out = {}
    for row in content.models:
        slug = row["model_slug"]
        if slug not in content.sentences:
            continue
        every = content.sentences[slug]
        rows = every.lemma_slice(i)
        out[slug] = {
            "rows": rows.stop - rows.start,
            "example": every.example[rows].tolist(),
            "token_index": every.token_index[rows].tolist(),
            "text": [decode_token(t) for t in every.tokens[rows]],
            "span": every.char_spans[rows].tolist(),
            "experts": b64(every.experts[rows], expert_dtype(row["n_routed_experts"])),
        }
    substituted = {}
    for row in content.models:
        slug = row["model_slug"]
        if slug not in content.substitution_routing:
            continue
        every = content.substitution_routing[slug]
        rows = every.lemma_slice(i)
        substituted[slug] = {
            "rows": rows.stop - rows.start,
            "example": every.example[rows].tolist(),  # the substitution's index in `substitutions`
            "token_index": every.token_index[rows].tolist(),
            "text": [decode_token(t) for t in every.tokens[rows]],
            "span": every.char_spans[rows].tolist(),
            "experts": b64(every.experts[rows], expert_dtype(row["n_routed_experts"])),
        }
    return {
        "key": content.lemmas[i].key,
        "routing": out,
        "substitutions": content.lemmas[i].substitutions,
        "substitution_routing": substituted,
    }


def twin_groups(models: list[dict]) -> dict[str, list[str]]:
    """slug -> the other models of the same checkpoint architecture (trained and random-init twins).

    A random-init twin is built from the same model id and architecture with random weights; the trained
    model comes first in each list, so the page puts it on the left.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in models:
        groups.setdefault((row["model_id"], row["architecture"], row["model_type"]), []).append(row)
    out = {}
    for members in groups.values():
        members = sorted(members, key=lambda r: (bool(r["random_init"]), r["model_slug"]))
        for row in members:
            out[row["model_slug"]] = [m["model_slug"] for m in members if m is not row]
    return out


def index_data(content: AtlasContent, twins: dict[str, list[str]]) -> dict:
    lemmas = content.lemmas
    metrics = content.metrics or {}
    metric_models = metrics.get("models") or {}
    counts = content.manifest.corpus_counts or {}
    return {
        "atlas": {
            "name": content.root.resolve().name,
            "code_version": content.manifest.code_version,
            "schema_version": content.manifest.schema_version,
            "synthetic": bool(counts.get("synthetic")) or bool(metrics.get("synthetic")),
            "source": counts.get("source"),
            "n_lemmas": len(lemmas),
            "n_examples": sum(len(lemma.examples()) for lemma in lemmas),
            "n_pairs": sum(len(lemma.pairs) for lemma in lemmas),
        },
        "metrics": None
        if content.metrics is None
        else {
            "synthetic": bool(metrics.get("synthetic")),
            "random_init_models": metrics.get("random_init_models") or [],
            "options": metrics.get("options"),
        },
        "models": [
            {
                "slug": row["model_slug"],
                "model_id": row["model_id"],
                "architecture": row["architecture"],
                "random_init": bool(row["random_init"]),
                "seed": row["seed"],
                "moe_layers": list(row["moe_layers"]),
                "n_routed_experts": row["n_routed_experts"],
                "top_k": row["top_k"],
                # DeepSeek's expert groups (n_group groups of consecutive ids), when the router has them.
                "n_group": row.get("n_group"),
                "weights_dtype": row["weights_dtype"],
                "engine": row["engine"],
                "synthetic": row["model_id"] == "synthetic",
                "has_routing": row["model_slug"] in content.routing,
                "has_metrics": row["model_slug"] in metric_models,
                "twins": twins.get(row["model_slug"], []),
            }
            for row in content.models
        ],
        # Traces of the traces config here; the user corpora's texts (many) in data/texts.js, loaded on use.
        "traces": [
            {
                "n": n,
                "id": t["trace_id"],
                "source": t["source"],
                "template": t["template"],
                "chars": len(t["text"]),
            }
            for n, t in enumerate(content.traces)
            if "routing_key" not in t
        ],
        "n_user_texts": sum(1 for t in content.traces if "routing_key" in t),
        # Columns, one entry per lemma: the index stays small (about 60 B a lemma) for 12,475 lemmas.
        "lemmas": {
            "key": [lemma.key for lemma in lemmas],
            "senses": [len(lemma.senses) for lemma in lemmas],
            "wordnet_senses": [lemma.n_wordnet_senses for lemma in lemmas],
            "examples": [len(lemma.examples()) for lemma in lemmas],
            "same": [sum(1 for *_, same in lemma.pairs if same) for lemma in lemmas],
            "different": [sum(1 for *_, same in lemma.pairs if not same) for lemma in lemmas],
        },
    }


def search_data(content: AtlasContent) -> dict:
    """What the search box looks in besides lemma names, one entry per lemma (index order).

    `glosses[i]` is the lemma's glosses joined by ' | ' (in sense order, so a hit can name its sense);
    `keys[i]` its sense keys and synsets; `tokens[i]` the decoded target tokens of every model, distinct.
    """
    tokens: list[set[str]] = [set() for _ in content.lemmas]
    for target in content.routing.values():
        for i in range(len(content.lemmas)):
            rows = target.lemma_slice(i)
            tokens[i].update((decode_token(t) or "").strip() for t in target.tokens[rows])
    return {
        "glosses": [" | ".join(sense.gloss for sense in lemma.senses) for lemma in content.lemmas],
        "keys": [" ".join(f"{s.sense_key} {s.synset}" for s in lemma.senses) for lemma in content.lemmas],
        "tokens": [" ".join(sorted(t for t in found if t)) for found in tokens],
    }


def lemma_data(content: AtlasContent, i: int) -> dict:
    lemma: Lemma = content.lemmas[i]
    examples, senses = [], []
    for si, sense in enumerate(lemma.senses):
        first = len(examples)
        for example in sense.examples:
            examples.append(
                {
                    "id": example.example_id,
                    "text": example.text,
                    "target": [example.target_start, example.target_end],
                    "sense": si,
                }
            )
        senses.append(
            {
                "synset": sense.synset,
                "sense_key": sense.sense_key,
                "sense_number": sense.sense_number,
                "lexname": sense.lexname,
                "gloss": sense.gloss,
                "examples": list(range(first, len(examples))),
            }
        )
    routing = {}
    for row in content.models:
        slug = row["model_slug"]
        if slug not in content.routing:
            continue
        target = content.routing[slug]
        rows = target.lemma_slice(i)
        routing[slug] = {
            "rows": rows.stop - rows.start,
            "example": target.example[rows].tolist(),
            "token_index": target.token_index[rows].tolist(),
            "token": target.tokens[rows],
            # What the page prints: the piece decoded to text ('Ġbank' -> ' bank'); the piece stays above.
            "text": [decode_token(t) for t in target.tokens[rows]],
            "span": target.char_spans[rows].tolist(),
            "experts": b64(target.experts[rows], expert_dtype(row["n_routed_experts"])),
            "weights": None if target.weights is None else b64(target.weights[rows], "float16"),
        }
    return {
        "key": lemma.key,
        "lemma": lemma.lemma,
        "pos": lemma.pos,
        "wordnet_senses": lemma.n_wordnet_senses,
        "senses": senses,
        "examples": examples,
        "pairs": [[a, b, int(same)] for a, b, same in lemma.pairs],
        "routing": routing,
    }


def _write_model(writer: _Writer, content: AtlasContent, row: dict) -> int:
    slug = row["model_slug"]
    metrics = content.metrics or {}
    entry = (metrics.get("models") or {}).get(slug)
    coact_layers = _write_coactivation(writer, content, slug, entry)
    expert_pages = []
    if slug in content.routing:
        for layer in expert_layers(content, slug):
            writer.report.model_bytes += writer.write(
                f"data/models/{slug}/experts-{layer['layer_index']}.js",
                js_call(EXPERT_CALLBACK, f"{slug}/{layer['layer_index']}", layer),
            )
            expert_pages.append(layer["layer_index"])
    data = {
        "slug": slug,
        "row": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in row.items()},
        "has_routing": slug in content.routing,
        "metrics": entry,
        "metrics_present": content.metrics is not None,
        "formulas": metrics.get("formulas"),
        "options": metrics.get("options"),
        "coactivation_layers": coact_layers,
        "expert_layers": expert_pages,
        "interventions": content.interventions.get(slug, []),
    }
    # The co-activation files count themselves into report.model_bytes; this is the page's own file.
    return writer.write(f"data/models/{slug}.js", js_call(MODEL_CALLBACK, slug, data))


def _write_coactivation(writer: _Writer, content: AtlasContent, slug: str, entry: dict | None) -> list[int]:
    """One file per MoE layer with P(j | i) = C_ij / C_ii from the metrics' `coactivation-<slug>.npz`."""
    coactivation = ((entry or {}).get("experts") or {}).get("coactivation") or {}
    name = coactivation.get("file")
    if not name or content.metrics_dir is None or "/" in name or "\\" in name:
        return []
    path = content.metrics_dir / name
    if not path.is_file():
        return []
    try:
        with np.load(path) as npz:
            counts = np.asarray(npz["coactivation_counts"], dtype=np.float64)
            layers = [int(x) for x in npz["moe_layers"]]
    except (OSError, KeyError, ValueError) as error:
        raise ExploreError(
            f"{path} is not a co-activation file of `atlas metrics` ({error}); rerun it"
        ) from error
    written = []
    for li in range(counts.shape[0]):
        diagonal = np.diag(counts[li])[:, None]
        conditional = np.divide(counts[li], diagonal, out=np.zeros_like(counts[li]), where=diagonal > 0)
        fixed = np.rint(np.clip(conditional, 0, 1) * COACT_SCALE).astype(np.uint16)
        data = {
            "layer_index": li,
            "moe_layer": layers[li] if li < len(layers) else li,
            "n": int(counts.shape[1]),
            "scale": COACT_SCALE,
            "p": b64(fixed, "uint16"),
            "load": np.diag(counts[li]).astype(np.int64).tolist(),
        }
        writer.report.model_bytes += writer.write(
            f"data/models/{slug}/coact-{li}.js", js_call(COACT_CALLBACK, f"{slug}/{li}", data)
        )
        written.append(li)
    return written
