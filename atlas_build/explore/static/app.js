/* routing-atlas explorer. No libraries: the page must open from file:// with no network.
 * Over 600 lines: one closure whose pages share its loaders, decoders and drawing helpers; the pages
 * that need only those helpers live in sections.js (paths, corpora, expert and comparison pages).
 *
 * Data arrive as scripts that call the window.atlas*Loaded callbacks below (browsers refuse fetch() of
 * file:// URLs). Routes: #/ (lemma index), #/lemma/<lemma.pos>, #/model/<slug>,
 * #/expert/<slug>/<layer index>/<expert>, #/compare/<slug a>/<slug b>.
 * Routing arrays are little-endian base64: expert ids uint8|uint16 [rows, layers, k], weights float16.
 */
(function () {
  'use strict';

  const MAX_ROWS = 200; // index rows drawn at once; the search narrows the rest
  const TOP_EXPERTS = 48; // columns of the "top experts" view: legible at 256 experts
  const WIDE = 64; // above this many experts a lemma's maps open on its top experts
  const state = {
    index: null, keyToFile: new Map(), models: new Map(), model: null, showTwins: true,
    subtoken: 'last', layer: 0, query: '', coactLayer: 0, expertView: null, l0: 0, l1: null, also: null,
  };
  const cache = { lemma: new Map(), model: new Map(), coact: new Map(), search: new Map(), expert: new Map(), sentence: new Map(), trace: new Map(), texts: new Map() };
  const pending = new Map(); // "kind:key" -> {resolve, reject}

  // ---- data loading ------------------------------------------------------------------------------
  function settle(kind, key, data) {
    cache[kind].set(key, data);
    const waiter = pending.get(kind + ':' + key);
    if (waiter) { pending.delete(kind + ':' + key); waiter.resolve(data); }
  }
  window.atlasLemmaLoaded = (key, data) => settle('lemma', key, data);
  window.atlasModelLoaded = (key, data) => settle('model', key, data);
  window.atlasCoactLoaded = (key, data) => settle('coact', key, data);
  window.atlasSearchLoaded = (key, data) => settle('search', key, data);
  window.atlasExpertLoaded = (key, data) => settle('expert', key, data);
  window.atlasSentenceLoaded = (key, data) => settle('sentence', key, data);
  window.atlasTraceLoaded = (key, data) => settle('trace', key, data);
  window.atlasTextsLoaded = (key, data) => settle('texts', key, data);

  function load(kind, key, src) {
    if (cache[kind].has(key)) return Promise.resolve(cache[kind].get(key));
    const id = kind + ':' + key;
    if (pending.has(id)) return pending.get(id).promise;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    pending.set(id, { resolve, reject, promise });
    const script = document.createElement('script');
    script.src = src;
    script.onerror = () => {
      pending.delete(id);
      reject(new Error('data file ' + src + ' is missing: rerun `atlas explore` to rewrite the site'));
    };
    document.head.appendChild(script);
    return promise;
  }

  window.atlasIndexMissing = function () {
    showError(document.getElementById('view'), 'data/index.js is missing: rerun `atlas explore DIR --out SITE`.');
  };

  window.atlasIndexLoaded = function (_key, data) {
    state.index = data;
    data.lemmas.key.forEach((key, i) => state.keyToFile.set(key, i));
    data.models.forEach((m) => state.models.set(m.slug, m));
    const routed = data.models.filter((m) => m.has_routing);
    const trained = routed.filter((m) => !m.random_init);
    state.model = (trained[0] || routed[0] || {}).slug || null;
    document.getElementById('atlas-name').textContent = data.atlas.name;
    const nav = document.getElementById('model-nav');
    data.models.forEach((m) => nav.appendChild(
      h('a', { href: '#/model/' + encodeURIComponent(m.slug), class: 'model-link' }, 'model: ' + m.slug,
        m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null)));
    globalBanner();
    window.addEventListener('hashchange', route);
    route();
    window.atlasIndexReadyMs = performance.now();
    document.body.dataset.indexReady = '1';
  };

  // ---- small helpers -----------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    appendAll(el, children);
    return el;
  }
  /** Replace el's children; arrays (of arrays) are flattened and null/false skipped. */
  function put(el, ...children) { el.textContent = ''; appendAll(el, children); }
  function appendAll(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
    for (const c of children) if (c) el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    return el;
  }
  function fmt(x, digits = 3, signed = false) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    if (typeof x !== 'number') return String(x);
    if (Number.isInteger(x) && !signed) return x.toLocaleString('en-US');
    const t = x.toFixed(digits);
    return signed && x >= 0 ? '+' + t : t;
  }
  function ci(iv, digits = 3, signed = true) {
    if (!iv || iv.estimate === undefined) return '–';
    return fmt(iv.estimate, digits, signed) + ' [' + fmt(iv.ci_low, digits, signed) + ', ' + fmt(iv.ci_high, digits, signed) + ']';
  }
  // ---- tables: sort by a header click, export as CSV -------------------------------------------------
  function csvCell(x) { const t = String(x === null || x === undefined ? '' : x); return /[",\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t; }
  function csvText(rows) { return rows.map((r) => r.map(csvCell).join(',')).join('\n') + '\n'; }
  /** A link that downloads `rows()` (an array of arrays, header first) as `name`.csv. */
  function csvLink(name, rows, label) {
    const a = h('a', { class: 'csv-link', href: '#', download: name + '.csv', 'data-csv': name }, label || 'CSV');
    a.addEventListener('click', () => { a.href = URL.createObjectURL(new Blob([csvText(rows())], { type: 'text/csv' })); });
    return a;
  }
  function tableRows(table) {
    return Array.from(table.querySelectorAll(':scope > thead > tr, :scope > tbody > tr')).map((tr) =>
      Array.from(tr.children).map((c) => c.textContent.trim()));
  }
  function sortKey(text) { const x = parseFloat(text.replace(/[+,%]/g, '')); return Number.isNaN(x) ? null : x; }
  /** Every top-level table of `root` with a header row: click a header to sort, a CSV link above it. */
  function enhanceTables(root, page) {
    root.querySelectorAll('table').forEach((table, i) => {
      if (table.dataset.enhanced || table.closest('td')) return;
      table.dataset.enhanced = '1';
      const head = table.querySelector(':scope > thead > tr');
      const name = (page + '-' + (table.id || table.className || 'table-' + i)).replace(/[^A-Za-z0-9._-]+/g, '_');
      table.parentNode.insertBefore(h('div', { class: 'table-tools' }, csvLink(name, () => tableRows(table))), table);
      if (!head) return;
      Array.from(head.children).forEach((th, col) => {
        th.classList.add('sortable');
        th.title = (th.title ? th.title + ' · ' : '') + 'click to sort';
        th.addEventListener('click', () => {
          const body = table.querySelector(':scope > tbody');
          const desc = th.classList.contains('sorted-asc');
          head.querySelectorAll('th').forEach((x) => x.classList.remove('sorted-asc', 'sorted-desc'));
          th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
          const rows = Array.from(body.children).map((tr) => [tr, (tr.children[col] || {}).textContent || '']);
          rows.sort(([, a], [, b]) => {
            const x = sortKey(a), y = sortKey(b);
            const c = x !== null && y !== null ? x - y : a.localeCompare(b);
            return desc ? -c : c;
          });
          rows.forEach(([tr]) => body.appendChild(tr));
        });
      });
    });
  }

  function showError(view, message) { put(view, h('p', { class: 'error' }, message)); }
  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function uint16s(b64) {
    const bytes = bytesOf(b64);
    const view = new DataView(bytes.buffer);
    const out = new Uint16Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    return out;
  }
  function halfToFloat(bits) {
    const sign = bits & 0x8000 ? -1 : 1, exp = (bits >> 10) & 0x1f, frac = bits & 0x3ff;
    if (exp === 0) return sign * Math.pow(2, -14) * (frac / 1024);
    if (exp === 31) return frac ? NaN : sign * Infinity;
    return sign * Math.pow(2, exp - 15) * (1 + frac / 1024);
  }
  function float16s(b64) { return Float32Array.from(uint16s(b64), halfToFloat); }
  // Blues ramp: 0 -> near white, 1 -> dark blue.
  const RAMP = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  function colour(t) {
    t = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
    const c = RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * f));
    return 'rgb(' + c.join(',') + ')';
  }
  const tooltip = (() => { const el = h('div', { class: 'tooltip' }); document.body.appendChild(el); return el; })();
  function hover(el, text) {
    el.addEventListener('mousemove', (e) => {
      tooltip.textContent = typeof text === 'function' ? text(e) : text;
      tooltip.style.display = 'block';
      tooltip.style.left = (e.clientX + 12) + 'px';
      tooltip.style.top = (e.clientY + 12) + 'px';
    });
    el.addEventListener('mouseleave', () => { tooltip.style.display = 'none'; });
  }
  function modelLabel(m) { return m.slug + (m.random_init ? ' (RANDOM-INIT)' : '') + (m.synthetic ? ' (SYNTHETIC)' : ''); }

  // ---- banners -----------------------------------------------------------------------------------
  function randomInitBanner(m) {
    if (!m || !m.random_init) return null;
    return h('div', { class: 'banner random-init-banner', 'data-model': m.slug },
      h('strong', {}, 'RANDOM-INIT: '), m.slug,
      ' has random (seeded' + (m.seed !== null && m.seed !== undefined ? ', seed ' + m.seed : '') +
      ') weights, not trained ones. Its routing is a null model: plumbing, not a finding.');
  }
  function synthBanner(m) {
    if (!m || !m.synthetic) return null;
    return h('div', { class: 'banner synthetic-banner' }, h('strong', {}, 'SYNTHETIC: '),
      m.slug + ' is generated routing, not a model; the numbers test the pipeline only.');
  }
  function globalBanner() {
    const el = document.getElementById('global-banner');
    const random = state.index.models.filter((m) => m.random_init).map((m) => m.slug);
    if (random.length) {
      el.appendChild(h('div', { class: 'banner random-init-banner', id: 'random-init-global' },
        h('strong', {}, 'RANDOM-INIT model(s): '), random.join(', '),
        '. Their weights are random, not trained: whatever they show is a null model, not a finding.'));
    }
    if (state.index.atlas.synthetic) {
      el.appendChild(h('div', { class: 'banner synthetic-banner' }, h('strong', {}, 'SYNTHETIC atlas: '),
        'generated texts and/or routing; it tests the pipeline, it is not data about a model.'));
    }
  }

  // ---- routing -----------------------------------------------------------------------------------
  function route() {
    const view = document.getElementById('view');
    const hash = location.hash.replace(/^#\/?/, '');
    const [page, ...rest] = hash.split('/');
    const arg = decodeURIComponent(rest.join('/'));
    window.scrollTo(0, 0);
    if (page === 'lemma') return renderLemma(view, arg);
    if (page === 'model') return renderModel(view, arg);
    if (page === 'expert') return renderExpert(view, rest.map(decodeURIComponent));
    if (page === 'compare') return renderCompare(view, rest.map(decodeURIComponent));
    if (page === 'trace') return sectionViews().tracePage(view, Number(rest[0]));
    if (page === 'texts') return renderTexts(view);
    if (page === 'sentence') {
      const key = decodeURIComponent(rest[0] || '');
      if (!state.keyToFile.has(key)) return showError(view, 'No lemma ' + JSON.stringify(key) + ' in this atlas.');
      return sectionViews().sentencePage(view, key, decodeURIComponent(rest[1] || '0'));
    }
    return renderIndex(view);
  }

  // ---- index -------------------------------------------------------------------------------------
  function renderIndex(view) {
    const idx = state.index, a = idx.atlas;
    document.title = 'routing-atlas explorer: ' + a.name;
    const search = h('input', { id: 'search', type: 'search', placeholder: 'search a lemma (e.g. bank)', value: state.query, autocomplete: 'off' });
    const count = h('span', { id: 'match-count', class: 'muted' });
    const tbody = h('tbody');
    const table = h('table', { id: 'lemma-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'lemma'), h('th', {}, 'pos'),
        h('th', { class: 'num', title: 'senses with an example in the atlas / synsets in WordNet' }, 'senses'),
        h('th', { class: 'num' }, 'examples'), h('th', { class: 'num' }, 'same-sense pairs'),
        h('th', { class: 'num' }, 'different-sense pairs'))), tbody);
    const textHits = h('div', { id: 'text-hits' });
    const draw = () => {
      state.query = search.value;
      const hits = matches(search.value);
      count.textContent = hits.length.toLocaleString('en-US') + ' of ' + idx.lemmas.key.length.toLocaleString('en-US') +
        ' lemmas' + (hits.length > MAX_ROWS ? ' (first ' + MAX_ROWS + ' shown; type to narrow)' : '');
      put(tbody, ...hits.slice(0, MAX_ROWS).map(lemmaRow));
      drawTextHits(textHits, search.value, new Set(hits));
    };
    search.addEventListener('input', draw);
    const models = idx.models.map((m) => h('li', {},
      h('a', { href: '#/model/' + encodeURIComponent(m.slug) }, m.slug), ' ',
      h('span', { class: 'muted' }, m.model_id + ', ' + m.moe_layers.length + ' MoE layers, top-' + m.top_k + ' of ' +
        m.n_routed_experts + ' experts' + (m.weights_dtype ? ', gate weights ' + m.weights_dtype : ', ids only')),
      m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null,
      m.twins.length ? h('span', { class: 'muted' }, ' · twin of ' + m.twins.join(', ')) : null));
    put(view,
      h('h1', {}, 'Lemmas of ', h('code', {}, a.name)),
      h('div', { class: 'summary-cards' },
        card('lemmas', a.n_lemmas), card('examples', a.n_examples), card('sense pairs', a.n_pairs), card('models', idx.models.length)),
      h('h3', {}, 'Models'), h('ul', { id: 'model-list' }, models),
      (idx.traces || []).length ? h('div', { id: 'trace-list' }, h('h3', {}, 'Traces'), h('ul', {}, idx.traces.map((t, i) =>
        h('li', {}, h('a', { class: 'trace-link', href: '#/trace/' + t.n }, t.id), h('span', { class: 'muted' }, ' ' + t.template + ', ' + fmt(t.chars) + ' characters, ' + t.source))))) : null,
      idx.n_user_texts ? h('p', {}, h('a', { id: 'texts-link', href: '#/texts' }, 'Your corpora\'s ' + fmt(idx.n_user_texts) + ' texts, every token at every layer →')) : null,
      idx.models.filter((m) => m.has_metrics).length > 1 ? h('p', {}, h('a', { id: 'compare-link', href: '#/compare' }, 'Compare two models side by side →')) : null,
      idx.metrics ? null : h('p', { class: 'muted' }, 'No metrics/metrics.json in this atlas: model pages show the models rows only (run `atlas metrics DIR --out DIR/metrics`, then `atlas explore` again).'),
      h('div', { class: 'controls' }, h('label', {}, 'Search ', search), count,
        h('span', { class: 'muted' }, 'lemma names; below: glosses, sense keys, synsets, target tokens; "L3 E12" or "expert 12" opens an expert')),
      table, textHits);
    draw();
    enhanceTables(view, 'index');
  }
  /** Lemmas whose glosses, sense keys/synsets or target tokens hold the query (data/search.js, loaded on use). */
  function drawTextHits(el, query, shown) {
    const q = query.trim().toLowerCase();
    if (q.length < 2) return put(el);
    const expert = /^(?:l(?:ayer)?\s*(\d+)\s*[\/, ]?\s*)?e(?:xpert)?\s*(\d+)$/.exec(q);
    load('search', 'search', 'data/search.js').then((S) => {
      if (state.query.trim().toLowerCase() !== q) return;
      const out = [];
      const keys = state.index.lemmas.key;
      for (let i = 0; i < keys.length && out.length < MAX_ROWS; i++) {
        const where = [];
        const g = S.glosses[i].toLowerCase(), at = g.indexOf(q);
        if (at >= 0) where.push(['gloss', S.glosses[i].slice(Math.max(0, at - 30), at + q.length + 40)]);
        if (S.keys[i].toLowerCase().includes(q)) where.push(['sense key / synset', S.keys[i].split(' ').filter((x) => x.toLowerCase().includes(q)).join(' ')]);
        if ((' ' + S.tokens[i].toLowerCase() + ' ').includes(' ' + q + ' ')) where.push(['target token', q]);
        if (where.length) out.push([i, where]);
      }
      const rows = out.map(([i, where]) => h('tr', { 'data-key': keys[i] },
        h('td', {}, h('a', { class: 'lemma-link', href: '#/lemma/' + encodeURIComponent(keys[i]) }, keys[i])),
        h('td', {}, where.map(([k]) => k).join(', ')), h('td', { class: 'hit-text' }, where.map(([, t]) => t).join(' · '))));
      const models = state.index.models.filter((m) => m.has_routing);
      const experts = expert ? models.map((m) => {
        const e = Number(expert[2]);
        const layers = expert[1] !== undefined ? [m.moe_layers.indexOf(Number(expert[1]))].filter((l) => l >= 0) : m.moe_layers.map((_, l) => l).slice(0, 8);
        return e < m.n_routed_experts ? h('li', {}, m.slug + ': ', layers.map((l) => h('a', { class: 'expert-link', href: expertHref(m.slug, l, e) }, 'layer ' + m.moe_layers[l] + ' expert ' + e + ' '))) : null;
      }) : [];
      put(el, experts.length ? h('ul', { id: 'expert-hits' }, experts) : null,
        h('h3', {}, rows.length + (rows.length === MAX_ROWS ? '+' : '') + ' lemma(s) with a gloss, sense key or target token matching ' + JSON.stringify(query.trim())),
        rows.length ? h('table', { id: 'text-hit-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'lemma'), h('th', {}, 'matched in'), h('th', {}, 'match'))), h('tbody', {}, rows)) : null);
    }, (err) => put(el, h('p', { class: 'error' }, err.message)));
  }
  function expertHref(slug, l, e) { return '#/expert/' + encodeURIComponent(slug) + '/' + l + '/' + e; }

  function card(label, value) { return h('div', { class: 'card' }, h('div', { class: 'big' }, fmt(value)), h('div', { class: 'muted' }, label)); }
  function normalise(q) { return q.trim().toLowerCase().replace(/\s+/g, '_'); }
  function matches(query) {
    const keys = state.index.lemmas.key, q = normalise(query);
    const all = keys.map((_, i) => i);
    if (!q) return all;
    const exact = [], prefix = [], inside = [];
    for (const i of all) {
      const key = keys[i].toLowerCase(), name = key.slice(0, key.lastIndexOf('.'));
      if (name === q || key === q) exact.push(i);
      else if (name.startsWith(q)) prefix.push(i);
      else if (name.includes(q)) inside.push(i);
    }
    return exact.concat(prefix, inside);
  }
  function lemmaRow(i) {
    const L = state.index.lemmas, key = L.key[i], dot = key.lastIndexOf('.');
    return h('tr', { 'data-key': key },
      h('td', {}, h('a', { class: 'lemma-link', href: '#/lemma/' + encodeURIComponent(key) }, key.slice(0, dot).replace(/_/g, ' '))),
      h('td', {}, key.slice(dot + 1)),
      h('td', { class: 'num' }, L.senses[i] + ' / ' + L.wordnet_senses[i]),
      h('td', { class: 'num' }, L.examples[i]), h('td', { class: 'num' }, L.same[i]), h('td', { class: 'num' }, L.different[i]));
  }

  // ---- lemma page --------------------------------------------------------------------------------
  function renderLemma(view, key) {
    if (!state.keyToFile.has(key)) return showError(view, 'No lemma ' + JSON.stringify(key) + ' in this atlas.');
    const file = 'data/lemmas/' + String(state.keyToFile.get(key)).padStart(5, '0') + '.js';
    put(view, h('p', { class: 'muted' }, 'Loading ' + key + '…'));
    load('lemma', key, file).then((data) => {
      if (location.hash.replace(/^#\/?/, '') !== 'lemma/' + encodeURIComponent(key)) return; // navigated away
      drawLemma(view, data);
    }, (err) => showError(view, err.message));
  }

  function shownModels(data) {
    const routed = (slug) => data.routing[slug] && state.models.get(slug);
    let primary = routed(state.model) ? state.model : Object.keys(data.routing)[0];
    if (!primary) return [];
    const twins = state.showTwins ? state.models.get(primary).twins.filter(routed) : [];
    const also = routed(state.also) && state.also !== primary && !twins.includes(state.also) ? [state.also] : [];
    return [primary].concat(twins, also).map((slug) => state.models.get(slug));
  }

  /** Per model: the chosen target sub-token's row of each example (or -1) and decoded arrays. */
  function decodeRouting(data, m) {
    const r = data.routing[m.slug];
    if (r._decoded) return r._decoded;
    const L = m.moe_layers.length, k = m.top_k;
    const experts = m.n_routed_experts <= 256 ? bytesOf(r.experts) : uint16s(r.experts);
    const weights = r.weights ? float16s(r.weights) : null;
    const first = new Array(data.examples.length).fill(-1), last = new Array(data.examples.length).fill(-1);
    r.example.forEach((ex, row) => { if (first[ex] < 0) first[ex] = row; last[ex] = row; });
    r._decoded = { L, k, N: m.n_routed_experts, experts, weights, first, last, r };
    return r._decoded;
  }
  function rowOf(dec, ex) { return (state.subtoken === 'first' ? dec.first : dec.last)[ex]; }
  function expertsAt(dec, row, l) {
    const base = (row * dec.L + l) * dec.k;
    return Array.from(dec.experts.subarray(base, base + dec.k));
  }
  function weightsAt(dec, row, l) {
    if (!dec.weights) return null;
    const base = (row * dec.L + l) * dec.k;
    return Array.from(dec.weights.subarray(base, base + dec.k));
  }

  function drawLemma(view, data) {
    document.title = data.lemma + ' (' + data.pos + ') · routing-atlas explorer';
    const models = shownModels(data);
    const routedModels = state.index.models.filter((m) => data.routing[m.slug]);
    const select = h('select', { id: 'model-select' }, routedModels.map((m) =>
      h('option', { value: m.slug, selected: models[0] && m.slug === models[0].slug }, modelLabel(m))));
    select.addEventListener('change', () => { state.model = select.value; drawLemma(view, data); });
    const twins = h('input', { id: 'show-twins', type: 'checkbox', checked: state.showTwins });
    twins.addEventListener('change', () => { state.showTwins = twins.checked; drawLemma(view, data); });
    const sub = h('select', { id: 'subtoken' }, h('option', { value: 'last', selected: state.subtoken === 'last' }, 'last (as `atlas metrics` by default)'),
      h('option', { value: 'first', selected: state.subtoken === 'first' }, 'first'));
    sub.addEventListener('change', () => { state.subtoken = sub.value; drawLemma(view, data); });
    const nLayers = models.length ? models[0].moe_layers.length : 0;
    if (state.layer >= nLayers) state.layer = 0;
    const layer = h('select', { id: 'layer-select' }, (models[0] ? models[0].moe_layers : []).map((ml, li) =>
      h('option', { value: li, selected: li === state.layer }, 'MoE layer ' + ml + ' (#' + li + ')')));
    layer.addEventListener('change', () => { state.layer = Number(layer.value); drawLemma(view, data); });
    const nSame = data.pairs.filter((p) => p[2]).length;
    const ctx = lemmaContext(data, models);
    const grouped = models.some((m) => m.n_group > 1);
    const expertView = h('select', { id: 'expert-view' },
      [['top', 'top ' + TOP_EXPERTS + ' experts of this lemma'], ['sorted', 'all, most used first'],
        grouped ? ['groups', 'all, by expert group, most used group first'] : null, ['id', 'all, in id order (full map)']]
        .filter(Boolean).map(([v, t]) => h('option', { value: v, selected: v === ctx.expertView }, t)));
    expertView.addEventListener('change', () => { state.expertView = expertView.value; drawLemma(view, data); });
    const layerOptions = (sel) => (models[0] ? models[0].moe_layers : []).map((ml, li) => h('option', { value: li, selected: li === sel }, String(ml)));
    const from = h('select', { id: 'layer-from' }, layerOptions(ctx.l0)), to = h('select', { id: 'layer-to' }, layerOptions(ctx.l1));
    const zoom = () => { state.l0 = Number(from.value); state.l1 = Math.max(state.l0, Number(to.value)); drawLemma(view, data); };
    from.addEventListener('change', zoom); to.addEventListener('change', zoom);
    const full = h('button', { id: 'full-map', type: 'button', onclick: () => { state.expertView = 'id'; state.l0 = 0; state.l1 = null; drawLemma(view, data); } }, 'full map');
    const twinText = twinLabel(models[0]);
    const also = h('select', { id: 'also-select' }, h('option', { value: '' }, '(none)'),
      routedModels.filter((m) => models[0] && m.slug !== models[0].slug).map((m) => h('option', { value: m.slug, selected: m.slug === state.also }, modelLabel(m))));
    also.addEventListener('change', () => { state.also = also.value || null; drawLemma(view, data); });
    put(view,
      h('p', {}, h('a', { href: '#/' }, '← all lemmas')),
      h('h1', { id: 'lemma-title', 'data-key': data.key }, data.lemma.replace(/_/g, ' '), ' ', h('span', { class: 'muted' }, '(' + data.pos + ')')),
      h('p', { class: 'muted' }, data.senses.length + ' senses with examples (of ' + data.wordnet_senses + ' in WordNet), ' +
        data.examples.length + ' examples, ' + nSame + ' same-sense and ' + (data.pairs.length - nSame) + ' different-sense pairs.'),
      h('div', { class: 'controls' },
        h('label', {}, 'Model ', select),
        twinText ? h('label', { id: 'twin-label' }, twins, twinText) : h('span', { class: 'muted', id: 'twin-label' }, 'no twin of this model in the atlas'),
        routedModels.length > 1 ? h('label', {}, 'also show ', also) : null,
        h('label', {}, 'Target sub-token ', sub), h('label', {}, 'Overlap at ', layer)),
      h('div', { class: 'controls' }, h('label', {}, 'Experts ', expertView),
        h('label', {}, 'MoE layers ', from, ' to ', to), full, legend(ctx.scale)),
      models.map((m) => h('div', {}, randomInitBanner(m), synthBanner(m))),
      models.length ? null : h('p', { class: 'muted' }, 'No model routed this lemma.'),
      h('h2', {}, 'Senses and their routing'),
      h('p', { class: 'muted' }, 'Heatmaps: rows are MoE layers, columns experts; a cell is coloured by the gate weight of that expert for the target token (ids-only atlases: by how often it is chosen). The sense map averages over the sense\'s examples (an unchosen expert counts 0). Every map on this page uses the one colour scale of the legend above.'),
      data.senses.map((sense, si) => senseSection(data, sense, si, models, ctx)),
      h('h2', {}, 'Same- vs different-sense overlap'),
      models.length ? overlapSection(data, models) : null);
    view.querySelector('#lemma-title').appendChild(csvLink(data.key + '-routing', () => lemmaCsv(data, models), 'CSV of the routing rows shown'));
    enhanceTables(view, data.key);
  }

  /** Every target sub-token row behind this page's maps: one line per (model, example, layer, rank). */
  function lemmaCsv(data, models) {
    const out = [['model', 'source_id', 'sense_key', 'token_index', 'token', 'moe_layer', 'rank', 'expert', 'weight']];
    for (const m of models) {
      const dec = decodeRouting(data, m);
      dec.r.example.forEach((ei, row) => {
        const ex = data.examples[ei];
        for (let l = 0; l < dec.L; l++) {
          const e = expertsAt(dec, row, l), w = weightsAt(dec, row, l);
          e.forEach((x, rank) => out.push([m.slug, ex.id, data.senses[ex.sense].sense_key, dec.r.token_index[row], tokenText(dec.r, row), m.moe_layers[l], rank + 1, x, w ? w[rank] : '']));
        }
      });
    }
    return out;
  }

  /** The decoded text of a routing row's token (older sites: the stored piece). */
  function tokenText(r, row) { return r.text ? r.text[row] : r.token[row]; }

  /** What the model switcher offers beside `m`: names what its twins are, or null when it has none. */
  function twinLabel(m) {
    if (!m || !m.twins.length) return null;
    const twins = m.twins.map((t) => state.models.get(t)).filter(Boolean);
    const kinds = new Set([m].concat(twins).map((x) => x.random_init));
    if (kinds.size === 2) return 'show its twin beside (same architecture: trained ↔ random-init)';
    if (m.random_init) return 'show its twin beside (same architecture, both random-init, other seeds: a null vs a null)';
    return 'show its twin beside (same architecture, both trained)';
  }

  /** One colour scale for every map of the page and each model's column order and layer range. */
  function lemmaContext(data, models) {
    let vmax = 0, weighted = false;
    const views = new Map();
    const wide = models.some((m) => m.n_routed_experts > WIDE);
    const expertView = state.expertView || (wide ? 'top' : 'id');
    const saved = state.expertView;
    state.expertView = expertView;
    for (const m of models) {
      const dec = decodeRouting(data, m);
      if (dec.weights) { weighted = true; for (const w of dec.weights) if (w > vmax) vmax = w; }
      // Usage of each expert by this lemma's chosen target sub-tokens, over all layers.
      const usage = new Float64Array(dec.N);
      data.examples.forEach((_, ei) => {
        const row = rowOf(dec, ei);
        if (row < 0) return;
        for (let l = 0; l < dec.L; l++) for (const e of expertsAt(dec, row, l)) usage[e] += 1;
      });
      views.set(m.slug, mapView(m, usage));
    }
    state.expertView = saved;
    const L = models.length ? models[0].moe_layers.length : 1;
    const first = views.get((models[0] || {}).slug) || { l0: 0, l1: L - 1 };
    const scale = weighted ? { vmax: niceCeil(vmax), label: 'gate weight (sense maps: mean over examples, unchosen = 0)' } :
      { vmax: 1, label: 'share of examples choosing the expert (example maps: 1 = chosen)' };
    return { scale, views, expertView, l0: first.l0, l1: first.l1 };
  }

  function highlighted(ex, spans) {
    const [start, end] = ex.target;
    const text = ex.text;
    const mark = h('mark', { class: 'target' });
    // Underline the chosen sub-token inside the target span.
    let pos = start;
    for (const [a, b] of spans.filter(([a, b]) => b > start && a < end).sort((x, y) => x[0] - y[0])) {
      const from = Math.max(a, start), to = Math.min(b, end);
      if (from > pos) mark.appendChild(document.createTextNode(text.slice(pos, from)));
      if (to > from) mark.appendChild(h('span', { class: 'sub' }, text.slice(from, to)));
      pos = Math.max(pos, to);
    }
    if (pos < end) mark.appendChild(document.createTextNode(text.slice(pos, end)));
    return [text.slice(0, start), mark, text.slice(end)];
  }

  function senseSection(data, sense, si, models, ctx) {
    const dec0 = models.length ? decodeRouting(data, models[0]) : null;
    const examples = sense.examples.map((ei) => {
      const ex = data.examples[ei];
      const row = dec0 ? rowOf(dec0, ei) : -1;
      const spans = row >= 0 ? [dec0.r.span[row]] : [];
      return h('li', { class: 'example', 'data-example': ei, 'data-example-id': ex.id }, highlighted(ex, spans), ' ',
        h('a', { class: 'sentence-link', href: '#/sentence/' + encodeURIComponent(data.key) + '/' + ei, title: 'every token of this example at every layer' }, 'tokens ›'));
    });
    return h('section', { class: 'sense', 'data-sense': si, 'data-synset': sense.synset },
      h('div', { class: 'sense-head' }, h('span', { class: 'num' }, 'Sense ' + sense.sense_number),
        h('code', {}, sense.synset), h('code', { class: 'sense-key' }, sense.sense_key), h('span', { class: 'muted' }, sense.lexname)),
      h('p', { class: 'gloss' }, sense.gloss),
      h('ol', { class: 'examples' }, examples),
      h('div', { class: 'model-row' }, models.map((m) => senseModelColumn(data, sense, m, ctx))));
  }

  function senseModelColumn(data, sense, m, ctx) {
    const dec = decodeRouting(data, m);
    const routedExamples = sense.examples.filter((ei) => rowOf(dec, ei) >= 0);
    const n = routedExamples.length;
    const count = new Map(), sum = new Map();
    for (const ei of routedExamples) {
      const row = rowOf(dec, ei);
      for (let l = 0; l < dec.L; l++) {
        const ex = expertsAt(dec, row, l), w = weightsAt(dec, row, l);
        ex.forEach((e, j) => {
          const key = l * dec.N + e;
          count.set(key, (count.get(key) || 0) + 1);
          sum.set(key, (sum.get(key) || 0) + (w ? w[j] : 1));
        });
      }
    }
    const cells = [];
    for (const [key, c] of count) {
      const l = Math.floor(key / dec.N), e = key % dec.N, v = sum.get(key) / n;
      cells.push({ l, e, v, attrs: { 'data-count': c, 'data-n': n, 'data-value': v.toFixed(6) },
        title: 'MoE layer ' + m.moe_layers[l] + ', expert ' + e + ': chosen in ' + c + ' of ' + n + ' examples' +
          (dec.weights ? ', mean gate weight ' + v.toFixed(3) : '') });
    }
    const maps = sense.examples.map((ei, j) => {
      const row = rowOf(dec, ei);
      if (row < 0) return h('figure', { class: 'example-heatmap missing', 'data-example': ei }, h('figcaption', {}, 'example ' + (j + 1) + ': not routed'));
      const exCells = [];
      for (let l = 0; l < dec.L; l++) {
        const ex = expertsAt(dec, row, l), w = weightsAt(dec, row, l);
        ex.forEach((e, rank) => exCells.push({ l, e, v: w ? w[rank] : 1,
          attrs: { 'data-rank': rank, 'data-weight': w ? w[rank].toFixed(6) : '' },
          title: 'MoE layer ' + m.moe_layers[l] + ', expert ' + e + ' (rank ' + (rank + 1) + ')' + (w ? ', gate weight ' + w[rank].toFixed(4) : '') }));
      }
      return h('figure', { class: 'example-heatmap', 'data-example': ei, 'data-row': row },
        heatmap(m, exCells, { small: true, kind: 'example', scale: ctx.scale, view: ctx.views.get(m.slug) }),
        h('figcaption', {}, 'example ' + (j + 1) + ': ', h('code', { class: 'token-text', title: 'stored piece ' + JSON.stringify(dec.r.token[row]) }, JSON.stringify(tokenText(dec.r, row))), ' (token ' + dec.r.token_index[row] + ')'));
    });
    return h('div', { class: 'model-col' + (m.random_init ? ' random-init' : ''), 'data-model': m.slug },
      h('h4', {}, m.slug, m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null),
      n ? h('figure', { class: 'sense-heatmap' }, heatmap(m, cells, { kind: 'sense', scale: ctx.scale, view: ctx.views.get(m.slug) }),
        h('figcaption', {}, 'sense map over ' + n + ' example(s)' + (dec.weights ? ': mean gate weight' : ': share of examples'))) :
        h('p', { class: 'muted' }, 'no routed example'),
      h('details', { open: true }, h('summary', {}, 'per example'), h('div', { class: 'example-maps' }, maps)));
  }

  /** A nice upper end of a colour scale: the smallest of 1, 2, 2.5, 5 x 10^n at or above x. */
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= x * (1 - 1e-9)) return f * p;
    return 10 * p;
  }
  const SHADE_FLOOR = 0.15; // a chosen expert's lightest shade, so it stands out of the grey "not chosen"
  function shade(v, scale) { return colour(SHADE_FLOOR + (1 - SHADE_FLOOR) * Math.max(0, Math.min(1, v / scale.vmax))); }

  /** The colour legend of a scale {vmax, label, percent}: a ramp with numeric ticks and a "not chosen" swatch. */
  function legend(scale) {
    const W = 200, ticks = 5, svg = s('svg', { class: 'legend-svg', width: W + 150, height: 30, 'data-vmax': scale.vmax, role: 'img' });
    const grad = 'g' + Math.random().toString(36).slice(2);
    const defs = s('defs', {}), lg = s('linearGradient', { id: grad });
    for (let i = 0; i <= 10; i++) lg.appendChild(s('stop', { offset: (i * 10) + '%', 'stop-color': colour(SHADE_FLOOR + (1 - SHADE_FLOOR) * i / 10) }));
    defs.appendChild(lg); svg.appendChild(defs);
    svg.appendChild(s('rect', { x: 6, y: 2, width: W, height: 10, fill: 'url(#' + grad + ')', stroke: '#d8dee5' }));
    for (let i = 0; i < ticks; i++) {
      const v = scale.vmax * i / (ticks - 1), x = 6 + W * i / (ticks - 1);
      svg.appendChild(s('line', { x1: x, x2: x, y1: 12, y2: 16, stroke: '#5b6673' }));
      const label = scale.percent ? (v * 100).toFixed(v * 100 < 10 && v > 0 ? 1 : 0) + '%' : String(+v.toFixed(4));
      svg.appendChild(s('text', { class: 'legend-tick', x: x - (i === ticks - 1 ? 14 : i ? 8 : 0), y: 27, 'data-value': v }, label));
    }
    svg.appendChild(s('rect', { x: W + 20, y: 2, width: 10, height: 10, fill: '#eef1f4', stroke: '#d8dee5' }));
    svg.appendChild(s('text', { x: W + 34, y: 11 }, scale.zeroLabel || 'not chosen'));
    return h('div', { class: 'legend heatmap-legend' }, h('span', { class: 'legend-label' }, scale.label), svg);
  }

  /** The columns and rows a lemma's maps show: state.expertView over the lemma's own use of the experts. */
  function mapView(m, usage) {
    const N = m.n_routed_experts, L = m.moe_layers.length;
    const l0 = Math.max(0, Math.min(L - 1, state.l0 || 0));
    const l1 = state.l1 === null || state.l1 === undefined ? L - 1 : Math.max(l0, Math.min(L - 1, state.l1));
    let columns = null;
    let groups = null;
    if (usage && state.expertView === 'groups' && m.n_group > 1 && N % m.n_group === 0) {
      // DeepSeek's groups: n_group blocks of consecutive ids; blocks by the lemma's use, ids inside in order.
      const size = N / m.n_group, use = new Float64Array(m.n_group);
      for (let e = 0; e < N; e++) use[Math.floor(e / size)] += usage[e];
      const order = Array.from({ length: m.n_group }, (_, g) => g).sort((a, b) => (use[b] - use[a]) || (a - b));
      columns = order.flatMap((g) => Array.from({ length: size }, (_, i) => g * size + i));
      groups = { size, order };
    } else if (usage && state.expertView !== 'id') {
      const order = Array.from({ length: N }, (_, e) => e).sort((a, b) => (usage[b] - usage[a]) || (a - b));
      columns = state.expertView === 'top' ? order.filter((e) => usage[e] > 0).slice(0, TOP_EXPERTS) : order;
    }
    return { columns, l0, l1, groups };
  }

  /** SVG layers x experts; cells = [{l, e, v, title, attrs}], coloured on the shared `scale` (opts.scale). */
  function heatmap(m, cells, opts) {
    const Lall = m.moe_layers.length, view = opts.view || { columns: null, l0: 0, l1: Lall - 1 };
    const cols = view.columns || Array.from({ length: m.n_routed_experts }, (_, e) => e);
    const pos = new Map(cols.map((e, i) => [e, i]));
    const L = view.l1 - view.l0 + 1, N = cols.length;
    const width = opts.small ? 300 : 560, height = opts.small ? 110 : 200;
    const cw = Math.max(1, Math.min(14, Math.floor(width / N))), ch = Math.max(2, Math.min(14, Math.floor(height / L)));
    const left = 40, top = 26;
    const scale = opts.scale;
    const svg = s('svg', { class: 'heatmap ' + opts.kind + '-map', 'data-model': m.slug, 'data-vmax': scale.vmax,
      'data-columns': view.groups ? 'groups' : view.columns ? 'sorted' : 'id', width: left + N * cw + 4, height: top + L * ch + 4, role: 'img' });
    svg.appendChild(s('rect', { x: left, y: top, width: N * cw, height: L * ch, fill: '#eef1f4' }));
    svg.appendChild(s('text', { class: 'axis-title', x: left, y: 9 }, view.groups ? 'expert group (most used first), ids inside in order' :
      view.columns ? 'expert (most used by this lemma first)' : 'expert id'));
    const overlay = [];
    if (view.groups) {
      view.groups.order.forEach((g, i) => {
        const x = left + i * view.groups.size * cw;
        if (i) overlay.push(s('line', { class: 'group-line', x1: x, x2: x, y1: top - 4, y2: top + L * ch, stroke: '#5b6673', 'stroke-width': 1 }));
        svg.appendChild(s('text', { x: x + 1, y: 21 }, 'g' + g));
      });
    }
    svg.appendChild(s('text', { class: 'axis-title', x: 0, y: 9 }, 'layer'));
    const step = L > 16 ? Math.ceil(L / 8) : 1;
    for (let l = 0; l < L; l += step) svg.appendChild(s('text', { x: 2, y: top + l * ch + ch - 1 }, String(m.moe_layers[view.l0 + l])));
    const eStep = Math.max(1, Math.ceil(N / (opts.small ? 6 : 10)));
    if (!view.groups) for (let i = 0; i < N; i += eStep) svg.appendChild(s('text', { x: left + i * cw, y: 21 }, String(cols[i])));
    for (const c of cells) {
      if (c.l < view.l0 || c.l > view.l1 || !pos.has(c.e)) continue;
      const rect = s('rect', Object.assign({ class: 'cell', x: left + pos.get(c.e) * cw, y: top + (c.l - view.l0) * ch, width: cw, height: ch,
        fill: shade(c.v, scale), 'data-layer-index': c.l, 'data-moe-layer': m.moe_layers[c.l], 'data-expert': c.e }, c.attrs));
      rect.appendChild(s('title', {}, c.title + (m.has_routing ? ' (click: expert page)' : '')));
      svg.appendChild(rect);
    }
    overlay.forEach((el) => svg.appendChild(el)); // group bounds drawn over the cells
    if (m.has_routing) {
      svg.classList.add('linked');
      svg.addEventListener('click', (ev) => {
        const r = ev.target.closest('rect.cell');
        if (r) location.hash = expertHref(m.slug, Number(r.dataset.layerIndex), Number(r.dataset.expert));
      });
    }
    return svg;
  }

  function kappa(o, k, N) { const chance = k * k / N; return (o - chance) / (k - chance); }

  function overlapSection(data, models) {
    const li = state.layer;
    return h('div', { class: 'model-row' }, models.map((m) => {
      const dec = decodeRouting(data, m);
      const order = data.senses.flatMap((sense) => sense.examples);
      const n = order.length, size = Math.max(8, Math.min(26, Math.floor(360 / Math.max(1, n))));
      const left = 4, top = 4;
      const svg = s('svg', { class: 'overlap', 'data-model': m.slug, 'data-layer-index': li, width: left + n * size + 4, height: top + n * size + 4 });
      const sets = order.map((ei) => { const row = rowOf(dec, ei); return row < 0 ? null : new Set(expertsAt(dec, row, li)); });
      order.forEach((a, i) => order.forEach((b, j) => {
        if (!sets[i] || !sets[j]) return;
        let o = 0; sets[i].forEach((e) => { if (sets[j].has(e)) o++; });
        const same = data.examples[a].sense === data.examples[b].sense;
        const rect = s('rect', { class: 'ov', x: left + j * size, y: top + i * size, width: size - 1, height: size - 1,
          fill: colour(o / dec.k), 'data-a': a, 'data-b': b, 'data-overlap': o, 'data-same': same ? 1 : 0 });
        rect.appendChild(s('title', {}, 'examples ' + (i + 1) + ' × ' + (j + 1) + ' (' + (same ? 'same' : 'different') + ' sense): ' + o + ' of ' + dec.k + ' experts shared, κ ' + kappa(o, dec.k, dec.N).toFixed(3)));
        svg.appendChild(rect);
      }));
      // Sense blocks: outline each sense's square on the diagonal.
      let at = 0;
      data.senses.forEach((sense) => {
        const w = sense.examples.length * size;
        svg.appendChild(s('rect', { x: left + at * size - 0.5, y: top + at * size - 0.5, width: w, height: w, fill: 'none', stroke: '#d62728', 'stroke-width': 1.5 }));
        at += sense.examples.length;
      });
      return h('div', { class: 'model-col' + (m.random_init ? ' random-init' : ''), 'data-model': m.slug },
        h('h4', {}, m.slug, m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null),
        h('figure', {}, svg, h('figcaption', {}, 'shared experts of the top-' + dec.k + ' at MoE layer ' + m.moe_layers[li] +
          ', examples in sense order (red squares: same sense)')),
        pairTable(data, m, dec));
    }));
  }

  /** Mean κ of the lemma's sense-pairs rows per layer: the per-lemma view of the headline metric. */
  function pairTable(data, m, dec) {
    if (!data.pairs.length) return h('p', { class: 'muted' }, 'This lemma has no sense pairs.');
    const rows = [];
    let counted = { same: 0, diff: 0 };
    for (let l = 0; l < dec.L; l++) {
      let same = 0, diff = 0, ns = 0, nd = 0;
      for (const [a, b, isSame] of data.pairs) {
        const ra = rowOf(dec, a), rb = rowOf(dec, b);
        if (ra < 0 || rb < 0) continue;
        const A = new Set(expertsAt(dec, ra, l));
        const o = expertsAt(dec, rb, l).filter((e) => A.has(e)).length;
        const kap = kappa(o, dec.k, dec.N);
        if (isSame) { same += kap; ns++; } else { diff += kap; nd++; }
      }
      counted = { same: ns, diff: nd };
      const ms = ns ? same / ns : null, md = nd ? diff / nd : null;
      rows.push(h('tr', { 'data-layer-index': l },
        h('td', {}, String(m.moe_layers[l])), h('td', { class: 'num' }, fmt(ms)), h('td', { class: 'num' }, fmt(md)),
        h('td', { class: 'num' }, ms !== null && md !== null ? fmt(ms - md, 3, true) : '–')));
    }
    return h('table', { class: 'pair-kappa', 'data-model': m.slug },
      h('caption', { class: 'muted' }, 'mean κ over this lemma\'s pairs (' + counted.same + ' same, ' + counted.diff + ' different)'),
      h('thead', {}, h('tr', {}, h('th', {}, 'MoE layer'), h('th', { class: 'num' }, 'κ same'), h('th', { class: 'num' }, 'κ different'), h('th', { class: 'num' }, 'Δκ'))),
      h('tbody', {}, rows));
  }

  /** The user corpora's texts (data/texts.js), each linked to its every-token view. */
  function renderTexts(view) {
    put(view, h('p', { class: 'muted' }, 'Loading…'));
    load('texts', 'texts', 'data/texts.js').then((T) => {
      put(view, h('p', {}, h('a', { href: '#/' }, '← all lemmas')), h('h1', {}, 'Your corpora\'s texts'),
        h('table', { id: 'texts-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'corpus config'), h('th', {}, 'id'), h('th', {}, 'text'))),
          h('tbody', {}, T.texts.map((t) => h('tr', { 'data-id': t.id }, h('td', { class: 'mono' }, t.config),
            h('td', {}, h('a', { class: 'text-link', href: '#/trace/' + t.n }, t.id)), h('td', {}, t.text))))));
      enhanceTables(view, 'texts');
    }, (err) => showError(view, err.message));
  }

  function renderCompare(view, [a, b]) {
    const withMetrics = state.index.models.filter((m) => m.has_metrics).map((m) => m.slug);
    if (!withMetrics.length) return showError(view, 'No model of this atlas has metrics: run `atlas metrics DIR --out DIR/metrics`, then `atlas explore` again.');
    a = a || withMetrics[0];
    b = b || withMetrics.find((x) => x !== a) || a;
    document.title = 'compare ' + a + ' and ' + b + ' · routing-atlas explorer';
    sectionViews().comparePage(view, a, b);
  }

  function renderExpert(view, [slug, li, e]) {
    const m = state.models.get(slug);
    if (!m || !m.has_routing) return showError(view, 'No routed model ' + JSON.stringify(slug) + ' in this atlas.');
    const l = Number(li), x = Number(e);
    if (!(l >= 0 && l < m.moe_layers.length) || !(x >= 0 && x < m.n_routed_experts)) return showError(view, 'No such layer/expert of ' + slug + '.');
    document.title = 'expert ' + x + ', MoE layer ' + m.moe_layers[l] + ' · ' + slug;
    sectionViews().expertPage(view, m, l, x);
  }

  // ---- model page --------------------------------------------------------------------------------
  function renderModel(view, slug) {
    const m = state.models.get(slug);
    if (!m) return showError(view, 'No model ' + JSON.stringify(slug) + ' in this atlas.');
    put(view, h('p', { class: 'muted' }, 'Loading ' + slug + '…'));
    load('model', slug, 'data/models/' + encodeURIComponent(slug) + '.js').then((data) => {
      if (location.hash.replace(/^#\/?/, '') !== 'model/' + encodeURIComponent(slug)) return;
      drawModel(view, m, data);
    }, (err) => showError(view, err.message));
  }

  const KNOWN_SECTIONS = new Set(['model', 'random_init', 'synthetic', 'n_tokens', 'sense_pairs', 'substitutions', 'probe', 'experts', 'token_specialisation']);

  function drawModel(view, m, data) {
    document.title = m.slug + ' · routing-atlas explorer';
    const row = data.row, M = data.metrics;
    const facts = [['model id', row.model_id], ['revision', row.revision], ['architecture', row.architecture],
      ['router adapter', row.router_adapter], ['MoE layers', row.moe_layers.length + ' (' + row.moe_layers.join(', ') + ')'],
      ['routed experts', row.n_routed_experts], ['top-k', row.top_k], ['shared experts', row.n_shared_experts],
      ['scoring', row.scoring_func + ', ' + row.topk_method], ['parameters', fmt(row.total_params) + ' total, ' + fmt(row.active_params) + ' active'],
      ['engine / dtype', row.engine + ' / ' + row.dtype], ['gate weights', row.weights_dtype || 'none (ids only)'],
      ['random init', row.random_init ? 'yes (seed ' + row.seed + ')' : 'no']];
    const parts = [
      h('p', {}, h('a', { href: '#/' }, '← all lemmas')),
      randomInitBanner(m), synthBanner(m),
      h('h1', { id: 'model-title' }, m.slug, m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null),
      m.twins.length ? h('p', {}, 'Twin(s): ', m.twins.map((t) => h('a', { href: '#/model/' + encodeURIComponent(t), class: 'twin-link' }, t + ' '))) : null,
      h('table', { class: 'facts' }, h('tbody', {}, facts.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, fmt(v)))))),
    ];
    parts.push(interventionsSection(m, data.interventions || []));
    if (!data.metrics_present) {
      parts.push(h('p', { class: 'muted', id: 'no-metrics' }, 'No metrics/metrics.json in this atlas: run `atlas metrics DIR --out DIR/metrics` and `atlas explore` again to see the metrics here.'));
    } else if (!M) {
      parts.push(h('p', { class: 'muted', id: 'no-metrics' }, 'metrics.json has no entry for this model (it was computed for other models).'));
    } else {
      parts.push(headline(m, M), controlsSection(m, M), perLayerSection(m, M), expertsSection(m, M, data),
        specialisationSection(m, M));
      for (const [key, value] of Object.entries(M)) {
        if (!KNOWN_SECTIONS.has(key) && value !== null && value !== undefined) parts.push(genericSection(key, value, m));
      }
    }
    put(view, ...parts.filter(Boolean));
    enhanceTables(view, m.slug);
  }

  /** `atlas intervene` results: one row per hypothesis x intervention x outcome, primary outcomes first. */
  function interventionsSection(m, rows) {
    if (!rows.length) return null;
    const sorted = rows.slice().sort((a, b) => (a.plan_name + a.hypothesis_id).localeCompare(b.plan_name + b.hypothesis_id) || (b.primary - a.primary));
    const head = ['plan', 'hypothesis', 'layer / experts', 'intervention', 'outcome', 'effect [95% CI]', 'random', 'p (alpha)', 'verdict'];
    const body = sorted.map((r) => h('tr', { class: r.primary ? 'primary' : '' },
      h('td', { class: 'mono' }, r.plan_name), h('td', { title: r.claim }, r.hypothesis_id),
      h('td', { class: 'mono' }, r.layer + ' / ' + r.experts.join(', ')),
      h('td', {}, r.intervention + (r.ablation ? ' (' + r.ablation + ')' : '')),
      h('td', {}, r.outcome + (r.primary ? ' (primary)' : '')),
      h('td', { class: 'mono' }, fmt(r.effect) + ' [' + fmt(r.ci_low) + ', ' + fmt(r.ci_high) + '] over ' + r.n_texts + ' texts (' + r.cluster_unit + ' clusters)'),
      h('td', { class: 'mono' }, fmt(r.baseline_mean) + ' (' + r.baseline_draws + ' draws)'),
      h('td', { class: 'mono' }, fmt(r.p_value) + ' (' + fmt(r.alpha) + ')'),
      h('td', {}, r.primary ? (r.hypothesis_survives ? 'hypothesis survives' : 'does not survive') : (r.survives ? 'row survives' : ''))));
    return h('section', { id: 'interventions' }, h('h2', {}, 'Causal tests (atlas intervene)'), randomInitBanner(m),
      h('table', { id: 'interventions-table' }, h('thead', {}, h('tr', {}, head.map((x) => h('th', {}, x)))), h('tbody', {}, body)));
  }

  function headline(m, M) {
    const sp = M.sense_pairs || {}, lm = sp.layer_mean || {}, sub = M.substitutions || {}, probe = M.probe || {};
    const rows = [];
    if (sp.n_pairs) rows.push(['sense pairs', sp.n_pairs.same + ' same, ' + sp.n_pairs.different + ' different, over ' + sp.n_lemmas + ' lemmas']);
    if (lm.delta) rows.push(['Δκ (same − different), layer mean', ci(lm.delta) + (lm.delta.p_value !== undefined ? ', p = ' + fmt(lm.delta.p_value) : '')]);
    if (lm.kappa_same) rows.push(['κ same / different, layer mean', ci(lm.kappa_same, 3, false) + ' / ' + ci(lm.kappa_different, 3, false)]);
    if (sp.peak) rows.push(['peak layer', 'MoE layer ' + sp.peak.layer + ': Δκ ' + ci({ estimate: sp.peak.delta, ci_low: sp.peak.ci_low, ci_high: sp.peak.ci_high })]);
    if (sp.survives) rows.push(['survives controls', Object.entries(sp.survives).filter(([, v]) => typeof v !== 'object').map(([k, v]) => k + ': ' + v).join('; ')]);
    if (probe.accuracy) rows.push(['sense probe accuracy / most-frequent-sense', ci(probe.accuracy, 3, false) + ' / ' + ci(probe.mfs_accuracy, 3, false)]);
    if (sub.layer_mean && sub.layer_mean.delta) rows.push(['substitutions Δκ (synonym − other sense)', ci(sub.layer_mean.delta)]);
    if (M.n_tokens) rows.push(['routed tokens', fmt(M.n_tokens)]);
    return h('section', { id: 'headline' }, h('h2', {}, 'Headline metrics'), randomInitBanner(m),
      rows.length ? h('table', { id: 'headline-table' }, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', { class: 'mono' }, v))))) :
        h('p', { class: 'muted' }, 'No sense-pair metrics for this model.'));
  }

  /** Every control of sense_pairs: `controls[name]` as the metrics define them, plus older top-level ones. */
  function collectControls(sp) {
    const out = [];
    const seen = new Set();
    for (const [name, c] of Object.entries(sp.controls || {})) { if (c && typeof c === 'object') { out.push([name, c]); seen.add(name); } }
    // Older readers' aliases of named controls (metrics format 2 keeps them): shown once, under the new name.
    const aliases = { context_adjusted: 'context_words', over_null: 'null_model' };
    for (const [alias, name] of Object.entries(aliases)) if (seen.has(name)) seen.add(alias);
    for (const [name, c] of Object.entries(sp)) {
      if (name === 'controls' || seen.has(name) || !c || typeof c !== 'object' || Array.isArray(c)) continue;
      if (c.delta && typeof c.delta === 'object' && (Array.isArray(c.delta.estimate) || c.layer_mean)) out.push([name, c]);
    }
    return out;
  }
  function layerMeanDelta(c) {
    const lm = c.layer_mean || {};
    if (lm.delta) return lm.delta;
    if (lm.estimate !== undefined) return lm;
    return null;
  }

  function controlsSection(m, M) {
    const sp = M.sense_pairs || {};
    const controls = collectControls(sp);
    const L = m.moe_layers.length;
    const body = controls.map(([name, c]) => {
      const d = c.delta || {};
      const perLayer = Array.isArray(d.estimate) ? d.estimate : [];
      return h('tr', { 'data-control': name },
        h('th', {}, name.replace(/_/g, ' ')), h('td', { class: 'method' }, c.method || '–'),
        h('td', { class: 'mono layer-mean' }, ci(layerMeanDelta(c))),
        perLayer.map((x, l) => h('td', { class: 'num mono', 'data-layer-index': l,
          title: 'MoE layer ' + m.moe_layers[l] + ': ' + ci({ estimate: x, ci_low: (d.ci_low || [])[l], ci_high: (d.ci_high || [])[l] }) }, fmt(x, 3, true))));
    });
    return h('section', { id: 'controls' }, h('h2', {}, 'Controls of the sense effect'),
      h('p', { class: 'muted' }, 'Each control re-estimates Δκ with something that is not the sense held fixed or removed; a sense effect that is real survives them.'),
      controls.length ? h('table', { id: 'controls-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'control'), h('th', {}, 'method'), h('th', {}, 'Δκ layer mean [95% CI]'),
          m.moe_layers.slice(0, L).map((ml) => h('th', { class: 'num' }, 'L' + ml)))), h('tbody', {}, body)) :
        h('p', { class: 'muted' }, 'metrics.json has no controls for this model.'));
  }

  function perLayerSection(m, M) {
    const sp = M.sense_pairs || {};
    if (!sp.delta || !Array.isArray(sp.delta.estimate)) return null;
    const series = [['Δκ raw', sp.delta, '#1f5fa8']];
    for (const [name, c] of collectControls(sp)) if (c.delta && Array.isArray(c.delta.estimate)) series.push(['Δκ ' + name.replace(/_/g, ' '), c.delta, null]);
    const rows = m.moe_layers.map((ml, l) => h('tr', { 'data-layer-index': l }, h('td', {}, String(ml)),
      h('td', { class: 'num mono' }, fmt((sp.kappa_same || {}).estimate ? sp.kappa_same.estimate[l] : null)),
      h('td', { class: 'num mono' }, fmt((sp.kappa_different || {}).estimate ? sp.kappa_different.estimate[l] : null)),
      h('td', { class: 'mono' }, ci({ estimate: sp.delta.estimate[l], ci_low: (sp.delta.ci_low || [])[l], ci_high: (sp.delta.ci_high || [])[l] })),
      h('td', { class: 'num mono' }, fmt((sp.delta.p_value || [])[l])), h('td', { class: 'num mono' }, fmt((sp.delta.p_value_bh || [])[l]))));
    return h('section', { id: 'per-layer' }, h('h2', {}, 'Sense effect per layer'), lineChart(m, series),
      h('table', { id: 'per-layer-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'MoE layer'), h('th', { class: 'num' }, 'κ same'),
        h('th', { class: 'num' }, 'κ different'), h('th', {}, 'Δκ [95% CI]'), h('th', { class: 'num' }, 'p'), h('th', { class: 'num' }, 'p (BH)'))),
        h('tbody', {}, rows)));
  }

  const PALETTE = ['#1f5fa8', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];
  function lineChart(m, series, yTitle) {
    const L = m.moe_layers.length, W = 600, H = 210, left = 54, right = 190, top = 10, bottom = 34;
    const vals = series.flatMap(([, d]) => [].concat(d.estimate, d.ci_low || [], d.ci_high || [])).filter((x) => typeof x === 'number');
    let lo = Math.min(0, ...vals), hi = Math.max(0, ...vals);
    if (hi - lo < 1e-9) hi = lo + 1;
    const x = (l) => left + (L > 1 ? l * (W - left - right) / (L - 1) : (W - left - right) / 2);
    const y = (v) => top + (hi - v) * (H - top - bottom) / (hi - lo);
    const svg = s('svg', { class: 'line-chart', width: W, height: H });
    svg.appendChild(s('line', { x1: left, x2: W - right, y1: y(0), y2: y(0), stroke: '#999', 'stroke-dasharray': '3,3' }));
    svg.appendChild(s('text', { x: 2, y: y(hi) + 8 }, fmt(hi)));
    svg.appendChild(s('text', { x: 2, y: y(lo) }, fmt(lo)));
    const lStep = Math.max(1, Math.ceil(L / 10));
    for (let l = 0; l < L; l += lStep) svg.appendChild(s('text', { x: x(l) - 4, y: H - 20 }, String(m.moe_layers[l])));
    svg.appendChild(s('text', { class: 'axis-title', x: left + (W - left - right) / 2 - 20, y: H - 4 }, 'MoE layer'));
    svg.appendChild(s('text', { class: 'axis-title', x: 2, y: (top + H - bottom) / 2 + 4 }, yTitle || 'Δκ'));
    series.forEach(([name, d, col], i) => {
      const c = col || PALETTE[i % PALETTE.length];
      if (Array.isArray(d.ci_low) && Array.isArray(d.ci_high)) {
        const up = d.ci_high.map((v, l) => x(l) + ',' + y(v)), down = d.ci_low.map((v, l) => x(l) + ',' + y(v)).reverse();
        if (d.ci_high.every((v) => typeof v === 'number') && d.ci_low.every((v) => typeof v === 'number'))
          svg.appendChild(s('polygon', { points: up.concat(down).join(' '), fill: c, 'fill-opacity': 0.12 }));
      }
      const pts = d.estimate.map((v, l) => (typeof v === 'number' ? x(l) + ',' + y(v) : null)).filter(Boolean);
      svg.appendChild(s('polyline', { points: pts.join(' '), fill: 'none', stroke: c, 'stroke-width': 2 }));
      svg.appendChild(s('text', { x: W - right + 8, y: top + 12 + 14 * i, style: 'fill:' + c }, name));
    });
    return svg;
  }

  function expertsSection(m, M, data) {
    const E = M.experts;
    if (!E || !Array.isArray(E.load)) return null;
    const cells = [];
    E.load.forEach((loads, l) => loads.forEach((v, e) => {
      if (v > 0) cells.push({ l, e, v, attrs: { 'data-load': v }, title: 'MoE layer ' + m.moe_layers[l] + ', expert ' + e + ': load ' + (v * 100).toFixed(2) + '%' });
    }));
    const loadScale = { vmax: niceCeil(Math.max(0, ...cells.map((c) => c.v))), percent: true, label: 'load (share of top-k slots)', zeroLabel: 'never chosen' };
    const rows = m.moe_layers.map((ml, l) => h('tr', { 'data-layer-index': l }, h('td', {}, String(ml)),
      h('td', { class: 'num mono' }, fmt((E.entropy || [])[l])), h('td', { class: 'num mono' }, fmt((E.max_load_ratio || [])[l], 2)),
      h('td', { class: 'num mono' }, fmt(((E.coactivation || {}).max_conditional || [])[l])),
      h('td', { class: 'mono' }, (((E.coactivation || {}).top_pairs || [])[l] || []).slice(0, 3).map((p) => p.i + '→' + p.j + ' ' + fmt(p.p)).join(', '))));
    return h('section', { id: 'experts' }, h('h2', {}, 'Expert load and co-activation per layer'),
      h('figure', { id: 'load-map' }, legend(loadScale), heatmap(m, cells, { kind: 'load', scale: loadScale }), h('figcaption', {}, 'load: share of top-k slots per expert (uniform: 1/' + m.n_routed_experts + ')')),
      h('table', { id: 'experts-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'MoE layer'), h('th', { class: 'num' }, 'entropy (1 = balanced)'),
        h('th', { class: 'num' }, 'max load / uniform'), h('th', { class: 'num' }, 'max P(j | i)'), h('th', {}, 'top pairs P(j | i)'))), h('tbody', {}, rows)),
      coactivationView(m, data));
  }

  function coactivationView(m, data) {
    if (!data.coactivation_layers || !data.coactivation_layers.length) return h('p', { class: 'muted' }, 'No co-activation matrices (metrics/coactivation-' + m.slug + '.npz) were found.');
    const holder = h('div', { id: 'coact-holder' });
    const select = h('select', { id: 'coact-layer' }, data.coactivation_layers.map((li) => h('option', { value: li, selected: li === state.coactLayer }, 'MoE layer ' + m.moe_layers[li])));
    const draw = () => {
      const li = Number(select.value);
      state.coactLayer = li;
      load('coact', m.slug + '/' + li, 'data/models/' + encodeURIComponent(m.slug) + '/coact-' + li + '.js').then((c) => {
        const P = uint16s(c.p), N = c.n, size = Math.max(2, Math.min(12, Math.floor(384 / N)));
        const canvas = h('canvas', { class: 'coact', width: N * size, height: N * size, 'data-layer-index': li });
        const ctx = canvas.getContext('2d');
        for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) {
          ctx.fillStyle = colour(P[i * N + j] / c.scale);
          ctx.fillRect(j * size, i * size, size, size);
        }
        hover(canvas, (e) => {
          const r = canvas.getBoundingClientRect();
          const j = Math.floor((e.clientX - r.left) / size), i = Math.floor((e.clientY - r.top) / size);
          if (i < 0 || j < 0 || i >= N || j >= N) return '';
          return 'P(expert ' + j + ' | expert ' + i + ') = ' + (P[i * N + j] / c.scale).toFixed(4) + ' (expert ' + i + ' chosen ' + c.load[i] + '×)';
        });
        put(holder, h('div', { class: 'legend coact-legend' }, 'P(j | i), row i, column j (expert ids):', legendRamp([0, 0.25, 0.5, 0.75, 1])), canvas);
      }, (err) => put(holder, h('p', { class: 'error' }, err.message)));
    };
    select.addEventListener('change', draw);
    draw();
    return h('div', {}, h('h3', {}, 'Co-activation P(j | i)'), h('div', { class: 'controls' }, h('label', {}, 'Layer ', select)), holder);
  }

  /** A plain 0..1 ramp (colour(t) itself) with numeric ticks. */
  function legendRamp(ticks) {
    const W = 200, svg = s('svg', { class: 'legend-svg', width: W + 20, height: 30, role: 'img' });
    for (let i = 0; i < 50; i++) svg.appendChild(s('rect', { x: 6 + i * W / 50, y: 2, width: W / 50 + 0.5, height: 10, fill: colour(i / 49) }));
    for (const t of ticks) {
      svg.appendChild(s('line', { x1: 6 + W * t, x2: 6 + W * t, y1: 12, y2: 16, stroke: '#5b6673' }));
      svg.appendChild(s('text', { class: 'legend-tick', x: 6 + W * t - (t === 1 ? 6 : t ? 8 : 0), y: 27, 'data-value': t }, String(t)));
    }
    return svg;
  }

  function specialisationSection(m, M) {
    const T = M.token_specialisation;
    if (!T || !T.top1) return null;
    const rows = m.moe_layers.map((ml, l) => h('tr', {}, h('td', {}, String(ml)),
      h('td', { class: 'num mono' }, fmt((T.top1.share || [])[l])), h('td', { class: 'num mono' }, fmt((T.top1.shuffled || [])[l])),
      h('td', { class: 'num mono' }, fmt(((T.topk || {}).share || [])[l])), h('td', { class: 'num mono' }, fmt(((T.topk || {}).shuffled || [])[l]))));
    return h('section', { id: 'token-specialisation' }, h('h2', {}, 'Token-id specialisation'),
      h('p', { class: 'muted' }, T.n_token_ids + ' token ids with ≥ ' + T.min_count + ' occurrences; random baseline top-1 ' + fmt(T.top1.random) + ', top-k ' + fmt((T.topk || {}).random)),
      h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'MoE layer'), h('th', { class: 'num' }, 'top-1 share'), h('th', { class: 'num' }, 'shuffled'),
        h('th', { class: 'num' }, 'top-k share'), h('th', { class: 'num' }, 'shuffled'))), h('tbody', {}, rows)));
  }

  /** Sections the viewer does not know (paths, traces, ...): shown as they are, per-layer lists as rows. */
  function genericSection(key, value, m) {
    const views = sectionViews();
    const body = key === 'paths' ? views.paths(m, value) : key === 'corpora' ? views.corpora(m, value) : views.flatTable(m, value);
    return h('section', { class: 'generic', 'data-key': key, id: 'section-' + key }, h('h2', {}, SECTION_TITLES[key] || key.replace(/_/g, ' ')), randomInitBanner(m), body);
  }
  const SECTION_TITLES = { paths: 'Routing paths across layers', scores: 'Router scores beyond the top-k', corpora: 'Your corpora (atlas add-corpus)', traces: 'Traces', routed_corpora: 'Routed corpora' };
  let viewsCache = null;
  /** static/sections.js: figures and tables of the paths, corpora and other metrics sections. */
  function sectionViews() {
    if (!viewsCache) {
      viewsCache = window.atlasSections({ h, s, put, fmt, ci, lineChart, genericValue, PALETTE, load, uint16s, state,
        randomInitBanner, synthBanner, enhanceTables, expertHref, modelLabel, bytesOf });
    }
    return viewsCache;
  }
  function genericValue(v, m, depth) {
    if (v === null || v === undefined) return h('span', { class: 'muted' }, '–');
    if (typeof v !== 'object') return h('span', { class: 'mono' }, typeof v === 'number' ? fmt(v, 4) : String(v));
    if (Array.isArray(v)) {
      if (!v.length) return h('span', { class: 'muted' }, '(empty)');
      if (v.every((x) => typeof x === 'number' || x === null)) {
        const perLayer = v.length === m.moe_layers.length;
        return h('table', { class: 'generic-list' }, h('tbody', {},
          h('tr', {}, v.map((_, i) => h('th', { class: 'num' }, perLayer ? 'L' + m.moe_layers[i] : String(i)))),
          h('tr', {}, v.map((x) => h('td', { class: 'num mono' }, fmt(x, 4))))));
      }
      if (v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
        const keys = [...new Set(v.flatMap((x) => Object.keys(x)))];
        return h('table', { class: 'generic-rows' }, h('thead', {}, h('tr', {}, keys.map((k) => h('th', {}, k)))),
          h('tbody', {}, v.slice(0, 50).map((x) => h('tr', {}, keys.map((k) => h('td', {}, depth > 3 ? JSON.stringify(x[k]) : genericValue(x[k], m, depth + 1)))))));
      }
      return h('span', { class: 'mono' }, JSON.stringify(v).slice(0, 2000));
    }
    return h('dl', {}, Object.entries(v).flatMap(([k, x]) => [h('dt', {}, k.replace(/_/g, ' ')), h('dd', {}, depth > 4 ? JSON.stringify(x) : genericValue(x, m, depth + 1))]));
  }
})();
