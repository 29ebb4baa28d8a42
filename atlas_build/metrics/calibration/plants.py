"""Calibration on planted truth: copies of an atlas whose target routing is replaced by a known mechanism,
and what the raw Δκ and each control recover from each.

`atlas metrics calibrate DIR --out OUT` writes `OUT/plant-<name>/` (a complete atlas: the original files
with the routing of the sense targets rewritten, a new manifest) for every plant, computes the metrics of
the original and of each copy, and writes `OUT/calibration.json` and `OUT/calibration.md`:

    sense           at the chosen MoE layers of the planted model only, a target takes its sense's
                    canonical top-k set (a seeded random set per synset and layer) with probability q, else
                    keeps its routing: a real sense effect. Other layers and other models are untouched, so
                    their Δκ must not change at all; every control must keep the effect at those layers.
    token_identity  sense-blind: at every layer of every model, a target's top-k set is a seeded function of
                    (its token-id sequence, left neighbour, right neighbour) only; `token_identity` must
                    remove it.
    context_words   sense-blind: a target's top-k set at layer l is a seeded set of the MinHash word of its
                    context words (per layer another hash), so two targets share the set with probability
                    equal to their context-word Jaccard: E[κ | J] = J. `context_words` must remove it.
    noise           pure noise: every target's top-k set is uniformly random; every CI must contain 0.

Confound plants apply to every model (a random-init twin has the same token- and context-driven routing),
each with its own seed. The copies are calibration data: their routing is planted, not a model's.

Beside these end-to-end copies, `calibration.json["summary"]` holds the in-memory calibration
(metrics/calibration/matrix.py: plant × control matrix with confounds that are not the controls' keys,
per-layer false-positive rates over several noise replicates, power), the block `atlas metrics --calibrate`
records in metrics.json, tied to the atlas by its manifest sha256.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.routing import nested_fixed_list, routing_array
from atlas_build.atlas.schema import ROUTING_PREFIX, SENSES
from atlas_build.metrics.controls.regression import CONTROL_NAMES
from atlas_build.metrics.estimators.identity import TargetIdentity, target_identity
from atlas_build.metrics.estimators.senses import SenseCorpus, load_sense_corpus
from atlas_build.metrics.provenance.source import SourceError

PLANTS = ("sense", "token_identity", "context_words", "noise")
# The control meant to remove each sense-blind plant.
REMOVED_BY = {"token_identity": "token_identity", "context_words": "context_words"}
CALIBRATION_JSON = "calibration.json"
CALIBRATION_MD = "calibration.md"


@dataclass
class PlantOptions:
    model: str | None = None  # the planted model of the sense plant (default: the first slug)
    layers: tuple[int, ...] | None = (
        None  # decoder layers of the sense plant (default: every other MoE layer)
    )
    strength: float = 0.5  # q: probability that a target takes its sense's canonical set
    seed: int = 0


def random_sets(n_sets: int, n_experts: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """`[n_sets, k]` uniformly random k-subsets of N experts (random order)."""
    return np.argsort(rng.random((n_sets, n_experts)), axis=1)[:, :top_k]


@dataclass
class _Rows:
    """The routing rows of one file that are sense targets, and their example index."""

    rows: np.ndarray  # [R] row indices in the file
    example: np.ndarray  # [R] example index in the corpus


def _target_rows(table: pa.Table, example_ids: pa.Array) -> _Rows:
    mask = pc.and_(table.column("is_target"), pc.equal(table.column("corpus"), SENSES))
    rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    ids = table.column("source_id").take(pa.array(rows))
    example = pc.fill_null(pc.index_in(ids, value_set=example_ids), -1).to_numpy().astype(np.int64)
    keep = example >= 0
    return _Rows(rows[keep], example[keep])


def plant_sets(
    plant: str,
    corpus: SenseCorpus,
    identity: TargetIdentity,
    n_experts: int,
    top_k: int,
    layers: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """`[E, L, k]` the planted top-k set of every example's target at every layer (`layers` bool `[L]`:
    where the plant applies; elsewhere -1 = keep the routing). The sense plant's probability is applied
    by the caller."""
    n_examples, n_layers = len(corpus.group), len(layers)
    out = np.full((n_examples, n_layers, top_k), -1, dtype=np.int64)
    if plant == "sense":
        for layer in np.flatnonzero(layers):
            out[:, layer] = random_sets(int(corpus.synset.max()) + 1, n_experts, top_k, rng)[corpus.synset]
    elif plant == "token_identity":
        key = np.column_stack([identity.ids, identity.left, identity.right])
        codes = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)
        for layer in range(n_layers):
            out[:, layer] = random_sets(int(codes.max()) + 1, n_experts, top_k, rng)[codes]
    elif plant == "context_words":
        words = corpus.words
        owner = words.codes // words.vocab
        word = words.codes % words.vocab
        for layer in range(n_layers):
            rank = rng.permutation(words.vocab)  # MinHash: the context word of lowest rank
            sets = random_sets(words.vocab + n_examples, n_experts, top_k, rng)
            best = np.full(n_examples, np.iinfo(np.int64).max)
            np.minimum.at(best, owner, rank[word])
            inverse = np.argsort(rank)
            chosen = np.where(best < words.vocab, inverse[best.clip(max=words.vocab - 1)], -1)
            # An example without context words gets a set of its own.
            chosen = np.where(chosen >= 0, chosen, words.vocab + np.arange(n_examples))
            out[:, layer] = sets[chosen]
    elif plant == "noise":
        pass  # drawn per routing row by the caller
    else:
        raise ValueError(f"unknown plant {plant!r}; plants: {PLANTS}")
    return out


def _plant_file(
    table: pa.Table,
    example_ids: pa.Array,
    plant: str,
    sets: np.ndarray,
    strength: float,
    n_experts: int,
    rng: np.random.Generator,
) -> pa.Table:
    experts = np.array(routing_array(table.column("experts")))
    target = _target_rows(table, example_ids)
    if len(target.rows):
        old = experts[target.rows]
        if plant == "noise":
            n, n_layers, k = old.shape
            new = random_sets(n * n_layers, n_experts, k, rng).reshape(n, n_layers, k)
        else:
            new = sets[target.example]
            apply = new[..., 0] >= 0  # [R, L]
            if plant == "sense":
                # One draw per example and layer, so all sub-tokens of a target move together.
                draw = rng.random(sets.shape[:2]) < strength
                apply &= draw[target.example]
            new = np.where(apply[..., None], new, old)
        experts[target.rows] = new.astype(experts.dtype)
    index = table.schema.get_field_index("experts")
    column = nested_fixed_list(experts, table.schema.field("experts").type.value_type.value_type)
    return table.set_column(index, table.schema.field("experts"), column)


def write_planted(
    source: Path, out: Path, plant: str, corpus: SenseCorpus, options: PlantOptions, models: list[dict]
) -> Path:
    """Write the planted copy of the atlas `source` into `out` (created; must not exist)."""
    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.writer import write_parquet_atomic

    manifest = Manifest.load(source)
    planted_models = [options.model] if plant == "sense" else [m["model_slug"] for m in models]
    out.mkdir(parents=True)
    for name in ("README.md", "LICENSE.md"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    by_slug = {m["model_slug"]: m for m in models}
    new = Manifest(files={}, builds=list(manifest.builds), corpus_counts=dict(manifest.corpus_counts))
    for i, slug in enumerate(sorted(by_slug)):
        row = by_slug[slug]
        if slug not in planted_models:
            continue
        rng = np.random.default_rng([options.seed, PLANTS.index(plant), i])
        files = [rel for rel, meta in manifest.files.items() if meta["config"] == ROUTING_PREFIX + slug]
        if not files:
            continue
        routing = pa.concat_tables([pq.read_table(source / rel) for rel in files])
        identity = target_identity(routing, corpus.example_ids, corpus.form)
        layers = np.zeros(len(row["moe_layers"]), dtype=bool)
        if plant == "sense":
            layers[[row["moe_layers"].index(layer) for layer in options.layers]] = True
        else:
            layers[:] = True
        sets = plant_sets(plant, corpus, identity, row["n_routed_experts"], row["top_k"], layers, rng)
        for rel in sorted(files):
            table = pq.read_table(source / rel)
            planted = _plant_file(
                table, corpus.example_ids, plant, sets, options.strength, row["n_routed_experts"], rng
            )
            written = write_parquet_atomic(planted, out / rel, table.schema)
            new.record(out, manifest.files[rel]["config"], written)
    for rel, meta in manifest.files.items():
        if rel not in new.files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, out / rel)
            new.files[rel] = dict(meta)
    new.builds.append(
        {
            "kind": "calibration-plant",
            "summary": f"PLANTED calibration copy ({plant}) of {source}: routing at the sense targets is planted",
            "options": {
                "plant": plant,
                "models": planted_models,
                "layers": list(options.layers) if plant == "sense" else None,
                "strength": options.strength if plant == "sense" else None,
                "seed": options.seed,
            },
        }
    )
    new.save(out)
    return out


def _block(entry: dict) -> dict:
    sp = entry["sense_pairs"]
    out = {"raw": {"delta": sp["delta"], "layer_mean": sp["layer_mean"]["delta"]}}
    for name in CONTROL_NAMES:
        control = sp["controls"].get(name)
        if control and control.get("layer_mean"):
            out[name] = {"delta": control["delta"], "layer_mean": control["layer_mean"]["delta"]}
    out["survives_layers"] = sp["survives"]["layers"]
    return out


def _contains_zero(iv: dict | None) -> bool | None:
    if not iv or iv.get("ci_low") is None or iv.get("ci_high") is None:
        return None
    return iv["ci_low"] <= 0 <= iv["ci_high"]


def judge(plant: str, original: dict, planted: dict, layers: list[int], moe_layers: list[int]) -> dict:
    """Did the controls behave as they must on this plant? (checks and their outcome)."""
    checks: dict[str, bool | None] = {}
    if plant == "sense":
        raw_new, raw_old = planted["raw"]["delta"]["estimate"], original["raw"]["delta"]["estimate"]
        elsewhere = [i for i, layer in enumerate(moe_layers) if layer not in layers]
        checks["raw Δκ unchanged at the unplanted layers"] = all(raw_new[i] == raw_old[i] for i in elsewhere)
        at = [moe_layers.index(layer) for layer in layers]
        for name in ("raw", *CONTROL_NAMES):
            if name in planted and planted[name]["delta"]:
                checks[f"{name}: CI > 0 at the planted layers"] = all(
                    planted[name]["delta"]["ci_low"][i] > 0 for i in at
                )
        checks["survives at exactly the planted layers"] = planted["survives_layers"] == sorted(layers)
    elif plant in REMOVED_BY:
        name = REMOVED_BY[plant]
        if name in planted:
            checks[f"{name}: layer-mean CI contains 0"] = _contains_zero(planted[name]["layer_mean"])
            checks[f"{name}: CI contains 0 at every layer"] = all(
                lo <= 0 <= hi
                for lo, hi in zip(
                    planted[name]["delta"]["ci_low"], planted[name]["delta"]["ci_high"], strict=True
                )
            )
        checks["all: layer-mean CI contains 0"] = _contains_zero((planted.get("all") or {}).get("layer_mean"))
    else:
        for name in ("raw", *CONTROL_NAMES):
            if name in planted:
                checks[f"{name}: layer-mean CI contains 0"] = _contains_zero(planted[name]["layer_mean"])
    return {"checks": checks, "passed": all(v is True for v in checks.values())}


def calibrate(
    source: str | Path,
    out: str | Path,
    *,
    plants: tuple[str, ...] = PLANTS,
    plant_options: PlantOptions | None = None,
    metrics_options=None,
    cache_dir=None,
    calibration_options=None,
) -> dict:
    """Write the planted copies of the local atlas `source` into `out`, and what each control recovers; and
    the in-memory calibration summary (`calibration_options`: a `CalibrationOptions`)."""
    import hashlib

    from atlas_build.metrics.calibration.matrix import CalibrationOptions, calibration_summary
    from atlas_build.metrics.compute import MetricsOptions, compute_metrics
    from atlas_build.metrics.provenance.source import AtlasSource
    from atlas_build.metrics.report.markdown import to_json

    source, out = Path(source), Path(out)
    if not (source / "manifest.json").is_file():
        raise SourceError(f"{source} is not a local atlas directory (no manifest.json): calibrate needs one")
    if out.exists() and any(out.iterdir()):
        raise SourceError(f"{out} exists and is not empty: pass a new directory for the planted copies")
    unknown = [p for p in plants if p not in PLANTS]
    if unknown:
        raise SourceError(f"unknown plant(s) {unknown}; plants: {', '.join(PLANTS)}")
    options = plant_options or PlantOptions()
    metrics_options = metrics_options or MetricsOptions()
    src = AtlasSource(source, cache_dir=cache_dir)
    models = src.models()
    slugs = [m["model_slug"] for m in models]
    options.model = options.model or (slugs[0] if slugs else None)
    if options.model not in slugs:
        raise SourceError(f"unknown model slug {options.model!r}; the atlas has: {slugs or 'none'}")
    row = next(m for m in models if m["model_slug"] == options.model)
    moe_layers = list(row["moe_layers"])
    if options.layers is None:
        options.layers = tuple(moe_layers[1::2] or moe_layers[:1])
    bad = [layer for layer in options.layers if layer not in moe_layers]
    if bad:
        raise SourceError(f"layer(s) {bad} are not MoE layers of {options.model}: {moe_layers}")
    if not 0 < options.strength <= 1:
        raise SourceError(f"--strength must be in (0, 1], got {options.strength}")
    senses, pairs = src.table(SENSES), src.table("sense-pairs")
    if senses is None or pairs is None or not pairs.num_rows:
        raise SourceError(f"{source} has no sense pairs: nothing to calibrate")
    corpus = load_sense_corpus(senses, pairs)

    def measure(root: Path) -> dict:
        result = compute_metrics(root, models=[options.model], options=metrics_options, cache_dir=cache_dir)
        return _block(to_json(result.metrics)["models"][options.model])

    out.mkdir(parents=True, exist_ok=True)
    original = measure(source)
    report = {
        "format": "routing-atlas-calibration",
        "source": str(source),
        "model": options.model,
        "options": {
            "layers": list(options.layers),
            "strength": options.strength,
            "seed": options.seed,
            **metrics_options.public(),
        },
        "original": original,
        "plants": {},
    }
    from atlas_build.metrics.compute import calibration_planter

    routing = src.routing(options.model)
    planter = calibration_planter(
        corpus, target_identity(routing, corpus.example_ids, corpus.form), routing, row, options.seed
    )
    report["summary"] = to_json(
        calibration_summary(
            planter,
            calibration_options or CalibrationOptions(seed=options.seed),
            moe_layers,
            model=options.model,
            manifest_sha256=hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest(),
        )
    )
    for plant in plants:
        root = write_planted(source, out / f"plant-{plant}", plant, corpus, options, models)
        planted = measure(root)
        report["plants"][plant] = {
            "atlas": root.name,
            **planted,
            **judge(plant, original, planted, list(options.layers), moe_layers),
        }
    (out / CALIBRATION_JSON).write_text(
        json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / CALIBRATION_MD).write_text(render_calibration(report), encoding="utf-8")
    return report


def render_calibration(report: dict) -> str:
    """`calibration.md`: per plant, the layer-mean Δκ of raw and every control, and the checks."""
    from atlas_build.metrics.calibration.report import calibration_lines
    from atlas_build.metrics.report.markdown import format_interval

    names = ["raw", *CONTROL_NAMES]
    lines = [
        f"# Calibration of the controls on `{report['source']}` (model `{report['model']}`)",
        "",
        "Planted copies of the atlas (PLANTED routing at the sense targets, not a model's): each row says what "
        "the raw Δκ and each control report on a mechanism whose truth is known. "
        f"Sense plant: layers {report['options']['layers']}, q = {report['options']['strength']}.",
        "",
        "| plant | " + " | ".join(names) + " | checks |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    rows = [("original", report["original"], None)] + [
        (name, block, block) for name, block in report["plants"].items()
    ]
    for name, block, judged in rows:
        cells = [format_interval(block[n]["layer_mean"]) if n in block else "–" for n in names]
        verdict = "–" if judged is None else ("pass" if judged["passed"] else "FAIL")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    for name, block in report["plants"].items():
        lines += ["", f"## {name}", ""]
        lines += [
            f"- {'pass' if ok else 'FAIL' if ok is False else 'n/a'}: {check}"
            for check, ok in block["checks"].items()
        ]
    lines += calibration_lines(report.get("summary"))
    return "\n".join(lines) + "\n"
