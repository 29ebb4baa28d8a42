"""The explorer's reading aids and pages in headless Chromium: legends, search, expert pages, sections.

One site (the session's `site` fixture) serves every test; each number checked is recomputed here from
the Parquet rows (pyarrow + numpy) or read from metrics.json.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from explore_helpers import MODEL_SLUG, parquet_targets
from test_explore_browser import _js_errors, _open, _pick_lemma, _wait

pytestmark = pytest.mark.usefixtures("browser")


def test_every_map_of_a_lemma_shares_one_legend_with_numeric_ticks(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By

    key, _ = _pick_lemma(twin_atlas)
    _open(browser, site, f"#/lemma/{key}")
    _wait(browser, "section.sense")
    legend = browser.find_element(By.CSS_SELECTOR, ".heatmap-legend")
    ticks = [float(t.text) for t in legend.find_elements(By.CSS_SELECTOR, "text.legend-tick")]
    assert len(ticks) >= 3 and ticks[0] == 0 and ticks == sorted(ticks)
    vmax = float(legend.find_element(By.CSS_SELECTOR, "svg").get_attribute("data-vmax"))
    assert ticks[-1] == pytest.approx(vmax)
    # The scale is the page's: its top covers the largest gate weight of every shown model's rows.
    weights = [
        float(w)
        for rows in parquet_targets(twin_atlas, MODEL_SLUG).values()
        for r in rows
        for w in r["weights"].ravel()
    ]
    maps = browser.find_elements(By.CSS_SELECTOR, "svg.heatmap")
    assert maps and {float(svg.get_attribute("data-vmax")) for svg in maps} == {vmax}
    shown = [
        float(r.get_attribute("data-weight"))
        for r in browser.find_elements(By.CSS_SELECTOR, "rect[data-weight]")
    ]
    assert max(shown) <= vmax and vmax < 2 * max(weights)
    titles = {t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.heatmap text.axis-title")}
    assert {"layer", "expert id"} <= titles
    # Both models are random-init: the switcher does not call the twin "trained".
    label = browser.find_element(By.ID, "twin-label").text
    assert "both random-init" in label and "trained ↔" not in label
    assert _js_errors(browser) == []


def test_layer_zoom_and_top_experts_keep_the_parquet_cells(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    key, _ = _pick_lemma(twin_atlas)
    _open(browser, site, f"#/lemma/{key}")
    _wait(browser, "section.sense")
    Select(browser.find_element(By.ID, "layer-from")).select_by_value("1")
    Select(browser.find_element(By.ID, "layer-to")).select_by_value("2")
    Select(browser.find_element(By.ID, "expert-view")).select_by_value("top")
    rows = parquet_targets(twin_atlas, MODEL_SLUG)
    figures = browser.find_elements(
        By.CSS_SELECTOR, f'.model-col[data-model="{MODEL_SLUG}"] figure.example-heatmap[data-row]'
    )
    ids = {
        li.get_attribute("data-example"): li.get_attribute("data-example-id")
        for li in browser.find_elements(By.CSS_SELECTOR, "li.example")
    }
    assert figures
    for figure in figures:
        target = rows[ids[figure.get_attribute("data-example")]][-1]
        cells = figure.find_elements(By.CSS_SELECTOR, "rect.cell")
        layers = {int(c.get_attribute("data-layer-index")) for c in cells}
        assert layers == {1, 2}
        for layer in (1, 2):
            shown = {
                int(c.get_attribute("data-expert"))
                for c in cells
                if c.get_attribute("data-layer-index") == str(layer)
            }
            assert shown == set(target["experts"][layer].tolist())  # 8 of 32 experts: all within the top 48
    browser.find_element(By.ID, "full-map").click()
    svg = browser.find_element(By.CSS_SELECTOR, "svg.sense-map")
    assert svg.get_attribute("data-columns") == "id"
    assert {
        int(r.get_attribute("data-layer-index")) for r in svg.find_elements(By.CSS_SELECTOR, "rect.cell")
    } == set(range(5))
    assert _js_errors(browser) == []


def test_search_finds_a_gloss_word_and_a_sense_key(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    senses = pq.read_table(twin_atlas / "senses").to_pylist()
    names = {r["lemma"] for r in senses}
    # A gloss word that is no lemma's name, so only the gloss search can find it.
    word, row = next(
        (w, r)
        for r in senses
        for w in r["gloss"].lower().replace(";", " ").replace(",", " ").split()
        if len(w) >= 6 and w.isalpha() and not any(w in n for n in names)
    )
    in_text = {
        f"{r['lemma']}.{r['pos']}"
        for r in senses
        if word in r["gloss"].lower() or word in f"{r['sense_key']} {r['synset']}".lower()
    }
    # A target token equal to the word also matches (when the form is one token: not known here).
    as_token = {f"{r['lemma']}.{r['pos']}" for r in senses if word == r["target_form"].lower()}
    _open(browser, site)
    browser.find_element(By.ID, "search").send_keys(word)
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#text-hit-table tbody tr"))
    shown = [
        tr.get_attribute("data-key")
        for tr in browser.find_elements(By.CSS_SELECTOR, "#text-hit-table tbody tr")
    ]
    assert in_text <= set(shown) <= in_text | as_token and len(shown) == len(set(shown))

    search = browser.find_element(By.ID, "search")
    search.clear()
    search.send_keys(row["sense_key"])
    WebDriverWait(browser, 20).until(
        lambda d: (
            f"{row['lemma']}.{row['pos']}"
            in [
                tr.get_attribute("data-key")
                for tr in d.find_elements(By.CSS_SELECTOR, "#text-hit-table tbody tr")
            ]
        )
    )
    assert _js_errors(browser) == []


def test_expert_page_counts_the_parquet_rows_and_shows_the_metrics_load(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By

    rows = parquet_targets(twin_atlas, MODEL_SLUG)
    layer = 2
    counts = np.bincount(
        np.concatenate([np.unique(r["experts"][layer]) for rs in rows.values() for r in rs]), minlength=32
    )
    expert = int(np.argmax(counts))
    _open(browser, site, f"#/expert/{MODEL_SLUG}/{layer}/{expert}")
    _wait(browser, "#expert-lemmas tbody tr")
    facts = browser.find_element(By.ID, "expert-facts").text
    assert f"{counts[expert]} of {sum(len(rs) for rs in rows.values())} rows" in facts
    load = json.loads((twin_atlas / "metrics" / "metrics.json").read_text())["models"][MODEL_SLUG]["experts"][
        "load"
    ]
    assert f"{load[layer][expert] * 100:.3f}%" in facts
    # Lemma rows of the expert, recomputed: rows of the lemma's targets that chose it at this layer.
    senses = pq.read_table(twin_atlas / "senses").to_pylist()
    lemma_of = {r["example_id"]: f"{r['lemma']}.{r['pos']}" for r in senses}
    per_lemma: dict[str, int] = {}
    for example_id, rs in rows.items():
        for r in rs:
            if expert in r["experts"][layer]:
                per_lemma[lemma_of[example_id]] = per_lemma.get(lemma_of[example_id], 0) + 1
    for tr in browser.find_elements(By.CSS_SELECTOR, "#expert-lemmas tbody tr"):
        name, count = (td.text for td in tr.find_elements(By.TAG_NAME, "td"))
        assert per_lemma[name] == int(count)
    _wait(browser, "#partner-table tbody tr")
    assert _js_errors(browser) == []


def test_comparison_shows_both_models_numbers_of_metrics_json(browser, site, twin_atlas):
    from explore_helpers import TWIN_SLUG
    from selenium.webdriver.common.by import By

    metrics = json.loads((twin_atlas / "metrics" / "metrics.json").read_text())["models"]
    _open(browser, site, f"#/compare/{MODEL_SLUG}/{TWIN_SLUG}")
    _wait(browser, "#compare-layers tbody tr")
    rows = {
        tr.find_element(By.TAG_NAME, "th").text: tr
        for tr in browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
    }
    for slug in (MODEL_SLUG, TWIN_SLUG):
        delta = metrics[slug]["sense_pairs"]["layer_mean"]["delta"]
        cell = rows["Δκ layer mean [95% CI]"].find_element(By.CSS_SELECTOR, f'td[data-model="{slug}"]').text
        assert cell == f"{delta['estimate']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]"
        per_layer = metrics[slug]["sense_pairs"]["delta"]["estimate"]
        shown = [
            td.text
            for td in browser.find_elements(
                By.CSS_SELECTOR, f'#compare-layers td[data-model="{slug}"][data-series="raw"]'
            )
        ]
        assert shown == [f"{x:+.3f}" for x in per_layer]
        for name, control in (metrics[slug]["sense_pairs"].get("controls") or {}).items():
            if not (control and isinstance((control.get("delta") or {}).get("estimate"), list)):
                continue
            shown = [
                td.text
                for td in browser.find_elements(
                    By.CSS_SELECTOR, f'#compare-layers td[data-model="{slug}"][data-series="{name}"]'
                )
            ]
            assert shown == [f"{x:+.3f}" if x is not None else "–" for x in control["delta"]["estimate"]]
    assert _js_errors(browser) == []


def test_sentence_view_shows_every_token_at_every_layer_as_the_parquet_rows(browser, site, twin_atlas):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from selenium.webdriver.common.by import By

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array

    key, _ = _pick_lemma(twin_atlas)
    _open(browser, site, f"#/lemma/{key}")
    link = _wait(browser, "li.example a.sentence-link")[0]
    example_id = link.find_element(By.XPATH, "..").get_attribute("data-example-id")
    link.click()
    rows = _wait(browser, "#sentence-table tbody tr")
    assert browser.find_element(By.ID, "sentence-title").get_attribute("data-example-id") == example_id

    files = [str(twin_atlas / rel) for rel in Manifest.load(twin_atlas).config_files(f"routing-{MODEL_SLUG}")]
    table = pads.dataset(files).to_table(
        filter=(pc.field("corpus") == "senses") & (pc.field("source_id") == example_id)
    )
    order = np.argsort(table.column("token_index").to_numpy())
    experts = routing_array(table.column("experts"))[order]
    targets = np.asarray(table.column("is_target").to_pylist())[order]
    assert len(rows) == table.num_rows > int(targets.sum())  # context tokens too, not only the target
    for tr, want, is_target in zip(rows, experts, targets, strict=True):
        cells = tr.find_elements(By.CSS_SELECTOR, "td.expert-cell")
        assert [c.get_attribute("data-experts") for c in cells] == [
            " ".join(map(str, e)) for e in want.tolist()
        ]
        assert [c.find_element(By.TAG_NAME, "a").text for c in cells] == [str(e[0]) for e in want.tolist()]
        assert ("target-row" in (tr.get_attribute("class") or "")) == bool(is_target)
    assert _js_errors(browser) == []


@pytest.fixture(scope="module")
def trace_site(twin_atlas, tmp_path_factory):
    """twin_atlas + the sample traces and the jsonl probe routed by tiny-deepseek-v3 (RANDOM-INIT), and its site."""
    import shutil
    from pathlib import Path

    from atlas_build.builder import BuildConfig, run_build
    from atlas_build.explore import build_site

    root = tmp_path_factory.mktemp("explore-traces") / "atlas"
    shutil.copytree(twin_atlas, root)
    sample = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "sample.jsonl"
    run_build(
        BuildConfig(model="tiny-deepseek-v3", out=root, corpus="traces", traces=str(sample), progress=False),
        log=lambda *_: None,
    )
    probe = Path(__file__).resolve().parents[1] / "fixtures" / "jsonl" / "probe.jsonl"
    run_build(
        BuildConfig(model="tiny-deepseek-v3", out=root, corpus="jsonl", texts=str(probe), progress=False),
        log=lambda *_: None,
    )
    site = root.parent / "site"
    build_site(root, site)
    return root, site


def test_trace_view_shows_its_segments_markers_and_every_token(browser, trace_site):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from selenium.webdriver.common.by import By

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array

    root, site = trace_site
    manifest = Manifest.load(root)
    traces = pads.dataset([str(root / rel) for rel in manifest.config_files("traces")]).to_table().to_pylist()
    _open(browser, site)
    links = _wait(browser, "#trace-list a.trace-link", len(traces))
    assert [a.text for a in links] == [t["trace_id"] for t in traces]
    trace = traces[0]
    links[0].click()
    rows = _wait(browser, "#sentence-table tbody tr")
    assert browser.find_element(By.ID, "trace-title").get_attribute("data-trace-id") == trace["trace_id"]
    spans = browser.find_elements(By.CSS_SELECTOR, "pre.trace-text span.segment")
    expected = sorted(trace["segments"], key=lambda s: s["start"])
    assert [s.get_attribute("data-segment") for s in spans] == [s["name"] for s in expected]
    for span, segment in zip(spans, expected, strict=True):
        assert span.text.endswith(trace["text"][segment["start"] : segment["end"]].strip())

    files = [str(root / rel) for rel in manifest.config_files(f"routing-{MODEL_SLUG}")]
    table = pads.dataset(files).to_table(
        filter=(pc.field("corpus") == "traces") & (pc.field("source_id") == trace["trace_id"])
    )
    order = np.argsort(table.column("token_index").to_numpy())
    experts = routing_array(table.column("experts"))[order]
    segments = [table.column("segment").to_pylist()[i] for i in order]
    markers = [table.column("marker").to_pylist()[i] for i in order]
    assert len(rows) == table.num_rows and any(markers)
    for tr, want, segment, marker in zip(rows, experts, segments, markers, strict=True):
        assert tr.find_element(By.CSS_SELECTOR, "td.segment-cell").text == (segment or "")
        assert tr.find_element(By.CSS_SELECTOR, "td.marker-cell").text == (marker or "")
        cells = tr.find_elements(By.CSS_SELECTOR, "td.expert-cell")
        assert [c.get_attribute("data-experts") for c in cells] == [
            " ".join(map(str, e)) for e in want.tolist()
        ]
    assert _js_errors(browser) == []


def test_a_lemma_at_r1_shape_opens_on_its_top_experts_and_groups(browser, tmp_path):
    """SYNTHETIC atlas at R1's shape (256 experts, 58 MoE layers, top-8, 8 expert groups)."""
    import pyarrow as pa
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array
    from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA
    from atlas_build.atlas.store import write_config
    from atlas_build.atlas.synthetic import SYNTHETIC_SLUG, write_synthetic_data
    from atlas_build.explore import build_site

    atlas = write_synthetic_data(tmp_path / "atlas", n_lemmas=2, n_experts=256, n_layers=58, top_k=8)
    manifest = Manifest.load(atlas)
    models = pq.read_table(atlas / "models").to_pylist()
    models[0]["n_group"] = 8
    write_config(atlas, manifest, MODELS, pa.Table.from_pylist(models, schema=MODELS_SCHEMA), MODELS_SCHEMA)
    manifest.save(atlas)
    site = tmp_path / "site"
    build_site(atlas, site)
    table = pa.concat_tables(
        pq.read_table(atlas / rel) for rel in manifest.config_files(f"routing-{SYNTHETIC_SLUG}")
    )
    mask = np.asarray(table.column("is_target").to_pylist())
    experts = dict(
        zip(
            np.asarray(table.column("source_id").to_pylist())[mask],
            routing_array(table.column("experts"))[mask],
            strict=True,
        )
    )

    _open(browser, site, "#/lemma/lemma00000.n")
    _wait(browser, "section.sense")
    svg = browser.find_element(By.CSS_SELECTOR, "svg.sense-map")
    assert svg.get_attribute("data-columns") == "sorted"  # the lemma's top experts, not 256 columns
    assert int(svg.get_attribute("width")) < 1000
    assert len(browser.find_elements(By.CSS_SELECTOR, ".heatmap-legend text.legend-tick")) >= 3
    # Each example map holds exactly the Parquet experts that are among the columns shown.
    li = browser.find_element(By.CSS_SELECTOR, "li.example")
    example, example_id = li.get_attribute("data-example"), li.get_attribute("data-example-id")
    figure = browser.find_element(By.CSS_SELECTOR, f'figure.example-heatmap[data-example="{example}"]')
    want = experts[example_id]
    shown = {
        (int(r.get_attribute("data-layer-index")), int(r.get_attribute("data-expert")))
        for r in figure.find_elements(By.CSS_SELECTOR, "rect.cell")
    }
    assert shown <= {(layer, int(e)) for layer in range(58) for e in want[layer]} and shown

    Select(browser.find_element(By.ID, "expert-view")).select_by_value("groups")
    svg = browser.find_element(By.CSS_SELECTOR, "svg.sense-map")
    assert (
        svg.get_attribute("data-columns") == "groups"
        and len(svg.find_elements(By.CSS_SELECTOR, "line.group-line")) == 7
    )
    Select(browser.find_element(By.ID, "layer-from")).select_by_value("50")
    figure = browser.find_element(By.CSS_SELECTOR, f'figure.example-heatmap[data-example="{example}"]')
    shown = {
        (int(r.get_attribute("data-layer-index")), int(r.get_attribute("data-expert")))
        for r in figure.find_elements(By.CSS_SELECTOR, "rect.cell")
    }
    assert shown == {
        (layer, int(e)) for layer in range(50, 58) for e in want[layer]
    }  # all experts, layers 50-57
    assert _js_errors(browser) == []


