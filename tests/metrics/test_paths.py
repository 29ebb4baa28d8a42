"""Routing paths across layers: planted path structures are recovered, and every statistic matches an
independent computation written here (plain Python counting over the rows)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas_build.atlas.schema import SENSES_SCHEMA
from atlas_build.metrics.estimators.senses import BootstrapOptions
from atlas_build.metrics.paths import agreement, arrays, diversity, transitions
from tests.metrics.metrics_synth import Tokens, model_row, write_atlas

N, L, K = 16, 4, 2


def _entropy(counter: Counter) -> float:
    total = sum(counter.values())
    return -sum(c / total * math.log2(c / total) for c in counter.values() if c)


def _conditional_entropy(pairs: list[tuple]) -> float:
    """H(Y | X) in bits from (x, y) observations, by counting."""
    joint, marginal = Counter(pairs), Counter(x for x, _ in pairs)
    return _entropy(joint) - _entropy(marginal)


# ---- transitions --------------------------------------------------------------------------------------


def test_planted_transitions_are_recovered_with_lift_against_the_shuffle():
    rng = np.random.default_rng(0)
    n = 20_000
    top1 = np.empty((n, L), dtype=np.uint8)
    top1[:, 0] = rng.integers(0, N, n)
    follow = rng.random((n, L)) < 0.9  # 90%: the next layer's expert is e' + 1
    for layer in range(1, L):
        top1[:, layer] = np.where(follow[:, layer], (top1[:, layer - 1] + 1) % N, rng.integers(0, N, n))
    out, adjacent = transitions.transitions(
        np.ascontiguousarray(top1.T), N, [3, 4, 5, 6], min_count=5, seed=0
    )
    d1 = out["distances"]["1"]
    assert d1["from_layers"] == [3, 4, 5] and d1["to_layers"] == [4, 5, 6]
    for lo in range(L - 1):
        # Independent counting of P(e at l+1 | e' at l) and of the mutual information.
        pairs = list(zip(top1[:, lo].tolist(), top1[:, lo + 1].tolist(), strict=True))
        counts = Counter(pairs)
        assert adjacent[lo][5, 6] == counts[(5, 6)]
        mi = _entropy(Counter(top1[:, lo + 1].tolist())) - _conditional_entropy(pairs)
        assert d1["mi_bits"][lo] == pytest.approx(mi, abs=1e-9)
        assert d1["mi_shuffled_bits"][lo] < 0.02 < 2.5 < d1["mi_bits"][lo]
        best = d1["top"][lo][0]
        assert best["to"] == (best["from"] + 1) % N
        assert best["p"] == pytest.approx(0.9 + 0.1 / N, abs=0.03)
        row = sum(c for (a, _), c in counts.items() if a == best["from"])
        col = sum(c for (_, b), c in counts.items() if b == best["to"])
        assert best["lift"] == pytest.approx(counts[(best["from"], best["to"])] * len(pairs) / (row * col))
        assert best["lift"] == pytest.approx((0.9 + 0.1 / N) * N, rel=0.1)
    # d = 2: e' + 2 with probability about 0.81.
    d2 = out["distances"]["2"]
    assert all((t[0]["to"] - t[0]["from"]) % N == 2 for t in d2["top"])


def test_independent_layers_have_lift_one_and_mi_at_the_shuffle_level():
    rng = np.random.default_rng(1)
    top1 = rng.integers(0, N, (50_000, L)).astype(np.uint8)
    out, adjacent = transitions.transitions(
        np.ascontiguousarray(top1.T), N, list(range(L)), min_count=5, seed=0
    )
    ratio = transitions.lift(adjacent[0])
    assert np.nanmax(np.abs(ratio - 1)) < 0.25
    d1 = out["distances"]["1"]
    for mi, shuffled in zip(d1["mi_bits"], d1["mi_shuffled_bits"], strict=True):
        assert mi == pytest.approx(shuffled, abs=0.004)


# ---- diversity -------------------------------------------------------------------------------------


def _diversity_by_counting(token_ids, top1, starts, width, min_count, token_of_row=None):
    """Independent: over the occurrences of ids seen ≥ min_count times, mean over ids of distinct paths /
    occurrences and H(path | token), by counting (token_of_row: a relabelling of the rows' ids)."""
    counts = Counter(token_ids.tolist())
    keep = [i for i, t in enumerate(token_ids.tolist()) if counts[t] >= min_count]
    labels = token_ids if token_of_row is None else token_of_row
    shares, entropies = [], []
    for s in starts:
        by_token, pairs = defaultdict(set), []
        for i in keep:
            path = tuple(top1[i, s : s + width].tolist())
            by_token[int(labels[i])].add(path)
            pairs.append((int(labels[i]), path))
        occ = Counter(t for t, _ in pairs)
        shares.append(np.mean([len(by_token[t]) / occ[t] for t in sorted(by_token)], dtype=np.float64))
        entropies.append(_conditional_entropy(pairs))
    return float(np.mean(shares)), float(np.mean(entropies))


def test_diversity_matches_counting_and_finds_token_determined_paths():
    rng = np.random.default_rng(2)
    n = 6000
    # Frequent ids 0..39 and a tail of singletons (ids 1000+): the population is the frequent ids only.
    token_ids = np.r_[rng.integers(0, 40, n - 500), 1000 + np.arange(500)]
    rng.shuffle(token_ids)
    # Layers 0-1: the path is a function of the token id; layers 2-3: random.
    top1 = np.empty((n, L), dtype=np.uint8)
    top1[:, 0] = token_ids % N
    top1[:, 1] = (token_ids * 7) % N
    top1[:, 2:] = rng.integers(0, N, (n, 2))
    experts = np.stack([top1, (top1 + 1) % N], axis=-1)  # top-2: (e, e + 1)
    column = _experts_column(experts)
    set_layers = list(range(L))
    sets = arrays.layer_set_codes(column, set_layers, N, seed=0)
    out = diversity.diversity(
        np.ascontiguousarray(top1.T), sets, set_layers, token_ids, N, min_count=5, seed=0
    )
    assert out["n_token_ids"] == 40 and out["n_token_ids_seen"] == 540 and out["n_occurrences"] == n - 500
    w1, w2 = out["windows"]["1"], out["windows"]["2"]
    for name, width in (("1", 1), ("2", 2), ("all", L)):
        block = out["windows"][name]["top1"]
        share, entropy = _diversity_by_counting(token_ids, top1, block["layers_start"], width, 5)
        assert block["distinct_share"] == pytest.approx(share, abs=1e-12)
        assert block["h_path_given_token_bits"] == pytest.approx(entropy, abs=1e-9)
    # The planted determinism: layers 0 and 1 carry no entropy given the token; the shuffle does.
    assert w2["top1"]["layers_start"][0] == 0
    assert w1["top1"]["h_path_given_shuffled_token_bits"] > 3
    # top-k sets follow the same structure (sets are {e, e+1}: as many distinct sets as top-1 ids).
    assert w1["topk"]["distinct_share"] == pytest.approx(w1["top1"]["distinct_share"], abs=1e-12)


def test_shuffled_diversity_is_over_the_same_population_and_reads_the_right_way():
    """Routing a function of the token id: real paths far less diverse than shuffled; routing random per
    occurrence: real = shuffled (up to sampling). A long singleton tail (as in real text) must not move
    either side: the old estimator counted singletons only on the observed side."""
    rng = np.random.default_rng(5)
    n_frequent, n_singletons = 8000, 4000
    token_ids = np.r_[rng.integers(0, 60, n_frequent), 10_000 + np.arange(n_singletons)]
    rng.shuffle(token_ids)
    n = len(token_ids)
    determined = np.stack([(token_ids * (3 + 2 * j)) % N for j in range(L)], axis=1).astype(np.uint8)
    random = rng.integers(0, N, (n, L)).astype(np.uint8)
    for top1, direction in ((determined, "less"), (random, "equal")):
        out = diversity.diversity(np.ascontiguousarray(top1.T), None, [], token_ids, N, min_count=5, seed=3)
        block = out["windows"]["2"]["top1"]
        # The shuffled side, independently: the same permutation of the ids over the population's rows.
        counts = Counter(token_ids.tolist())
        rows = np.flatnonzero([counts[t] >= 5 for t in token_ids.tolist()])
        perm = np.random.default_rng(3 + 11).permutation(len(rows))
        relabelled = token_ids.copy()
        relabelled[rows] = token_ids[rows][perm]
        share, entropy = _diversity_by_counting(
            token_ids, top1, block["layers_start"], 2, 5, token_of_row=relabelled
        )
        assert block["distinct_share_shuffled"] == pytest.approx(share, abs=1e-12)
        assert block["h_path_given_shuffled_token_bits"] == pytest.approx(entropy, abs=1e-9)
        real, shuffled = block["distinct_share"], block["distinct_share_shuffled"]
        if direction == "less":
            assert real < 0.5 * shuffled
            assert block["h_path_given_token_bits"] == pytest.approx(0.0, abs=1e-12)
            assert block["h_path_given_shuffled_token_bits"] > 3.5  # 16 paths: ≤ 4 bits
        else:
            assert real == pytest.approx(shuffled, rel=0.03)
            assert block["h_path_given_token_bits"] == pytest.approx(
                block["h_path_given_shuffled_token_bits"], rel=0.01
            )


def test_path_codes_are_exact_or_hashed_without_collisions():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 256, (20_000, 12)).astype(np.uint8)
    exact_codes, exact = arrays.window_codes(np.ascontiguousarray(ids.T), 0, 8, 256)
    assert exact
    hashed, exact_long = arrays.window_codes(np.ascontiguousarray(ids.T), 0, 12, 256)
    assert not exact_long
    distinct_rows = len({tuple(r) for r in ids.tolist()})
    assert len(np.unique(hashed)) == distinct_rows
    assert len(np.unique(exact_codes)) == len({tuple(r) for r in ids[:, :8].tolist()})


