"""The explorer in headless Chromium from file://: what the page shows against the atlas's own rows.

Skips (with the reason) when Chromium, chromedriver or selenium is missing; `.ci/run` installs them.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from explore_helpers import MODEL_SLUG, TWIN_SLUG, parquet_targets

pytestmark = pytest.mark.usefixtures("browser")
TIMEOUT = 20


def _wait(driver, css: str, count_at_least: int = 1):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, TIMEOUT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count_at_least
    )
    return driver.find_elements(By.CSS_SELECTOR, css)


def _open(driver, site, fragment: str = ""):
    driver.get((site / "index.html").as_uri() + fragment)
    _wait(driver, "body[data-index-ready]")


def _js_errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def _pick_lemma(twin_atlas) -> tuple[str, str]:
    """A lemma with 2+ senses, a pair of each kind and a multi-token target if there is one: (key, name)."""
    senses = pq.read_table(twin_atlas / "senses").to_pylist()
    pairs = pq.read_table(twin_atlas / "sense-pairs").to_pylist()
    targets = parquet_targets(twin_atlas, MODEL_SLUG)
    keys = sorted({f"{r['lemma']}.{r['pos']}" for r in senses})

    def score(key):
        rows = [r for r in senses if f"{r['lemma']}.{r['pos']}" == key]
        kinds = {p["same_sense"] for p in pairs if f"{p['lemma']}.{p['pos']}" == key}
        multi = any(len(targets.get(r["example_id"], [])) > 1 for r in rows)
        return (len(kinds) == 2, len({r["synset"] for r in rows}) >= 2, multi)

    key = max(keys, key=score)
    return key, key.rsplit(".", 1)[0]


def test_index_search_then_lemma_page(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By

    _open(browser, site)
    senses = pq.read_table(twin_atlas / "senses").to_pylist()
    keys = sorted({f"{r['lemma']}.{r['pos']}" for r in senses})
    rows = _wait(browser, "#lemma-table tbody tr", len(keys))
    assert [r.get_attribute("data-key") for r in rows] == keys
    assert browser.find_element(By.ID, "random-init-global").is_displayed()

    key, name = _pick_lemma(twin_atlas)
    query = name[:3]
    browser.find_element(By.ID, "search").send_keys(query)
    shown = [
        r.get_attribute("data-key") for r in browser.find_elements(By.CSS_SELECTOR, "#lemma-table tbody tr")
    ]
    names = [k.rsplit(".", 1)[0] for k in keys]
    expected = [k for k, n in zip(keys, names, strict=True) if n == query]
    expected += [k for k, n in zip(keys, names, strict=True) if n != query and n.startswith(query)]
    expected += [k for k, n in zip(keys, names, strict=True) if query in n and not n.startswith(query)]
    assert shown == expected and key in shown
    assert browser.find_element(By.ID, "match-count").text.startswith(f"{len(expected)} of {len(keys)}")

    browser.find_element(By.CSS_SELECTOR, f'tr[data-key="{key}"] a.lemma-link').click()
    title = _wait(browser, "#lemma-title")[0]
    assert title.get_attribute("data-key") == key
    rows = [r for r in senses if f"{r['lemma']}.{r['pos']}" == key]
    sections = browser.find_elements(By.CSS_SELECTOR, "section.sense")
    assert [s.get_attribute("data-synset") for s in sections] == sorted(
        {r["synset"] for r in rows}, key=lambda s: next(r["sense_number"] for r in rows if r["synset"] == s)
    )
    for section in sections:
        source = next(r for r in rows if r["synset"] == section.get_attribute("data-synset"))
        assert source["gloss"] in section.find_element(By.CSS_SELECTOR, ".gloss").text
        assert section.find_element(By.CSS_SELECTOR, ".sense-key").text == source["sense_key"]
        for li in section.find_elements(By.CSS_SELECTOR, "li.example"):
            row = next(r for r in rows if r["example_id"] == li.get_attribute("data-example-id"))
            assert li.find_element(By.CSS_SELECTOR, "mark.target").text == row["target_form"]
    assert _js_errors(browser) == []


def _cells_by_layer(figure) -> dict[int, dict[int, float | None]]:
    from selenium.webdriver.common.by import By

    out: dict[int, dict[int, float | None]] = {}
    for rect in figure.find_elements(By.CSS_SELECTOR, "rect.cell"):
        weight = rect.get_attribute("data-weight")
        out.setdefault(int(rect.get_attribute("data-layer-index")), {})[
            int(rect.get_attribute("data-expert"))
        ] = float(weight) if weight else None
    return out


def _check_example_maps(browser, slug: str, expected: dict[str, list[dict]], which: str = "last") -> int:
    """Every per-example heatmap of `slug`: the experts (and weights) of each layer = the Parquet row."""
    from selenium.webdriver.common.by import By

    checked = 0
    for section in browser.find_elements(By.CSS_SELECTOR, "section.sense"):
        ids = {
            li.get_attribute("data-example"): li.get_attribute("data-example-id")
            for li in section.find_elements(By.CSS_SELECTOR, "li.example")
        }
        column = section.find_element(By.CSS_SELECTOR, f'.model-col[data-model="{slug}"]')
        for figure in column.find_elements(By.CSS_SELECTOR, "figure.example-heatmap"):
            rows = expected[ids[figure.get_attribute("data-example")]]
            target = rows[-1] if which == "last" else rows[0]
            cells = _cells_by_layer(figure)
            assert sorted(cells) == list(range(target["experts"].shape[0]))
            for layer, experts in cells.items():
                assert set(experts) == set(target["experts"][layer].tolist())
                for rank, expert in enumerate(target["experts"][layer].tolist()):
                    assert abs(experts[expert] - float(target["weights"][layer][rank])) < 1e-5
            assert json.dumps(_decoded(target["token"]), ensure_ascii=False) in figure.text
            checked += 1
    return checked


def _decoded(piece: str) -> str:
    """The text a byte-level piece stands for, for the pieces of English words: 'Ġ' is a space, 'Ċ' a newline."""
    return piece.replace("\u0120", " ").replace("\u010a", "\n")


def test_heatmap_cells_are_the_parquet_experts_and_the_switcher_shows_the_twin(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    key, _ = _pick_lemma(twin_atlas)
    _open(browser, site, f"#/lemma/{key}")
    _wait(browser, "section.sense")
    n_examples = len(browser.find_elements(By.CSS_SELECTOR, "li.example"))
    columns = browser.find_elements(By.CSS_SELECTOR, "section.sense:first-of-type .model-col")
    assert [c.get_attribute("data-model") for c in columns] == [MODEL_SLUG, TWIN_SLUG]  # twin beside
    banners = browser.find_elements(By.CSS_SELECTOR, "#view .random-init-banner")
    assert {b.get_attribute("data-model") for b in banners} == {MODEL_SLUG, TWIN_SLUG}

    model_rows, twin_rows = parquet_targets(twin_atlas, MODEL_SLUG), parquet_targets(twin_atlas, TWIN_SLUG)
    assert _check_example_maps(browser, MODEL_SLUG, model_rows) == n_examples
    assert _check_example_maps(browser, TWIN_SLUG, twin_rows) == n_examples
    # Two random-init models with other seeds: the heatmaps really come from different rows.
    example_id = browser.find_element(By.CSS_SELECTOR, "li.example").get_attribute("data-example-id")
    assert not np.array_equal(model_rows[example_id][-1]["experts"], twin_rows[example_id][-1]["experts"])

    Select(browser.find_element(By.ID, "model-select")).select_by_value(TWIN_SLUG)
    columns = browser.find_elements(By.CSS_SELECTOR, "section.sense:first-of-type .model-col")
    assert [c.get_attribute("data-model") for c in columns] == [TWIN_SLUG, MODEL_SLUG]
    browser.find_element(By.ID, "show-twins").click()
    columns = browser.find_elements(By.CSS_SELECTOR, "section.sense:first-of-type .model-col")
    assert [c.get_attribute("data-model") for c in columns] == [TWIN_SLUG]
    assert _check_example_maps(browser, TWIN_SLUG, twin_rows) == n_examples

    Select(browser.find_element(By.ID, "subtoken")).select_by_value("first")
    assert _check_example_maps(browser, TWIN_SLUG, twin_rows, which="first") == n_examples
    # Restore the session's page state for the next tests.
    Select(browser.find_element(By.ID, "subtoken")).select_by_value("last")
    browser.find_element(By.ID, "show-twins").click()
    Select(browser.find_element(By.ID, "model-select")).select_by_value(MODEL_SLUG)
    assert _js_errors(browser) == []


def test_sense_map_and_pair_kappa_match_an_independent_count(browser, site, twin_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    key, _ = _pick_lemma(twin_atlas)
    _open(browser, site, f"#/lemma/{key}")
    _wait(browser, "section.sense")
    rows = parquet_targets(twin_atlas, MODEL_SLUG)
    senses = [
        r for r in pq.read_table(twin_atlas / "senses").to_pylist() if f"{r['lemma']}.{r['pos']}" == key
    ]
    for section in browser.find_elements(By.CSS_SELECTOR, "section.sense"):
        ids = [r["example_id"] for r in senses if r["synset"] == section.get_attribute("data-synset")]
        sets = [rows[i][-1]["experts"] for i in ids]
        weights = [rows[i][-1]["weights"] for i in ids]
        figure = section.find_element(
            By.CSS_SELECTOR, f'.model-col[data-model="{MODEL_SLUG}"] figure.sense-heatmap'
        )
        for rect in figure.find_elements(By.CSS_SELECTOR, "rect.cell"):
            layer, expert = (
                int(rect.get_attribute("data-layer-index")),
                int(rect.get_attribute("data-expert")),
            )
            hits = [
                w[layer][list(s[layer]).index(expert)]
                for s, w in zip(sets, weights, strict=True)
                if expert in s[layer]
            ]
            assert int(rect.get_attribute("data-count")) == len(hits) > 0
            assert int(rect.get_attribute("data-n")) == len(ids)
            assert abs(float(rect.get_attribute("data-value")) - sum(hits) / len(ids)) < 1e-5
        total = sum(len(set(s[layer].tolist())) for s in sets for layer in range(5))
        assert total == sum(
            int(r.get_attribute("data-count")) for r in figure.find_elements(By.CSS_SELECTOR, "rect.cell")
        )

    # Per layer mean kappa over the lemma's pairs, computed here from the Parquet rows.
    pairs = [
        p for p in pq.read_table(twin_atlas / "sense-pairs").to_pylist() if f"{p['lemma']}.{p['pos']}" == key
    ]
    k, n = 8, 32
    table = browser.find_element(By.CSS_SELECTOR, f'table.pair-kappa[data-model="{MODEL_SLUG}"]')
    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
        layer = int(tr.get_attribute("data-layer-index"))
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for column, same in ((1, True), (2, False)):
            kappas = []
            for p in pairs:
                if p["same_sense"] != same:
                    continue
                a = set(rows[p["example_a"]][-1]["experts"][layer].tolist())
                b = set(rows[p["example_b"]][-1]["experts"][layer].tolist())
                kappas.append((len(a & b) - k * k / n) / (k - k * k / n))
            shown = cells[column]
            assert (
                (shown == "–")
                if not kappas
                else (shown == f"{np.mean(kappas):.3f}" or float(shown) == round(np.mean(kappas), 3))
            )

    # The overlap matrix at a chosen layer: shared experts of each example pair.
    Select(browser.find_element(By.ID, "layer-select")).select_by_value("3")
    svg = browser.find_element(By.CSS_SELECTOR, f'svg.overlap[data-model="{MODEL_SLUG}"]')
    assert svg.get_attribute("data-layer-index") == "3"
    _, index_data = _lemma_examples(site, key)
    for rect in svg.find_elements(By.CSS_SELECTOR, "rect.ov")[:40]:
        a = index_data[int(rect.get_attribute("data-a"))]
        b = index_data[int(rect.get_attribute("data-b"))]
        expected = len(set(rows[a][-1]["experts"][3].tolist()) & set(rows[b][-1]["experts"][3].tolist()))
        assert int(rect.get_attribute("data-overlap")) == expected
    Select(browser.find_element(By.ID, "layer-select")).select_by_value("0")
    assert _js_errors(browser) == []


def _lemma_examples(site, key):
    from explore_helpers import read_data_file

    _, index = read_data_file(site / "data" / "index.js")
    i = index["lemmas"]["key"].index(key)
    _, data = read_data_file(site / "data" / "lemmas" / f"{i:05d}.js")
    return data, [e["id"] for e in data["examples"]]


def test_model_page_shows_headline_metrics_and_every_control(browser, twin_atlas, tmp_path):
    """Controls are rendered from whatever metrics.json holds: here with the extended `controls` keys."""
    from selenium.webdriver.common.by import By

    from atlas_build.explore import build_site

    metrics = json.loads((twin_atlas / "metrics" / "metrics.json").read_text())
    entry = metrics["models"][MODEL_SLUG]["sense_pairs"]
    planted = {}
    for j, name in enumerate(("context_words", "token_identity", "null_model", "all")):
        estimate = [round(0.01 * (j + 1) + 0.001 * layer, 6) for layer in range(5)]
        planted[name] = {
            "method": f"planted method {name}",
            "delta": {
                "estimate": estimate,
                "ci_low": [x - 0.01 for x in estimate],
                "ci_high": [x + 0.01 for x in estimate],
            },
            "layer_mean": {
                "estimate": 0.1 * (j + 1),
                "ci_low": 0.1 * (j + 1) - 0.05,
                "ci_high": 0.1 * (j + 1) + 0.05,
            },
        }
    entry["controls"] = planted
    metrics["models"][MODEL_SLUG]["paths"] = {"top1_paths": {"distinct": [3, 4, 5, 6, 7]}, "window": 2}
    metrics_dir = tmp_path / "metrics"
    shutil.copytree(twin_atlas / "metrics", metrics_dir)
    (metrics_dir / "metrics.json").write_text(json.dumps(metrics))
    site = tmp_path / "site"
    build_site(twin_atlas, site, metrics_path=metrics_dir / "metrics.json")

    _open(browser, site, f"#/model/{MODEL_SLUG}")
    _wait(browser, "#headline-table")
    assert (
        browser.find_element(By.CSS_SELECTOR, "#view .random-init-banner").get_attribute("data-model")
        == MODEL_SLUG
    )
    delta = entry["layer_mean"]["delta"]
    headline = browser.find_element(By.ID, "headline-table").text
    assert f"{delta['estimate']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]" in headline

    rows = {
        tr.get_attribute("data-control"): tr
        for tr in browser.find_elements(By.CSS_SELECTOR, "#controls-table tbody tr")
    }
    # The older aliases (context_adjusted, over_null) of named controls are shown once, under the new name.
    assert set(rows) == set(planted)
    for name, control in planted.items():
        tr = rows[name]
        assert tr.find_element(By.CSS_SELECTOR, ".method").text == control["method"]
        lm = control["layer_mean"]
        assert tr.find_element(By.CSS_SELECTOR, ".layer-mean").text == (
            f"{lm['estimate']:+.3f} [{lm['ci_low']:+.3f}, {lm['ci_high']:+.3f}]"
        )
        per_layer = [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td[data-layer-index]")]
        assert per_layer == [f"{x:+.3f}" for x in control["delta"]["estimate"]]

    # Load per layer = metrics.json's, co-activation drawn, unknown sections (paths) shown as they are.
    load = metrics["models"][MODEL_SLUG]["experts"]["load"]
    cells = browser.find_elements(By.CSS_SELECTOR, "#load-map rect.cell")
    assert len(cells) == sum(1 for layer in load for v in layer if v > 0)
    for rect in cells[:20]:
        layer, expert = int(rect.get_attribute("data-layer-index")), int(rect.get_attribute("data-expert"))
        assert float(rect.get_attribute("data-load")) == load[layer][expert]
    _wait(browser, "canvas.coact")
    paths = browser.find_element(By.ID, "section-paths").text
    assert re.search(r"3\s+4\s+5\s+6\s+7", paths) and "window" in paths
    assert _js_errors(browser) == []


def test_model_page_without_metrics_says_how_to_make_them(browser, small_atlas, tmp_path):
    from selenium.webdriver.common.by import By

    from atlas_build.explore import build_site

    site = tmp_path / "site"
    build_site(small_atlas, site)
    _open(browser, site, f"#/model/{MODEL_SLUG}")
    assert "atlas metrics" in _wait(browser, "#no-metrics")[0].text
    assert browser.find_element(By.CSS_SELECTOR, "#view .random-init-banner").is_displayed()


def _ids_only_wide_atlas(root):
    """A SYNTHETIC atlas with 300 experts (uint16 ids) whose routing config has no weights (ids only)."""
    import pyarrow as pa

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA, routing_schema
    from atlas_build.atlas.store import write_config
    from atlas_build.atlas.synthetic import SYNTHETIC_SLUG, write_synthetic_data

    write_synthetic_data(root, n_lemmas=3, n_experts=300, n_layers=3, top_k=4)
    manifest = Manifest.load(root)
    config = f"routing-{SYNTHETIC_SLUG}"
    table = pa.concat_tables(pq.read_table(root / rel) for rel in manifest.config_files(config))
    schema = routing_schema(300, 3, 4, None)
    table = table.set_column(
        table.schema.get_field_index("weights"),
        "weights",
        pa.nulls(table.num_rows, schema.field("weights").type),
    )
    write_config(root, manifest, config, table.cast(schema), schema)
    models = pq.read_table(root / "models").to_pylist()
    models[0]["weights_dtype"] = None
    write_config(root, manifest, MODELS, pa.Table.from_pylist(models, schema=MODELS_SCHEMA), MODELS_SCHEMA)
    manifest.save(root)
    return SYNTHETIC_SLUG


def test_ids_only_routing_with_uint16_ids(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_array
    from atlas_build.explore import build_site

    atlas = tmp_path / "atlas"
    slug = _ids_only_wide_atlas(atlas)
    site = tmp_path / "site"
    build_site(atlas, site)
    manifest = Manifest.load(atlas)
    table = pq.read_table(atlas / manifest.config_files(f"routing-{slug}")[0])
    mask = np.array(table.column("is_target").to_pylist())
    experts = routing_array(table.column("experts"))[mask]
    by_id = dict(zip(np.array(table.column("source_id").to_pylist())[mask], experts, strict=True))
    assert max(int(e.max()) for e in by_id.values()) >= 256  # the ids really need uint16

    _open(browser, site, "#/lemma/lemma00001.n")
    _wait(browser, "section.sense")
    assert browser.find_elements(By.CSS_SELECTOR, "#view .synthetic-banner")
    # 300 experts open on the lemma's top experts; the full map is one click away.
    assert browser.find_element(By.CSS_SELECTOR, "svg.sense-map").get_attribute("data-columns") == "sorted"
    browser.find_element(By.ID, "full-map").click()
    assert browser.find_element(By.CSS_SELECTOR, "svg.sense-map").get_attribute("data-columns") == "id"
    for li in browser.find_elements(By.CSS_SELECTOR, "li.example"):
        figure = browser.find_element(
            By.CSS_SELECTOR, f'figure.example-heatmap[data-example="{li.get_attribute("data-example")}"]'
        )
        cells = _cells_by_layer(figure)
        target = by_id[li.get_attribute("data-example-id")]
        assert {layer: set(e) for layer, e in cells.items()} == {
            layer: set(target[layer].tolist()) for layer in range(3)
        }
        assert all(w is None for experts_ in cells.values() for w in experts_.values())  # no weights to show
    assert "share of examples" in browser.find_element(By.CSS_SELECTOR, "figure.sense-heatmap").text
    assert _js_errors(browser) == []
