"""Benchmark the explorer site: its size for a real atlas, the projected size for the full DeepSeek-R1
WordNet atlas, and how long the index takes to open from local disk in headless Chromium.

    .venv/bin/python bench/bench_explore.py [--atlas atlas-demo] [--repeats 5] [--quick] [--keep DIR]

`--quick` times each page once (the sizes are the same).

1. Real atlas (`--atlas`, default `atlas-demo` when it exists, e.g. after `make demo`; tiny-deepseek-v3 is
   RANDOM-INIT, which changes no byte count): `atlas explore` into a temporary folder; total size, bytes per
   lemma file split into text (senses, glosses, examples, pairs) and routing, target sub-tokens per example.
2. SYNTHETIC atlas at R1's routing shape (58 MoE layers x top-8 of 256 experts, float16 weights; its routing
   captured from a RANDOM-INIT model, bench/r1_routing.py): the
   measured bytes of one target sub-token's routing in a lemma file, and of one co-activation layer file.
3. The full WordNet senses corpus (from WordNet, when installed): every lemma file's text part is written
   exactly as `atlas explore` would (no routing), and the real index of all its lemmas. The projection for
   12,475 lemmas is  12,475 x (mean text bytes per lemma + target sub-tokens per lemma x routing bytes per
   sub-token x models) + index + model pages, with sub-tokens per example measured on the real atlas of (1)
   (the built-in model's tokenizer is DeepSeek-R1's vocabulary).
4. Index load time: a site whose index holds 12,475 lemmas (the full corpus's lemma list, padded with
   suffixed copies to 12,475 when WordNet yields fewer) opened from file:// in headless Chromium, `--repeats`
   times; the time from navigation start to the first 200 rows drawn (target: under 1 s), then a search
   and a lemma page and an expert page at R1's shape.
5. Expert pages (one file per model and MoE layer, measured at R1's shape on the 60-lemma atlas and scaled
   by lemmas) and the search file (glosses, sense keys and synsets of every lemma of the full corpus,
   written as `atlas explore` writes them; target tokens add a few bytes a lemma).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

R1_LEMMAS = 12_475
R1_LAYERS, R1_EXPERTS, R1_TOP_K = 58, 256, 8
INDEX_TARGET_S = 1.0


def _site_parts(site: Path) -> dict:
    """Bytes of a site by part, and per lemma file its routing bytes and target rows."""
    from atlas_build.explore.encode import js_call
    from atlas_build.explore.site import LEMMA_CALLBACK

    lemma_files = sorted((site / "data" / "lemmas").glob("*.js"))
    text_bytes, routing_bytes, rows, examples = [], [], [], []
    for path in lemma_files:
        key, data = _read(path)
        routing = data.pop("routing")
        text_bytes.append(len(js_call(LEMMA_CALLBACK, key, {**data, "routing": {}}).encode()))
        routing_bytes.append(path.stat().st_size - text_bytes[-1])
        rows.append([r["rows"] for r in routing.values()])
        examples.append(len(data["examples"]))
    return {
        "total": sum(p.stat().st_size for p in site.rglob("*") if p.is_file()),
        "index": (site / "data" / "index.js").stat().st_size,
        "lemmas": len(lemma_files),
        "text_bytes": text_bytes,
        "routing_bytes": routing_bytes,
        "rows": rows,
        "examples": examples,
    }


def _read(path: Path):
    text = path.read_text(encoding="utf-8")
    rest = text.partition("(")[2]
    decoder = json.JSONDecoder()
    key, end = decoder.raw_decode(rest)
    data, _ = decoder.raw_decode(rest, end + 1)
    return key, data


def _sentence_rows(site: Path) -> tuple[int, int]:
    """(bytes, token rows of one model) of the sentence-view files."""
    files = sorted((site / "data" / "sentences").glob("*.js"))
    rows = 0
    for path in files:
        routing = _read(path)[1]["routing"]
        rows += max((r["rows"] for r in routing.values()), default=0)
    return sum(p.stat().st_size for p in files), rows


def measure_real(atlas: Path, work: Path) -> dict | None:
    from atlas_build.explore import build_site

    if not (atlas / "manifest.json").exists():
        return None
    site = work / "real-site"
    build_site(atlas, site)
    parts = _site_parts(site)
    parts["tokens_per_example"] = _sentence_rows(site)[1] / max(1, sum(parts["examples"]))
    n_models = max(len(r) for r in parts["rows"])
    total_rows = sum(sum(r) for r in parts["rows"])
    parts["n_models"] = n_models
    parts["rows_per_example"] = total_rows / n_models / max(1, sum(parts["examples"]))
    parts["routing_bytes_per_row"] = sum(parts["routing_bytes"]) / max(1, total_rows)
    return parts


def measure_r1_shape(work: Path) -> dict:
    """Routing bytes per target sub-token and per co-activation layer file at R1's shape (SYNTHETIC)."""
    from r1_routing import replayed_routing

    from atlas_build.atlas.synthetic import write_synthetic_data
    from atlas_build.explore import build_site
    from atlas_build.explore.encode import b64, js_call
    from atlas_build.explore.site import COACT_CALLBACK

    # Routing captured at R1's shape (RANDOM-INIT model, bench/r1_routing.py), not the synthetic formula's.
    atlas = write_synthetic_data(
        work / "r1-shape",
        n_lemmas=60,
        n_experts=R1_EXPERTS,
        n_layers=R1_LAYERS,
        top_k=R1_TOP_K,
        routing_fn=replayed_routing,
    )
    site = work / "r1-site"
    build_site(atlas, site)
    parts = _site_parts(site)
    rows = sum(sum(r) for r in parts["rows"])
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, 65536, size=(R1_EXPERTS, R1_EXPERTS), dtype=np.uint16)
    coact = {"layer_index": 0, "moe_layer": 3, "n": R1_EXPERTS, "scale": 65535, "p": b64(fixed, "uint16")}
    coact["load"] = rng.integers(0, 10**7, R1_EXPERTS).tolist()
    return {
        "atlas": atlas,
        "site": site,
        "routing_bytes_per_row": sum(parts["routing_bytes"]) / rows,
        "coact_layer_bytes": len(js_call(COACT_CALLBACK, "slug/0", coact).encode()),
        "first_lemma": _read(sorted((site / "data" / "lemmas").glob("*.js"))[0])[0],
        "sentence_bytes_per_row": (lambda b, r: b / max(1, r))(*_sentence_rows(site)),
        "expert_layer_bytes": float(
            np.mean([p.stat().st_size for p in site.glob("data/models/*/experts-*.js")])
        ),
        "n_lemmas": 60,
        "slug": next(p.name for p in (site / "data" / "models").iterdir() if p.is_dir()),
    }