# ---- sense entropy ---------------------------------------------------------------------------------


def _sense_setup(sense_drives_path: bool, seed: int):
    rng = np.random.default_rng(seed)
    n = 600
    token = rng.integers(0, 20, n)
    sense = token * 3 + rng.integers(0, 2, n)  # two senses per token id
    if sense_drives_path:
        top1 = np.stack([(sense * (j + 3)) % N for j in range(L)], axis=1)
    else:
        top1 = rng.integers(0, N, (n, L))
    return top1.astype(np.uint8), token, sense


def test_sense_entropy_gain_matches_counting_and_its_null():
    top1, token, sense = _sense_setup(True, 4)
    out = diversity.sense_entropy(top1, token, sense, N, n_permutations=99, seed=0)
    w1 = out["windows"]["1"]
    gains = []
    for s in range(L):
        path = top1[:, s].tolist()
        h_t = _conditional_entropy(list(zip(token.tolist(), path, strict=True)))
        h_ts = _conditional_entropy(
            list(zip(zip(token.tolist(), sense.tolist(), strict=True), path, strict=True))
        )
        gains.append(h_t - h_ts)
    assert w1["gain_bits"] == pytest.approx(np.mean(gains), abs=1e-9)
    assert w1["gain_bits"] > 0.8  # the path reveals the sense (1 bit of sense within each token id)
    assert w1["p_value"] == pytest.approx(1 / 100)
    top1, token, sense = _sense_setup(False, 5)
    null = diversity.sense_entropy(top1, token, sense, N, n_permutations=99, seed=0)["windows"]["1"]
    assert null["p_value"] > 0.05
    assert null["gain_bits"] == pytest.approx(null["null_mean_bits"], abs=0.1)


