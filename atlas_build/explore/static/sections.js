/* routing-atlas explorer: figures and tables of the metrics sections that are not the headline
 * (paths, your corpora, router scores and any other section metrics.json holds).
 *
 * app.js calls window.atlasSections(kit) once with its helpers; every view returns DOM built from the
 * metrics.json entry as it is (no number is recomputed here).
 */
(function () {
  'use strict';

  window.atlasSections = function (kit) {
    const { h, fmt, ci, lineChart } = kit;
    const num = (x, d = 3) => h('td', { class: 'num mono' }, fmt(x, d));
    const isNumList = (v) => Array.isArray(v) && v.length && v.every((x) => typeof x === 'number' || x === null);
    const isIv = (v) => v && typeof v === 'object' && !Array.isArray(v) && 'estimate' in v;
    const table = (attrs, head, rows) => h('table', attrs, h('thead', {}, h('tr', {}, head.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
    const windowsOf = (w) => Object.entries(w || {}).sort((a, b) => (a[1].width || 0) - (b[1].width || 0));

    /** Every leaf of `value` as one row: key path | value (per-layer lists spread over columns). */
    function flatTable(m, value) {
      const rows = [];
      const walk = (v, path) => {
        if (v === null || v === undefined) { rows.push([path, null]); return; }
        if (isIv(v) && !Array.isArray(v.estimate)) { rows.push([path, ci(v)]); return; }
        if (typeof v !== 'object') { rows.push([path, v]); return; }
        if (isNumList(v)) { rows.push([path, v]); return; }
        if (Array.isArray(v)) {
          if (!v.length) { rows.push([path, '(empty)']); return; }
          if (v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) { rows.push([path, v]); return; }
          rows.push([path, JSON.stringify(v).slice(0, 300)]);
          return;
        }
        for (const [k, x] of Object.entries(v)) walk(x, path ? path + ' › ' + k.replace(/_/g, ' ') : k.replace(/_/g, ' '));
      };
      walk(value, '');
      const L = m.moe_layers.length;
      return h('table', { class: 'flat-table' }, h('tbody', {}, rows.map(([path, v]) => {
        if (isNumList(v)) {
          const perLayer = v.length === L;
          return h('tr', {}, h('th', {}, path), h('td', {}, h('table', { class: 'generic-list' }, h('tbody', {},
            h('tr', {}, v.map((_, i) => h('th', { class: 'num' }, perLayer ? 'L' + m.moe_layers[i] : String(i)))),
            h('tr', {}, v.map((x) => num(x, 4)))))));
        }
        if (Array.isArray(v)) return h('tr', {}, h('th', {}, path), h('td', {}, kit.genericValue(v, m, 1)));
        return h('tr', {}, h('th', {}, path), h('td', { class: 'mono' }, typeof v === 'number' ? fmt(v, 4) : v === null ? '–' : String(v)));
      })));
    }

    /** Layer index of each MoE layer number, so series over from-layers plot at their own layer. */
    function atLayers(m, layers, values) {
      const out = m.moe_layers.map(() => null);
      (layers || []).forEach((ml, i) => { const l = m.moe_layers.indexOf(ml); if (l >= 0) out[l] = values[i]; });
      return out;
    }

    function transitions(m, T) {
      const D = Object.entries((T && T.distances) || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
      if (!D.length) return null;
      const series = [];
      D.forEach(([d, x], i) => {
        const c = kit.PALETTE[i % kit.PALETTE.length];
        series.push(['MI, d=' + d, { estimate: atLayers(m, x.from_layers, x.mi_bits || []) }, c]);
        if (x.mi_shuffled_bits) series.push(['shuffled, d=' + d, { estimate: atLayers(m, x.from_layers, x.mi_shuffled_bits) }, '#aab4bf']);
      });
      const rows = D.flatMap(([d, x]) => (x.from_layers || []).map((fl, i) => h('tr', { 'data-distance': d },
        h('td', {}, d), h('td', {}, fl + ' → ' + (x.to_layers || [])[i]), num((x.mi_bits || [])[i]), num((x.mi_shuffled_bits || [])[i]),
        num((x.max_lift || [])[i], 2),
        h('td', { class: 'mono' }, (((x.top || [])[i]) || []).slice(0, 3).map((t) => t.from + '→' + t.to + ' p ' + fmt(t.p) + ' (' + t.count + '×)').join(', ')))));
      return h('div', { id: 'paths-transitions' }, h('h3', {}, 'Top-1 expert transitions: mutual information between layers (bits)'),
        h('figure', {}, lineChart(m, series, 'bits'), h('figcaption', {}, 'MI(top-1 at layer l; top-1 at layer l + d), at the from-layer; grey: the same with tokens shuffled')),
        table({ class: 'paths-table' }, ['distance', 'layers', 'MI (bits)', 'shuffled', 'max lift', 'top transitions'], rows));
    }

    function diversity(D) {
      if (!D || !D.windows) return null;
      const rows = windowsOf(D.windows).map(([name, w]) => h('tr', { 'data-window': name }, h('td', {}, name === 'all' ? 'all (' + w.width + ')' : String(w.width)),
        num((w.top1 || {}).distinct_share), num((w.top1 || {}).distinct_share_shuffled), num((w.top1 || {}).h_path_given_token_bits),
        num((w.top1 || {}).h_path_given_shuffled_token_bits), num((w.topk || {}).distinct_share), num((w.topk || {}).h_path_given_token_bits)));
      return h('div', { id: 'paths-diversity' }, h('h3', {}, 'Path diversity per token id'),
        h('p', { class: 'muted' }, fmt(D.n_token_ids) + ' token ids with ≥ ' + D.min_count + ' occurrences (' + fmt(D.n_occurrences) + ' occurrences)' + (D.population ? '; ' + D.population : '')),
        table({ class: 'paths-table' }, ['window (layers)', 'top-1 distinct share', 'shuffled', 'H(path | token) bits', 'shuffled', 'top-k distinct share', 'top-k H(path | token)'], rows));
    }

    function senseEntropy(S) {
      if (!S || !S.windows) return null;
      const rows = windowsOf(S.windows).map(([name, w]) => h('tr', { 'data-window': name }, h('td', {}, name === 'all' ? 'all (' + w.width + ')' : String(w.width)),
        num(w.h_path_given_token_bits), num(w.h_path_given_token_sense_bits), num(w.gain_bits), num(w.null_mean_bits), num(w.null_q95_bits), num(w.p_value)));
      return h('div', { id: 'paths-sense-entropy' }, h('h3', {}, 'What the sense adds to the path, given the token'),
        h('p', { class: 'muted' }, fmt(S.n_targets) + ' targets of ' + fmt(S.n_token_ids) + ' token ids; null: ' + fmt(S.n_permutations) + ' permutations of the senses'),
        table({ class: 'paths-table' }, ['window', 'H(path | token)', 'H(path | token, sense)', 'gain (bits)', 'null mean', 'null 95%', 'p'], rows));
    }

    function agreement(m, A) {
      if (!A) return null;
      const P = A.per_layer || {};
      const series = [];
      if (P.delta && Array.isArray(P.delta.estimate)) series.push(['same − different', P.delta, '#1f5fa8']);
      if (isNumList(P.same)) series.push(['same sense', { estimate: P.same }, '#2ca02c']);
      if (isNumList(P.different)) series.push(['different sense', { estimate: P.different }, '#d62728']);
      const controlNames = [...new Set(windowsOf(A.windows).flatMap(([, w]) => Object.keys(w.controls || {})))];
      const rows = windowsOf(A.windows).map(([name, w]) => h('tr', { 'data-window': name }, h('td', {}, name === 'all' ? 'all (' + w.width + ')' : String(w.width)),
        num(w.same), num(w.different), h('td', { class: 'mono' }, ci(w.delta)), num((w.delta || {}).p_value),
        controlNames.map((c) => h('td', { class: 'mono', title: ((w.controls || {})[c] || {}).method || '' }, ci(((w.controls || {})[c] || {}).delta)))));
      return h('div', { id: 'paths-agreement' }, h('h3', {}, 'Do two examples of one lemma take the same path?'),
        h('p', { class: 'muted' }, (A.n_pairs ? A.n_pairs.same + ' same-sense and ' + A.n_pairs.different + ' different-sense pairs' : '') + (A.n_lemmas ? ' over ' + A.n_lemmas + ' lemmas' : '')),
        series.length ? h('figure', {}, lineChart(m, series, 'share'), h('figcaption', {}, 'share of pairs whose top-1 expert agrees at the layer')) : null,
        table({ class: 'paths-table' }, ['window', 'same', 'different', 'Δ [95% CI]', 'p'].concat(controlNames.map((c) => 'Δ ' + c.replace(/_/g, ' '))), rows));
    }

    function paths(m, P) {
      if (!P || typeof P !== 'object') return flatTable(m, P);
      const known = { transitions: transitions(m, P.transitions), diversity: diversity(P.diversity),
        sense_entropy: senseEntropy(P.sense_entropy), agreement: agreement(m, P.agreement) };
      const rest = {};
      for (const [k, v] of Object.entries(P)) if (!known[k]) rest[k] = v;
      return h('div', {}, P.basis ? h('p', { class: 'muted' }, 'basis: ' + P.basis + (P.target ? '; target sub-token: ' + P.target : '')) : null,
        Object.values(known), Object.keys(rest).length ? flatTable(m, rest) : null);
    }

    /** One user corpus: its sense-pair effect per layer as a figure and its headline numbers. */
    function corpus(m, kind, C) {
      const sp = C.sense_pairs, probe = C.probe, sub = C.substitutions;
      const rows = [];
      if (sp && sp.n_pairs) rows.push(['sense pairs', sp.n_pairs.same + ' same, ' + sp.n_pairs.different + ' different, over ' + sp.n_lemmas + ' lemmas']);
      if (sp && sp.layer_mean && sp.layer_mean.delta) rows.push(['Δκ layer mean', ci(sp.layer_mean.delta)]);
      if (sp && sp.peak) rows.push(['peak layer', 'MoE layer ' + sp.peak.layer + ': Δκ ' + ci({ estimate: sp.peak.delta, ci_low: sp.peak.ci_low, ci_high: sp.peak.ci_high })]);
      if (sp && sp.survives) rows.push(['survives', 'raw: ' + sp.survives.raw + '; ' + Object.entries(sp.survives.controls || {}).map(([k, v]) => k + ': ' + v).join(', ')]);
      if (probe && probe.accuracy) rows.push(['sense probe accuracy / most-frequent-sense', ci(probe.accuracy, 3, false) + ' / ' + ci(probe.mfs_accuracy, 3, false)]);
      if (sub && sub.layer_mean && sub.layer_mean.delta) rows.push(['substitutions Δκ', ci(sub.layer_mean.delta)]);
      const series = [];
      if (sp && sp.delta && Array.isArray(sp.delta.estimate)) series.push(['Δκ raw', sp.delta, '#1f5fa8']);
      for (const [name, c] of Object.entries((sp && sp.controls) || {})) if (c && c.delta && Array.isArray(c.delta.estimate)) series.push(['Δκ ' + name.replace(/_/g, ' '), c.delta, null]);
      return h('div', { class: 'corpus', 'data-corpus': kind }, h('h3', {}, kind),
        rows.length ? h('table', { class: 'corpus-table' }, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', { class: 'mono' }, v))))) :
          h('p', { class: 'muted' }, 'no sense-pair metrics for this corpus'),
        series.length ? h('figure', {}, lineChart(m, series, 'Δκ'), h('figcaption', {}, 'Δκ per MoE layer on ' + kind + ', raw and under each control (bands: 95% CI)')) : null);
    }

    function corpora(m, C) {
      const entries = Object.entries(C || {});
      if (!entries.length) return h('p', { class: 'muted' }, 'No user corpora in this atlas (atlas add-corpus).');
      return h('div', {}, entries.map(([kind, v]) => (v && typeof v === 'object' ? corpus(m, kind, v) : null)));
    }

    /** #/expert/<slug>/<layer index>/<expert>: load, co-activation partners, what routes to it. */
    function expertPage(view, m, li, e) {
      const layers = m.moe_layers, key = m.slug + '/' + li;
      const lemmaKey = (i) => kit.state.index.lemmas.key[i];
      const lemmaLink = (i) => h('a', { class: 'lemma-link', href: '#/lemma/' + encodeURIComponent(lemmaKey(i)) }, lemmaKey(i));
      const layerSel = h('select', { id: 'expert-layer' }, layers.map((ml, l) => h('option', { value: l, selected: l === li }, 'MoE layer ' + ml)));
      const expertIn = h('input', { id: 'expert-number', type: 'number', min: 0, max: m.n_routed_experts - 1, value: e });
      const go = () => { location.hash = kit.expertHref(m.slug, Number(layerSel.value), Math.max(0, Math.min(m.n_routed_experts - 1, Number(expertIn.value) || 0))); };
      layerSel.addEventListener('change', go); expertIn.addEventListener('change', go);
      const step = (d) => h('a', { href: kit.expertHref(m.slug, li, (e + d + m.n_routed_experts) % m.n_routed_experts) }, d < 0 ? '← expert ' + ((e - 1 + m.n_routed_experts) % m.n_routed_experts) : 'expert ' + ((e + 1) % m.n_routed_experts) + ' →');
      const facts = h('table', { id: 'expert-facts' }, h('tbody', {}));
      const partners = h('div', { id: 'expert-partners' });
      const routed = h('div', { id: 'expert-routed' }, h('p', { class: 'muted' }, 'Loading…'));
      kit.put(view, h('p', {}, h('a', { href: '#/model/' + encodeURIComponent(m.slug) }, '← ' + m.slug)), kit.randomInitBanner(m),
        h('h1', { id: 'expert-title', 'data-layer-index': li, 'data-expert': e }, 'Expert ' + e + ' at MoE layer ' + layers[li], ' ', h('span', { class: 'muted' }, 'of ' + m.slug)),
        h('div', { class: 'controls' }, h('label', {}, 'Layer ', layerSel), h('label', {}, 'Expert ', expertIn), step(-1), step(1)),
        facts, partners, routed);
      const addFact = (k, v) => facts.querySelector('tbody').appendChild(h('tr', {}, h('th', {}, k), h('td', { class: 'mono' }, v)));
      kit.load('model', m.slug, 'data/models/' + encodeURIComponent(m.slug) + '.js').then((data) => {
        const E = (data.metrics || {}).experts || {};
        if (Array.isArray(E.load) && E.load[li]) {
          addFact('load (share of top-k slots, all routed tokens)', fmt(E.load[li][e] * 100, 3) + '% (uniform ' + fmt(100 / m.n_routed_experts, 3) + '%)');
        }
        if ((data.coactivation_layers || []).includes(li)) {
          kit.load('coact', key, 'data/models/' + encodeURIComponent(m.slug) + '/coact-' + li + '.js').then((c) => {
            const P = kit.uint16s(c.p), N = c.n;
            const row = Array.from({ length: N }, (_, j) => [j, P[e * N + j] / c.scale, P[j * N + e] / c.scale]).filter(([j]) => j !== e);
            row.sort((a, b) => b[1] - a[1]);
            addFact('chosen (all routed tokens)', fmt(c.load[e]) + '×');
            kit.put(partners, h('h2', {}, 'Co-activation partners'),
              h('table', { id: 'partner-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'expert j'), h('th', { class: 'num' }, 'P(j | ' + e + ')'), h('th', { class: 'num' }, 'P(' + e + ' | j)'))),
                h('tbody', {}, row.slice(0, 10).map(([j, pj, pi]) => h('tr', {}, h('td', {}, h('a', { class: 'expert-link', href: kit.expertHref(m.slug, li, j) }, String(j))), num(pj, 4), num(pi, 4))))));
            kit.enhanceTables(partners, m.slug + '-L' + layers[li] + '-E' + e);
          }, () => null);
        } else kit.put(partners, h('p', { class: 'muted' }, 'No co-activation matrix for this layer (metrics/coactivation-' + m.slug + '.npz).'));
      }, () => null);
      kit.load('expert', key, 'data/models/' + encodeURIComponent(m.slug) + '/experts-' + li + '.js').then((L) => {
        const X = L.experts[String(e)];
        if (!X) return kit.put(routed, h('p', { class: 'muted', id: 'expert-unused' }, 'No target token of the senses corpus chose this expert at this layer (' + L.n_rows + ' target sub-token rows).'));
        addFact('senses-corpus target sub-tokens choosing it', X.rows + ' of ' + L.n_rows + ' rows');
        addFact('selectivity across senses', X.n_senses + ' senses; entropy of its rows over senses ' + fmt(X.sense_entropy_bits) + ' bits (max ' + fmt(Math.log2(Math.max(1, X.rows))) + ')');
        const t = (id, head, rows) => h('table', { id }, h('thead', {}, h('tr', {}, head.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
        kit.put(routed, h('h2', {}, 'What routes to it (target tokens of the senses corpus, every sub-token)'),
          h('div', { class: 'model-row' },
            h('div', {}, h('h3', {}, 'Lemmas'), t('expert-lemmas', ['lemma', 'rows'], X.lemmas.map(([i, c]) => h('tr', {}, h('td', {}, lemmaLink(i)), num(c))))),
            h('div', {}, h('h3', {}, 'Senses'), t('expert-senses', ['lemma', 'sense key', 'rows', 'share of the sense\'s rows'],
              X.senses.map(([i, sk, c, n]) => h('tr', { 'data-sense-key': sk }, h('td', {}, lemmaLink(i)), h('td', { class: 'mono' }, sk), num(c), num(c / n))))),
            h('div', {}, h('h3', {}, 'Tokens (decoded)'), t('expert-tokens', ['token', 'rows'], X.tokens.map(([tok, c]) => h('tr', {}, h('td', { class: 'mono' }, JSON.stringify(tok)), num(c)))))),
          h('h3', {}, 'Example rows'), t('expert-examples', ['lemma', 'example', 'token index'], X.examples.map(([i, ex, ti]) =>
            h('tr', {}, h('td', {}, lemmaLink(i)), h('td', {}, 'example ' + (ex + 1)), num(ti)))));
        kit.enhanceTables(routed, m.slug + '-L' + layers[li] + '-E' + e);
      }, (err) => kit.put(routed, h('p', { class: 'error' }, err.message)));
    }

    /** #/compare/<a>/<b>: two models' headline numbers and the controlled sense effect per layer, side by side. */
    function comparePage(view, a, b) {
      const routed = kit.state.index.models.filter((m) => m.has_metrics);
      const pick = (id, sel) => {
        const el = h('select', { id }, routed.map((m) => h('option', { value: m.slug, selected: m.slug === sel }, kit.modelLabel(m))));
        el.addEventListener('change', () => { location.hash = '#/compare/' + encodeURIComponent(selA.value) + '/' + encodeURIComponent(selB.value); });
        return el;
      };
      const selA = pick('compare-a', a), selB = pick('compare-b', b);
      const body = h('div', { id: 'compare-body' }, h('p', { class: 'muted' }, 'Loading…'));
      kit.put(view, h('p', {}, h('a', { href: '#/' }, '← all lemmas')), h('h1', {}, 'Compare two models'),
        h('div', { class: 'controls' }, h('label', {}, 'Model A ', selA), h('label', {}, 'Model B ', selB)), body);
      const ms = [a, b].map((slug) => kit.state.models.get(slug));
      if (ms.some((m) => !m)) return kit.put(body, h('p', { class: 'error' }, 'Pick two models of this atlas that have metrics.'));
      Promise.all(ms.map((m) => kit.load('model', m.slug, 'data/models/' + encodeURIComponent(m.slug) + '.js'))).then((datas) => {
        const M = datas.map((d) => d.metrics || {});
        const sp = M.map((x) => x.sense_pairs || {});
        const lines = [
          ['sense pairs (same / different)', (x) => (x.sense_pairs && x.sense_pairs.n_pairs ? x.sense_pairs.n_pairs.same + ' / ' + x.sense_pairs.n_pairs.different : '–')],
          ['Δκ layer mean [95% CI]', (x) => ci(((x.sense_pairs || {}).layer_mean || {}).delta)],
          ['κ same, layer mean', (x) => ci(((x.sense_pairs || {}).layer_mean || {}).kappa_same, 3, false)],
          ['κ different, layer mean', (x) => ci(((x.sense_pairs || {}).layer_mean || {}).kappa_different, 3, false)],
          ['sense probe accuracy', (x) => ci((x.probe || {}).accuracy, 3, false)],
          ['most-frequent-sense accuracy', (x) => ci((x.probe || {}).mfs_accuracy, 3, false)],
          ['routed tokens', (x) => fmt(x.n_tokens)],
        ];
        const controls = [...new Set(sp.flatMap((x) => Object.keys(x.controls || {})))]
          .filter((c) => sp.some((x) => x.controls && x.controls[c] && x.controls[c].delta && Array.isArray(x.controls[c].delta.estimate)));
        for (const c of controls) lines.push(['Δκ ' + c.replace(/_/g, ' ') + ', layer mean', (x) => { const lm = ((((x.sense_pairs || {}).controls || {})[c] || {}).layer_mean) || {}; return ci(lm.delta || lm); }]);
        const head = h('tr', {}, h('th', {}, 'metric'), ms.map((m) => h('th', { 'data-model': m.slug }, m.slug, m.random_init ? h('span', { class: 'tag' }, 'RANDOM-INIT') : null)));
        const summary = h('table', { id: 'compare-table' }, h('thead', {}, head),
          h('tbody', {}, lines.map(([k, f]) => h('tr', {}, h('th', {}, k), M.map((x, i) => h('td', { class: 'mono', 'data-model': ms[i].slug }, f(x)))))));
        // Per layer: raw Δκ and every control, A's columns then B's (layers of different depth: blank cells).
        const series = (x) => [['raw', x.delta]].concat(controls.map((c) => [c, ((x.controls || {})[c] || {}).delta]));
        const L = Math.max(...ms.map((m) => m.moe_layers.length));
        const perLayer = h('table', { id: 'compare-layers' },
          h('thead', {}, h('tr', {}, h('th', {}, 'layer #'), ms.flatMap((m, i) => series(sp[i]).map(([name]) => h('th', { class: 'num' }, (i ? 'B ' : 'A ') + 'Δκ ' + name.replace(/_/g, ' ')))))),
          h('tbody', {}, Array.from({ length: L }, (_, l) => h('tr', { 'data-layer-index': l }, h('td', {}, String(l)),
            ms.flatMap((m, i) => series(sp[i]).map(([name, d]) => h('td', { class: 'num mono', 'data-model': m.slug, 'data-series': name },
              d && Array.isArray(d.estimate) && l < d.estimate.length ? fmt(d.estimate[l], 3, true) : '–')))))));
        const charts = h('div', { class: 'model-row' }, ms.map((m, i) => h('div', { class: 'model-col' + (m.random_init ? ' random-init' : ''), 'data-model': m.slug },
          h('h4', {}, m.slug), kit.randomInitBanner(m),
          sp[i].delta && Array.isArray(sp[i].delta.estimate) ? lineChart(m, series(sp[i]).filter(([, d]) => d && Array.isArray(d.estimate)).map(([n, d], j) => ['Δκ ' + n.replace(/_/g, ' '), d, j ? null : '#1f5fa8']), 'Δκ') :
            h('p', { class: 'muted' }, 'no per-layer sense effect'))));
        kit.put(body, summary, h('h2', {}, 'Controlled sense effect per layer, side by side'), charts, perLayer,
          h('p', { class: 'muted' }, 'One lemma in both models: open a lemma and pick the other model under "also show".'));
        kit.enhanceTables(body, 'compare-' + a + '-' + b);
      }, (err) => kit.put(body, h('p', { class: 'error' }, err.message)));
    }

    /** Rows of a token table: index, decoded token, `extra(row)` cells, then the experts at every layer. */
    function tokenRows(m, R, rows, rowClass, extra) {
      const L = m.moe_layers.length, k = m.top_k;
      const ids = m.n_routed_experts <= 256 ? kit.bytesOf(R.experts) : kit.uint16s(R.experts);
      return rows.map((row, at) => h('tr', { 'data-token-index': R.token_index[row], class: rowClass(row) },
        h('td', { class: 'num' }, String(R.token_index[row])), h('td', { class: 'mono token-text' }, JSON.stringify(R.text[row])), extra(row),
        Array.from({ length: L }, (_, l) => {
          // Sentence rows index the lemma's arrays; a trace's arrays are its own (row = position).
          const base = ((R.example ? row : at) * L + l) * k, top = Array.from(ids.subarray(base, base + k));
          return h('td', { class: 'mono expert-cell', 'data-layer-index': l, 'data-experts': top.join(' '), title: 'MoE layer ' + m.moe_layers[l] + ': top-' + k + ' ' + top.join(', ') },
            h('a', { href: kit.expertHref(m.slug, l, top[0]) }, String(top[0])), kit.state.sentenceTopK ? h('span', { class: 'muted' }, ' ' + top.slice(1).join(' ')) : null);
        })));
    }

    /** #/trace/<n>: a trace's text with its segments, and every token with segment, marker and experts. */
    function tracePage(view, n) {
      kit.put(view, h('p', { class: 'muted' }, 'Loading…'));
      kit.load('trace', String(n), 'data/traces/' + String(n).padStart(5, '0') + '.js').then((T) => {
        const slugs = Object.keys(T.routing).filter((slug) => kit.state.models.get(slug));
        if (!slugs.length) return kit.put(view, h('p', { class: 'error' }, 'No model of this atlas routed trace ' + T.id + '.'));
        if (!slugs.includes(kit.state.model)) kit.state.model = slugs[0];
        const m = kit.state.models.get(kit.state.model), R = T.routing[m.slug];
        const modelSel = h('select', { id: 'trace-model' }, slugs.map((slug) => h('option', { value: slug, selected: slug === m.slug }, kit.modelLabel(kit.state.models.get(slug)))));
        modelSel.addEventListener('change', () => { kit.state.model = modelSel.value; tracePage(view, n); });
        const showAll = h('input', { id: 'sentence-topk', type: 'checkbox', checked: !!kit.state.sentenceTopK });
        showAll.addEventListener('change', () => { kit.state.sentenceTopK = showAll.checked; tracePage(view, n); });
        // The text, cut at segment bounds: each segment a coloured, named span.
        const segs = T.segments.slice().sort((a, b) => a.start - b.start);
        const parts = [];
        let at = 0;
        for (const sg of segs) {
          if (sg.start > at) parts.push(T.text.slice(at, sg.start));
          parts.push(h('span', { class: 'segment seg-' + sg.name, 'data-segment': sg.name, title: sg.name + ' [' + sg.start + ', ' + sg.end + ')' },
            h('span', { class: 'segment-name' }, sg.name), T.text.slice(sg.start, sg.end)));
          at = Math.max(at, sg.end);
        }
        if (at < T.text.length) parts.push(T.text.slice(at));
        const rows = Array.from({ length: R.rows }, (_, i) => i);
        const body = tokenRows(m, R, rows, (row) => (R.segment[row] ? 'seg-' + R.segment[row] : null),
          (row) => [h('td', { class: 'segment-cell' }, R.segment[row] || ''), h('td', { class: 'marker-cell' }, R.marker[row] || '')]);
        kit.put(view, h('p', {}, h('a', { href: '#/' }, '← all lemmas')), kit.randomInitBanner(m), kit.synthBanner(m),
          h('h1', { id: 'trace-title', 'data-trace-id': T.id }, T.model_slug ? 'Trace ' : 'Text of ' + T.template + ' ', h('code', {}, T.id)),
          h('p', { class: 'muted' }, (T.model_slug ? 'template ' + T.template + ' (of ' + T.model_slug + '), ' : 'config ' + T.template + ', ') + 'source ' + T.source + '; segments: ' + (segs.map((x) => x.name).join(', ') || 'none')),
          h('pre', { class: 'trace-text' }, parts),
          h('div', { class: 'controls' }, h('label', {}, 'Model ', modelSel), h('label', {}, showAll, 'show the whole top-' + m.top_k)),
          h('div', { class: 'wide' }, h('table', { id: 'sentence-table' },
            h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'token'), h('th', {}, 'segment'), h('th', {}, 'marker'), m.moe_layers.map((ml) => h('th', { class: 'num' }, 'L' + ml)))),
            h('tbody', {}, body))));
        kit.enhanceTables(view, 'trace-' + n + '-' + m.slug);
      }, (err) => kit.put(view, h('p', { class: 'error' }, err.message)));
    }

    /** #/sentence/<lemma.pos>/<example>: every token of one example with its experts at every MoE layer. */
    /** `which`: an example index, or 's<j>' for substitution j of the lemma (its base example's text changed). */
    function sentencePage(view, key, which) {
      const i = kit.state.keyToFile.get(key), file = String(i).padStart(5, '0') + '.js';
      const sub = /^s(\d+)$/.exec(String(which)), j = sub ? Number(sub[1]) : null, ei = sub ? null : Number(which);
      kit.put(view, h('p', { class: 'muted' }, 'Loading…'));
      Promise.all([kit.load('lemma', key, 'data/lemmas/' + file), kit.load('sentence', key, 'data/sentences/' + file)]).then(([data, S]) => {
        const substitution = sub ? (S.substitutions || [])[j] : null;
        const base = sub ? (substitution ? data.examples[substitution.example] : null) : data.examples[ei];
        if (!base) return kit.put(view, h('p', { class: 'error' }, 'No ' + (sub ? 'substitution ' + j : 'example ' + ei) + ' of ' + key + '.'));
        const ex = substitution || base, id = ex.id, at = sub ? j : ei;
        const sense = data.senses[base.sense];
        const routing = sub ? S.substitution_routing || {} : S.routing;
        const slugs = Object.keys(routing).filter((slug) => kit.state.models.get(slug));
        if (!slugs.length) return kit.put(view, h('p', { class: 'error' }, 'No model routed ' + id + '.'));
        if (!slugs.includes(kit.state.model)) kit.state.model = slugs[0];
        const m = kit.state.models.get(kit.state.model);
        const modelSel = h('select', { id: 'sentence-model' }, slugs.map((slug) => h('option', { value: slug, selected: slug === m.slug }, kit.modelLabel(kit.state.models.get(slug)))));
        modelSel.addEventListener('change', () => { kit.state.model = modelSel.value; sentencePage(view, key, which); });
        const showAll = h('input', { id: 'sentence-topk', type: 'checkbox', checked: !!kit.state.sentenceTopK });
        showAll.addEventListener('change', () => { kit.state.sentenceTopK = showAll.checked; sentencePage(view, key, which); });
        const R = routing[m.slug], k = m.top_k;
        const rows = [];
        R.example.forEach((x, row) => { if (x === at) rows.push(row); });
        const baseIndex = sub ? substitution.example : ei;
        const subs = (S.substitutions || []).map((x, n) => [x, n]).filter(([x]) => x.example === baseIndex);
        const [t0, t1] = ex.target;
        const body = tokenRows(m, R, rows, (row) => { const [a, b] = R.span[row]; return b > t0 && a < t1 ? 'target-row' : null; }, () => []);
        kit.put(view, h('p', {}, h('a', { href: '#/lemma/' + encodeURIComponent(key) }, '← ' + key)), kit.randomInitBanner(m), kit.synthBanner(m),
          h('h1', { id: 'sentence-title', 'data-example-id': id }, 'Every token of ' + (sub ? 'a substitution (' + ex.relation + ': ' + ex.substitute + ') in an example' : 'an example') + ' of ', h('code', {}, key)),
          h('p', { class: 'sentence-text' }, ex.text.slice(0, t0), h('mark', { class: 'target' }, ex.text.slice(t0, t1)), ex.text.slice(t1)),
          h('p', { class: 'muted' }, 'Sense ' + sense.sense_number + ' (' + sense.sense_key + '): ' + sense.gloss + ' · source id ' + id),
          subs.length || sub ? h('p', { id: 'substitution-links' }, sub ? h('a', { href: '#/sentence/' + encodeURIComponent(key) + '/' + baseIndex }, 'the original example') : 'Substitutions: ',
            subs.filter(([, n]) => n !== j).map(([x, n]) => h('a', { class: 'substitution-link', href: '#/sentence/' + encodeURIComponent(key) + '/s' + n, 'data-substitution-id': x.id }, ' ' + x.relation + ': ' + x.substitute + ' '))) : null,
          h('div', { class: 'controls' }, h('label', {}, 'Model ', modelSel), h('label', {}, showAll, 'show the whole top-' + k + ' (else the top-1; hover a cell for all)')),
          rows.length ? h('div', { class: 'wide' }, h('table', { id: 'sentence-table' },
            h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'token'), m.moe_layers.map((ml) => h('th', { class: 'num' }, 'L' + ml)))), h('tbody', {}, body))) :
            h('p', { class: 'muted' }, 'This model has no routing rows of this example.'));
        kit.enhanceTables(view, key + '-' + (sub ? 'substitution-' + j : 'example-' + ei) + '-' + m.slug);
      }, (err) => kit.put(view, h('p', { class: 'error' }, err.message)));
    }

    return { flatTable, paths, corpora, expertPage, comparePage, sentencePage, tracePage };
  };
})();