def search_bytes(lemmas) -> int:
    """data/search.js of these lemmas without target tokens (no routing at hand), as the site writes it."""
    from types import SimpleNamespace

    from atlas_build.explore.encode import js_call
    from atlas_build.explore.site import SEARCH_CALLBACK, search_data

    return len(
        js_call(SEARCH_CALLBACK, "search", search_data(SimpleNamespace(lemmas=lemmas, routing={}))).encode()
    )


def full_corpus_lemmas():
    """(lemmas of the full WordNet senses corpus with their pairs, note) or (None, reason)."""
    try:
        from atlas_build.corpora import build_wordnet_corpora
        from atlas_build.explore.read import _attach_pairs, _lemmas

        tables = build_wordnet_corpora()
    except Exception as error:  # WordNet missing or unreadable: the projection falls back to the demo
        return None, f"no full WordNet corpus ({type(error).__name__}: {error})"
    lemmas, _ = _lemmas(tables["senses"])
    _attach_pairs(lemmas, tables["sense-pairs"])
    return lemmas, f"full WordNet senses corpus: {len(lemmas):,} lemmas"


def text_bytes_of(lemmas) -> list[int]:
    """Each lemma file's bytes without routing, written by the explorer's own code."""
    from atlas_build.explore.encode import js_call
    from atlas_build.explore.read import AtlasContent
    from atlas_build.explore.site import LEMMA_CALLBACK, lemma_data

    content = AtlasContent(Path("."), None, lemmas, [], {}, None, None)
    return [
        len(js_call(LEMMA_CALLBACK, lemma.key, lemma_data(content, i)).encode())
        for i, lemma in enumerate(lemmas)
    ]


def padded(lemmas, n: int):
    """The lemma list padded to n entries with suffixed copies (index size and load time only)."""
    import copy

    out = list(lemmas)
    round_ = 2
    while len(out) < n:
        for lemma in lemmas[: n - len(out)]:
            twin = copy.copy(lemma)
            twin.lemma = f"{lemma.lemma}~{round_}"
            out.append(twin)
        round_ += 1
    return sorted(out[:n], key=lambda lemma: (lemma.lemma, lemma.pos))