# ---- agreement, end to end through `atlas metrics` ---------------------------------------------------


def _experts_column(experts: np.ndarray) -> pa.Array:
    from atlas_build.atlas.routing import nested_fixed_list

    return nested_fixed_list(experts.astype(np.uint8), pa.uint8())


def _senses(forms) -> pa.Table:
    """Lemmas lem0..lem{n-1} with 2 senses x 6 examples; `forms(lemma, sense, example)` gives the target
    word (so that the target token id can follow the sense or not)."""
    rows = []
    for lemma in range(24):
        for sense in range(2):
            for example in range(6):
                form = forms(lemma, sense, example)
                words = [f"c{(lemma * 5 + example * 3 + j) % 50}" for j in range(4)]
                text = " ".join([*words[:2], form, *words[2:]])
                start = len(" ".join(words[:2])) + 1
                name = f"lem{lemma}"
                rows.append(
                    {
                        "example_id": f"{name}.n|{name}.n.0{sense + 1}|{example}",
                        "lemma": name,
                        "pos": "n",
                        "synset": f"{name}.n.0{sense + 1}",
                        "sense_key": f"{name}%1:00:0{sense}::",
                        "sense_number": sense + 1,
                        "lemma_n_senses": 2,
                        "lexname": "noun.artifact",
                        "gloss": "synthetic",
                        "text": text,
                        "target_start": start,
                        "target_end": start + len(form),
                        "target_form": form,
                        "source": "synthetic",
                    }
                )
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