def test_a_substitution_has_its_sentence_view_from_its_base_example(browser, site, twin_atlas):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from selenium.webdriver.common.by import By
    from test_explore_browser import _lemma_examples

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array

    substitution = pq.read_table(twin_atlas / "substitutions").to_pylist()[0]
    key = f"{substitution['lemma']}.{substitution['pos']}"
    _, example_ids = _lemma_examples(site, key)
    _open(browser, site, f"#/sentence/{key}/{example_ids.index(substitution['example_id'])}")
    link = _wait(browser, f'a.substitution-link[data-substitution-id="{substitution["substitution_id"]}"]')[0]
    link.click()
    _wait(browser, f'#sentence-title[data-example-id="{substitution["substitution_id"]}"]')
    rows = browser.find_elements(By.CSS_SELECTOR, "#sentence-table tbody tr")
    assert substitution["substitute"] in browser.find_element(By.ID, "sentence-title").text

    files = [str(twin_atlas / rel) for rel in Manifest.load(twin_atlas).config_files(f"routing-{MODEL_SLUG}")]
    table = pads.dataset(files).to_table(
        filter=(pc.field("corpus") == "substitutions")
        & (pc.field("source_id") == substitution["substitution_id"])
    )
    experts = routing_array(table.column("experts"))[np.argsort(table.column("token_index").to_numpy())]
    assert len(rows) == table.num_rows > 0
    for tr, want in zip(rows, experts, strict=True):
        cells = tr.find_elements(By.CSS_SELECTOR, "td.expert-cell")
        assert [c.get_attribute("data-experts") for c in cells] == [
            " ".join(map(str, e)) for e in want.tolist()
        ]
    assert _js_errors(browser) == []