def write_index(site: Path, lemmas, models: list[dict]) -> int:
    from atlas_build.atlas.manifest import Manifest
    from atlas_build.explore.encode import js_call
    from atlas_build.explore.read import AtlasContent
    from atlas_build.explore.site import INDEX_CALLBACK, index_data, twin_groups

    content = AtlasContent(site, Manifest(), lemmas, models, {}, None, None)
    text = js_call(INDEX_CALLBACK, "index", index_data(content, twin_groups(models)))
    (site / "data" / "index.js").write_text(text, encoding="utf-8")
    return len(text.encode())


def time_in_browser(
    index_site: Path, lemma_site: Path, repeats: int, lemma_key: str, slug: str = ""
) -> dict | str:
    """Seconds: index load (navigation start -> first rows), a search, a lemma page and an expert page."""
    from atlas_build.explore.browser import chromium, find_browser

    _, _, reason = find_browser()
    if reason:
        return reason
    from selenium.webdriver.support.ui import WebDriverWait

    loads, searches, lemma_pages, expert_pages = [], [], [], []
    with chromium() as driver:
        driver.set_script_timeout(120)
        for _ in range(repeats):
            driver.get("about:blank")
            driver.get((index_site / "index.html").as_uri())
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return !!document.body.dataset.indexReady")
            )
            loads.append(driver.execute_script("return window.atlasIndexReadyMs") / 1000)
            searches.append(
                driver.execute_script(
                    "const el = document.getElementById('search'); const t0 = performance.now();"
                    "el.value = 'ban'; el.dispatchEvent(new Event('input'));"
                    "return (performance.now() - t0) / 1000;"
                )
            )
            driver.get((lemma_site / "index.html").as_uri())
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return !!document.body.dataset.indexReady")
            )
            lemma_pages.append(
                driver.execute_async_script(
                    "const done = arguments[arguments.length - 1]; const t0 = performance.now();"
                    f"location.hash = '#/lemma/' + encodeURIComponent({json.dumps(lemma_key)});"
                    "(function poll() { if (document.querySelector('svg.overlap')) done((performance.now() - t0) / 1000);"
                    " else if (document.querySelector('#view .error')) done(null);"
                    " else setTimeout(poll, 5); })();"
                )
            )
            if slug:
                expert_pages.append(
                    driver.execute_async_script(
                        "const done = arguments[arguments.length - 1]; const t0 = performance.now();"
                        f"location.hash = '#/expert/' + encodeURIComponent({json.dumps(slug)}) + '/0/0';"
                        "(function poll() { if (document.querySelector('#expert-lemmas, #expert-unused'))"
                        " done((performance.now() - t0) / 1000);"
                        " else if (document.querySelector('#view .error')) done(null);"
                        " else setTimeout(poll, 5); })();"
                    )
                )
    return {"load": loads, "search": searches, "lemma": lemma_pages, "expert": expert_pages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--atlas", type=Path, default=ROOT / "atlas-demo", help="a real atlas (default: atlas-demo)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="time each page once")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    work = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    try:
        print("bench_explore: explorer site sizes and index load time (SYNTHETIC routing at R1's shape; the")
        print("  real atlas's tiny-deepseek-v3 is RANDOM-INIT, which changes sizes by nothing)")
        real = measure_real(args.atlas, work)
        if real:
            n = real["lemmas"]
            print(
                f"  real atlas {args.atlas}: site {real['total'] / 1e6:.2f} MB, {n} lemmas, {real['n_models']} model(s); "
                f"index {real['index'] / 1e3:.1f} kB; per lemma file {np.mean(np.add(real['text_bytes'], real['routing_bytes'])) / 1e3:.1f} kB "
                f"(text {np.mean(real['text_bytes']) / 1e3:.1f} kB + routing {np.mean(real['routing_bytes']) / 1e3:.1f} kB); "
                f"{real['rows_per_example']:.2f} target sub-tokens per example; "
                f"{real['routing_bytes_per_row']:.0f} B routing per sub-token and model at its shape"
            )
        else:
            print(f"  no real atlas at {args.atlas} (run `make demo`): sub-tokens per example taken as 1.0")
        r1 = measure_r1_shape(work)
        print(
            f"  R1 shape ({R1_LAYERS} layers x top-{R1_TOP_K} of {R1_EXPERTS}, float16 weights): "
            f"{r1['routing_bytes_per_row']:.0f} B routing per target sub-token and model; "
            f"co-activation {r1['coact_layer_bytes'] / 1e3:.1f} kB per layer file"
        )
        lemmas, note = full_corpus_lemmas()
        if lemmas is None and real:
            print(f"  {note}: text bytes per lemma from the real atlas")
            text_per_lemma = float(np.mean(real["text_bytes"]))
            examples_per_lemma = float(np.mean(real["examples"]))
            index_lemmas = None
        elif lemmas is not None:
            text = text_bytes_of(lemmas)
            text_per_lemma = float(np.mean(text))
            examples_per_lemma = float(np.mean([len(lemma.examples()) for lemma in lemmas]))
            print(
                f"  {note}: {text_per_lemma / 1e3:.2f} kB text per lemma file, {examples_per_lemma:.2f} examples per lemma"
            )
            index_lemmas = lemmas
        else:
            print(f"  {note} and no real atlas: nothing to project")
            return 1
        per_example = real["rows_per_example"] if real else 1.0
        routing_per_lemma = examples_per_lemma * per_example * r1["routing_bytes_per_row"]
        # Expert pages grow with the lemmas routed to each expert, capped at 10 per list: scaled linearly
        # from the 60-lemma atlas, at most the cap's worth (an upper bound).
        expert_layer = r1["expert_layer_bytes"] * min(R1_LEMMAS / r1["n_lemmas"], 10)
        model_pages = R1_LAYERS * (r1["coact_layer_bytes"] + expert_layer) + 20_000
        search = search_bytes(index_lemmas) if index_lemmas is not None else None
        tokens_per_example = real["tokens_per_example"] if real else 12.0
        sentences_per_model = (
            R1_LEMMAS * examples_per_lemma * tokens_per_example * r1["sentence_bytes_per_row"]
        )
        print(
            f"  sentence view: {r1['sentence_bytes_per_row']:.0f} B per token and model at R1's shape (ids only), "
            f"{tokens_per_example:.1f} tokens per example"
            + (" (real atlas)" if real else " (assumed)")
            + f": {sentences_per_model / 1e9:.2f} GB per model for the full corpus, one lemma's file loaded per view"
        )
        print(
            f"  expert pages: {r1['expert_layer_bytes'] / 1e3:.1f} kB per layer file on {r1['n_lemmas']} lemmas, "
            f"at most {expert_layer / 1e3:.0f} kB at {R1_LEMMAS:,} (lists capped at 10 entries); search file "
            + (
                f"{search / 1e6:.2f} MB for the full corpus (loaded on the first search only)"
                if search
                else "not measured"
            )
        )
        # Index at full size, also used for the timing below (real lemma names where WordNet is there).
        from atlas_build.atlas.synthetic import synthetic_models_row

        base = index_lemmas if index_lemmas is not None else _read_lemmas(r1["atlas"])
        full = padded(base, R1_LEMMAS)
        models = [synthetic_models_row(R1_EXPERTS, R1_LAYERS, R1_TOP_K, slug="synthetic-moe")]
        index_site = work / "r1-full-index"
        shutil.copytree(r1["site"], index_site)
        index_bytes = write_index(index_site, full, models)
        print(
            f"  projected for the full R1 WordNet atlas ({R1_LEMMAS:,} lemmas, index {index_bytes / 1e6:.2f} MB):"
        )
        for n_models, label in ((1, "DeepSeek-R1 alone"), (2, "DeepSeek-R1 + its random-init twin")):
            lemma_total = R1_LEMMAS * (text_per_lemma + n_models * routing_per_lemma)
            total = lemma_total + index_bytes + n_models * (model_pages + sentences_per_model) + (search or 0)
            print(
                f"    {label}: {total / 1e9:.2f} GB ({R1_LEMMAS:,} lemma files of "
                f"{lemma_total / R1_LEMMAS / 1e3:.1f} kB on average, {n_models} x {model_pages / 1e6:.1f} MB model pages); "
                "a page loads only the index and one lemma or model file"
            )
        times = time_in_browser(index_site, r1["site"], args.repeats, r1["first_lemma"], r1["slug"])
        if isinstance(times, str):
            print(f"  index load time: not measured ({times})")
        else:
            load = statistics.median(times["load"])
            print(
                f"  index of {R1_LEMMAS:,} lemmas from file:// in headless Chromium: {load * 1000:.0f} ms to the first "
                f"rows (median of {args.repeats}; {load / INDEX_TARGET_S:.2f} x the 1 s target); search "
                f"{statistics.median(times['search']) * 1000:.0f} ms; an R1-shape lemma page "
                f"{statistics.median(times['lemma']) * 1000:.0f} ms; an R1-shape expert page "
                f"{statistics.median(times['expert']) * 1000:.0f} ms"
            )
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
            print(f"  kept {args.keep}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _read_lemmas(atlas: Path):
    from atlas_build.explore.read import read_atlas

    return read_atlas(atlas).lemmas


if __name__ == "__main__":
    sys.exit(main())