def _planted(layers_by_sense: tuple[int, ...], by_token: bool = False):
    """Random routing; at target tokens, the top-1 expert of `layers_by_sense` is a function of the sense
    (or, with `by_token`, of the target token id in every layer: sense-blind)."""

    def fn(tokens: Tokens, rng: np.random.Generator) -> np.ndarray:
        top1 = rng.integers(0, N, (len(tokens.text), L))
        for i in np.flatnonzero(tokens.is_target):
            row = tokens.texts[tokens.text[i]]["row"]
            if by_token:
                top1[i] = (tokens.token_ids[i] * np.array([3, 5, 7, 11])) % N
            else:
                sense = int(row["synset"][-1])
                for layer in layers_by_sense:
                    top1[i, layer] = (int(row["lemma"][3:]) % 7 + sense * 5 + layer) % N
        return np.stack([top1, (top1 + 1) % N], axis=-1)

    return fn


@pytest.fixture(scope="module")
def sense_atlas(tmp_path_factory):
    senses = _senses(lambda lemma, sense, example: f"lem{lemma}")
    models = [
        (model_row("planted", random_init=False, n_experts=N, n_layers=L, top_k=K), _planted((0, 1))),
        (model_row("planted-null", random_init=True, n_experts=N, n_layers=L, top_k=K), _planted(())),
    ]
    return write_atlas(tmp_path_factory.mktemp("paths") / "atlas", senses, models, seed=3)


def _independent_agreement(atlas, slug: str, width: int):
    """Δ agreement per window start, from the Parquet files read here with pyarrow only."""
    routing = pq.read_table(next((atlas / f"routing-{slug}").glob("*.parquet")))
    senses = pq.read_table(next((atlas / "senses").glob("*.parquet"))).to_pylist()
    pairs = pq.read_table(next((atlas / "sense-pairs").glob("*.parquet"))).to_pylist()
    target = {}
    for r in routing.select(["source_id", "is_target", "experts"]).to_pylist():
        if r["is_target"]:
            target[r["source_id"]] = [layer[0] for layer in r["experts"]]
    assert len(target) == len(senses)
    out = []
    for s in range(L - width + 1):
        agree = defaultdict(list)
        for p in pairs:
            a, b = target[p["example_a"]][s : s + width], target[p["example_b"]][s : s + width]
            agree[p["same_sense"]].append(float(a == b))
        out.append(np.mean(agree[True]) - np.mean(agree[False]))
    return np.array(out)


def test_planted_sense_paths_are_recovered_at_the_planted_layers(sense_atlas, compute):
    metrics = compute(sense_atlas, n_bootstrap=400, n_permutations=199)
    ag = metrics["models"]["planted"]["paths"]["agreement"]
    per_layer = ag["per_layer"]["delta"]
    expected = _independent_agreement(sense_atlas, "planted", 1)
    np.testing.assert_allclose(per_layer["estimate"], expected, rtol=1e-5, atol=1e-6)  # JSON: 6 digits
    # Planted at layers 0 and 1: agreement is 1 for same-sense pairs there, chance elsewhere.
    assert min(per_layer["ci_low"][:2]) > 0.5
    assert all(lo < 0 < hi for lo, hi in zip(per_layer["ci_low"][2:], per_layer["ci_high"][2:], strict=True))
    w2 = ag["windows"]["2"]
    np.testing.assert_allclose(
        w2["per_start_delta"], _independent_agreement(sense_atlas, "planted", 2), rtol=1e-5, atol=1e-6
    )
    assert w2["delta"]["estimate"] == pytest.approx(np.mean(w2["per_start_delta"]), abs=1e-5)
    assert w2["first_layers"] == [1, 2, 3]
    # Target token identity is the same in every pair here: that control keeps the effect.
    assert ag["same_target_token"] == {"same": 1.0, "different": 1.0}
    w1 = ag["windows"]["1"]
    for name in ("token_identity", "context_words", "all", "null_model"):
        assert w1["controls"][name]["delta"]["ci_low"] > 0, name
    assert w1["survives"] and w1["delta"]["p_value"] < 0.01
    # Over all layers the paths differ (layers 2-3 random): no effect survives.
    assert not ag["windows"]["all"]["survives"]
    null = metrics["models"]["planted-null"]["paths"]["agreement"]["windows"]["1"]
    assert null["delta"]["ci_low"] < 0 < null["delta"]["ci_high"]
    # Sense entropy: the planted sense lowers H(path | token id, sense) in the planted layers.
    se = metrics["models"]["planted"]["paths"]["sense_entropy"]["windows"]["1"]
    assert se["gain_bits"] > se["null_q95_bits"] and se["p_value"] < 0.05