def test_a_user_corpus_line_has_its_every_token_view(browser, trace_site):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from selenium.webdriver.common.by import By

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array

    root, site = trace_site
    manifest = Manifest.load(root)
    lines = (
        pads.dataset([str(root / rel) for rel in manifest.config_files("jsonl-examples")])
        .to_table()
        .to_pylist()
    )
    _open(browser, site, "#/texts")
    rows = _wait(browser, "#texts-table tbody tr", len(lines))
    assert sorted(r.get_attribute("data-id") for r in rows) == sorted(x["example_id"] for x in lines)
    line = next(x for x in lines if x["target_start"] is not None)
    browser.find_element(
        By.CSS_SELECTOR, f'#texts-table tr[data-id="{line["example_id"]}"] a.text-link'
    ).click()
    tokens = _wait(browser, "#sentence-table tbody tr")
    target = browser.find_element(By.CSS_SELECTOR, 'pre.trace-text span.segment[data-segment="target"]')
    assert target.text.endswith(line["text"][line["target_start"] : line["target_end"]])

    files = [str(root / rel) for rel in manifest.config_files(f"routing-{MODEL_SLUG}")]
    table = pads.dataset(files).to_table(
        filter=(pc.field("corpus") == "jsonl-examples") & (pc.field("source_id") == line["example_id"])
    )
    experts = routing_array(table.column("experts"))[np.argsort(table.column("token_index").to_numpy())]
    assert len(tokens) == table.num_rows > 0
    for tr, want in zip(tokens, experts, strict=True):
        cells = tr.find_elements(By.CSS_SELECTOR, "td.expert-cell")
        assert [c.get_attribute("data-experts") for c in cells] == [
            " ".join(map(str, e)) for e in want.tolist()
        ]
    assert _js_errors(browser) == []