def test_token_identity_control_removes_a_sense_blind_token_path(tmp_path, compute):
    # Sense 0 is written "lemNa" in 5 of 6 examples, sense 1 "lemNb": same-sense pairs share the target
    # token more often, and a path that follows only the token id looks like a sense effect.
    senses = _senses(
        lambda lemma, sense, example: f"lem{lemma}" + ("ab"[sense] if example < 5 else "ba"[sense])
    )
    models = [
        (model_row("blind", random_init=False, n_experts=N, n_layers=L, top_k=K), _planted((), by_token=True))
    ]
    atlas = write_atlas(tmp_path / "atlas", senses, models, seed=4)
    ag = compute(atlas, n_bootstrap=400, n_permutations=199)["models"]["blind"]["paths"]["agreement"]
    w1 = ag["windows"]["1"]
    assert ag["same_target_token"]["same"] > ag["same_target_token"]["different"]
    assert w1["delta"]["ci_low"] > 0.1  # raw: a spurious "sense" effect
    control = w1["controls"]["token_identity"]["delta"]
    # Within each stratum of target token identity the sense-blind path agrees equally: Δ = 0 exactly.
    assert control["ci_low"] <= 0 <= control["ci_high"] and abs(control["estimate"]) < 1e-9
    assert not w1["survives"]


def test_stratified_delta_matches_a_direct_cmh_computation():
    rng = np.random.default_rng(6)
    n = 400
    values = rng.random((n, 2))
    same = rng.random(n) < 0.5
    strata = rng.integers(0, 3, n)
    cluster = np.arange(n) // 4
    est, low, high = agreement.stratified_delta(
        values, same, strata, cluster, n // 4, BootstrapOptions(200, 0)
    )
    num = den = 0.0
    for s in range(3):
        a, b = values[(strata == s) & same], values[(strata == s) & ~same]
        w = len(a) * len(b) / (len(a) + len(b))
        num, den = num + w * (a.mean(axis=0) - b.mean(axis=0)), den + w
    np.testing.assert_allclose(est, num / den, atol=1e-12)
    assert np.all(low <= est) and np.all(est <= high)


def test_id_only_engines_get_no_top1_paths(sense_atlas, compute):
    from atlas_build.metrics.paths.compute import path_metrics
    from atlas_build.metrics.provenance.source import AtlasSource

    src = AtlasSource(sense_atlas)
    row = dict(src.models()[0], weights_dtype=None)
    out, arrays = path_metrics(src.routing(row["model_slug"]), row, None)
    assert out["transitions"] is None and not arrays
    assert out["diversity"]["windows"]["1"]["top1"] is None
    assert out["diversity"]["windows"]["1"]["topk"]["distinct_share"] > 0


def test_the_forked_path_job_gives_the_in_process_result(sense_atlas):
    from atlas_build.metrics.estimators.senses import load_sense_corpus
    from atlas_build.metrics.paths.compute import PathMetricsJob, path_metrics
    from atlas_build.metrics.provenance.source import AtlasSource
    from atlas_build.metrics.report.markdown import to_json

    src = AtlasSource(sense_atlas)
    row = next(r for r in src.models() if r["model_slug"] == "planted")
    corpus = load_sense_corpus(src.table("senses"), src.table("sense-pairs"))
    options = BootstrapOptions(100, 19)
    routing = src.routing("planted")
    local, local_arrays = path_metrics(routing, row, corpus, options=options)
    forked, forked_arrays = PathMetricsJob(routing, row, corpus, options=options, workers=1).result()
    assert to_json(forked) == to_json(local)
    np.testing.assert_array_equal(
        forked_arrays["path_transition_counts"], local_arrays["path_transition_counts"]
    )
