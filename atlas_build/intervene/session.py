"""`atlas intervene`: check the plan against the atlas and its model, run it, record the `interventions` config.

Everything that can be refused is refused before the model loads or anything is written: a plan naming a
layer, expert, lemma or sense the model or atlas lacks; an atlas without a routed model; a plan recorded
under its name with another hash (edited after its results were recorded); and, once loaded, a checkpoint
whose hash differs from the atlas's models row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.lock import AtlasLock
from atlas_build.atlas.manifest import Manifest, code_version, refuse_published_release
from atlas_build.atlas.schema import (
    INTERVENTIONS,
    INTERVENTIONS_SCHEMA,
    JSONL_EXAMPLES,
    JSONL_PAIRS,
    SENSE_PAIRS,
    SENSES,
    WIC_EXAMPLES,
    WIC_PAIRS,
)
from atlas_build.atlas.store import read_config, write_config
from atlas_build.intervene.examples import (
    InterveneError,
    expert_load,
    labelled_examples,
    routing_config,
    target_routing,
)
from atlas_build.intervene.outcomes import OUTCOMES, probe_margins, summarise, text_outcomes
from atlas_build.intervene.plan import Plan, check_against, load_plan, propose
from atlas_build.intervene.run import CLEAN, REROUTE, Condition, Intervener, donor_set, load_matched
from atlas_build.routers.selection import refuse_reroute, rule_for

# Pair configs and the examples config their example ids point into.
PAIR_CONFIGS = ((SENSE_PAIRS, SENSES), (WIC_PAIRS, WIC_EXAMPLES), (JSONL_PAIRS, JSONL_EXAMPLES))


@dataclass
class InterventionResult:
    plan: Plan
    config: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    random_init: bool = False
    forwards: int = 0
    recorded: bool = False


def recorded_plan_hash(root: Path, manifest: Manifest, name: str) -> str | None:
    table = read_config(root, manifest, INTERVENTIONS)
    hashes = {
        r["plan_sha256"]
        for r in table.select(["plan_name", "plan_sha256"]).to_pylist()
        if r["plan_name"] == name
    }
    return next(iter(hashes)) if hashes else None


def _engine(row: dict, manifest: Manifest, model: str | None, device: str, batch_size: int):
    """The hf engine of the recorded model (its random-init twin rebuilt from the seed), or of `model`."""
    from atlas_build.engines.base import ModelLoadError
    from atlas_build.engines.recorded import recorded_engine

    builds = [b for b in manifest.builds if b.get("model_slug") == row["model_slug"]]
    twin = bool(((builds[-1] if builds else {}).get("engine") or {}).get("random_init")) or bool(
        row.get("random_init")
    )
    try:
        engine, _ = recorded_engine(row, model, device, batch_size, random_init=twin)
    except ModelLoadError as error:
        if model is not None:
            raise
        raise InterveneError(
            f"the atlas's model {row['model_id']!r} cannot be loaded ({error}); pass --model with the checkpoint "
            "that built it"
        ) from None
    return engine, model if model is not None else row["model_id"]


def intervene_atlas(
    root: Path,
    plan_path: Path,
    *,
    model: str | None = None,
    slug: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    record: bool = True,
    log: Callable[[str], None] = print,
) -> InterventionResult:
    """Run `plan_path` on the atlas at `root` (see the module docstring) and record it unless `record` is False.

    Raises:
        InterveneError: the plan, atlas or model cannot serve (one line). ModelLoadError: the model cannot load.
    """
    root = Path(root)
    manifest = Manifest.load(root)
    if record:
        refuse_published_release(root, "recording interventions")
    config, row = routing_config(root, manifest, slug)
    plan = load_plan(plan_path)
    examples = labelled_examples(root, manifest, config)
    if not examples:
        raise InterveneError(
            f"{config} routes no labelled text (lemma, sense and target): nothing to intervene on"
        )
    check_against(plan, row, examples)
    earlier = recorded_plan_hash(root, manifest, plan.name)
    if earlier is not None and earlier != plan.sha256:
        raise InterveneError(
            f"plan {plan.name!r} was recorded with sha256 {earlier[:12]}..., {plan_path} hashes to "
            f"{plan.sha256[:12]}...: it was edited after its results were recorded; give it a new name"
        )
    engine, model_name = _engine(row, manifest, model, device, batch_size)
    try:
        fresh = engine.model_row()
        if (
            list(fresh["moe_layers"]) != list(row["moe_layers"])
            or fresh["n_routed_experts"] != row["n_routed_experts"]
        ):
            raise InterveneError(f"{model_name} is not the model of {config} (other MoE layers or experts)")
        recorded_sha, fresh_sha = row.get("checkpoint_sha256"), fresh.get("checkpoint_sha256")
        if recorded_sha and fresh_sha and recorded_sha != fresh_sha:
            raise InterveneError(
                f"the checkpoint of {model_name} hashes to {fresh_sha[:12]}..., {config} was routed by "
                f"{recorded_sha[:12]}...: not the atlas's model (pass the checkpoint that built it)"
            )
        # Refused before any forward: a family without a choice rule, a re-routing ablation at a hash layer.
        rule_for(engine.adapter)
        if plan.ablation == REROUTE:
            for h in plan.hypotheses:
                if "ablate" in h.interventions:
                    refuse_reroute(engine.adapter, engine.spec, h.layer, h.experts)
        tokenizer = engine.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        intervener = Intervener(
            engine.detach_model(), engine.adapter, engine.spec, engine.encode, engine.device, pad, batch_size
        )
    except BaseException:
        engine.close()
        raise
    result = InterventionResult(plan=plan, config=config, random_init=bool(row.get("random_init")))
    if result.random_init:
        log(f"{config} is RANDOM-INIT: its interventions are a null model (no hypothesis should survive)")
    load = expert_load(root, manifest, config, int(row["n_routed_experts"]))
    recorded = target_routing(root, manifest, config)
    try:
        rows = _run(plan, intervener, examples, recorded, load, log)
    finally:
        intervener.close()
    result.forwards = intervener.forwards
    stamp = {
        "plan_name": plan.name,
        "plan_sha256": plan.sha256,
        "model_slug": row["model_slug"],
        "model_id": fresh["model_id"],
        "checkpoint_sha256": fresh.get("checkpoint_sha256"),
        "random_init": bool(row.get("random_init")),
        "seed": plan.seed,
        "engine": "hf",
        "device": str(device),
        "dtype": str(row.get("dtype")),
        "code_version": code_version(),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result.rows = [{**r, **stamp} for r in rows]
    _verdicts(result)
    if record:
        _record(root, result)
        result.recorded = True
    return result


def _run(plan: Plan, intervener: Intervener, examples, recorded, load, log) -> list[dict[str, Any]]:
    lemmas = {e.lemma for h in plan.hypotheses for e in h.population(examples)}
    # Every text of the lemmas tested: the sense probe's centroids are the clean states of all of them.
    base_texts = [e for e in examples if e.lemma in lemmas]
    encoded = intervener.prepare(base_texts)
    log(f"clean forward of {len(base_texts)} texts")
    clean = dict(
        zip(
            [e.key for e in base_texts],
            intervener.run([(encoded[e.key], CLEAN) for e in base_texts]),
            strict=True,
        )
    )
    tests = sum(len(h.interventions) for h in plan.hypotheses)
    alpha = plan.alpha / tests
    rows = []
    for hi, h in enumerate(plan.hypotheses):
        population = [e for e in h.population(examples) if len(encoded[e.key].targets)]
        if plan.max_texts is not None and len(population) > plan.max_texts:
            # A seeded sample, fixed by the plan (its seed and max_texts), in the atlas's order.
            keep = np.random.default_rng([plan.seed, hi]).choice(
                len(population), plan.max_texts, replace=False
            )
            population = [population[i] for i in sorted(keep)]
        slot = intervener.slot_of[h.layer]
        for ii, kind in enumerate(h.interventions):
            rng = np.random.default_rng([plan.seed, hi, ii])
            forced_set, donor = None, None
            if kind == "ablate":
                draws = [load_matched(load[slot], h.experts, rng) for _ in range(plan.baseline_draws)]
                conditions = [Condition(excluded={slot: e}, mode=plan.ablation) for e in [h.experts, *draws]]
                hyp_load = float(load[slot, list(h.experts)].mean())
            else:
                donor = h.donor_sense or _other_sense(examples, h.lemma, h.sense)
                forced_set = donor_set(
                    recorded, [e for e in examples if e.lemma == h.lemma and e.sense == donor], slot
                )
                if forced_set is None:
                    raise InterveneError(
                        f"hypothesis {h.id!r}: no recorded routing of sense {donor!r} to transplant"
                    )
                draws = [load_matched(load[slot], forced_set, rng) for _ in range(plan.baseline_draws)]
                conditions = [Condition(forced={slot: e}) for e in [forced_set, *draws]]
                hyp_load = float(load[slot, list(forced_set)].mean())
            base_load = float(np.mean([load[slot, list(d)].mean() for d in draws]))
            log(f"{h.id} {kind}: {len(population)} texts x {len(conditions)} conditions")
            hits = intervener.run([(encoded[e.key], c) for c in conditions for e in population])
            deltas = _deltas(population, conditions, hits, clean, encoded, base_texts, slot)
            boot_rng = np.random.default_rng([plan.seed, hi, ii, 1])
            for outcome in OUTCOMES:
                stats = summarise(
                    outcome,
                    deltas[outcome][0],
                    deltas[outcome][1:],
                    [e.lemma for e in population],
                    plan.bootstrap,
                    alpha,
                    boot_rng,
                )
                if stats is None:
                    continue
                rows.append(
                    {
                        "hypothesis_id": h.id,
                        "claim": h.claim,
                        "lemma": h.lemma,
                        "sense": h.sense,
                        "layer": h.layer,
                        "experts": list(h.experts),
                        "intervention": kind,
                        "ablation": plan.ablation if kind == "ablate" else None,
                        "donor_sense": donor,
                        "forced_experts": list(forced_set) if forced_set else None,
                        "primary": outcome == h.primary_outcome,
                        "baseline_draws": plan.baseline_draws,
                        "hypothesis_load": hyp_load,
                        "baseline_load": base_load,
                        "alpha": alpha,
                        **{k: v for k, v in vars(stats).items()},
                    }
                )
    return rows


def _other_sense(examples, lemma: str, sense: str) -> str:
    counts = Counter(e.sense for e in examples if e.lemma == lemma and e.sense != sense)
    if not counts:
        raise InterveneError(
            f"lemma {lemma!r} has no sense but {sense!r} in the atlas: nothing to transplant"
        )
    best = max(counts.values())
    return min(s for s, c in counts.items() if c == best)


def _deltas(population, conditions, hits, clean, encoded, base_texts, slot) -> dict[str, np.ndarray]:
    """outcome -> `[conditions, texts]` changes (intervened minus clean)."""
    n = len(population)
    out = {name: np.full((len(conditions), n), np.nan) for name in OUTCOMES}
    for c in range(len(conditions)):
        for i, e in enumerate(population):
            for name, value in text_outcomes(
                clean[e.key], hits[c * n + i], encoded[e.key].targets, slot
            ).items():
                out[name][c, i] = value
    by_lemma: dict[str, list[int]] = {}
    for i, e in enumerate(population):
        by_lemma.setdefault(e.lemma, []).append(i)
    for lemma, members in by_lemma.items():
        texts = [e for e in base_texts if e.lemma == lemma]
        position = {e.key: j for j, e in enumerate(texts)}
        states = np.stack([clean[e.key].hidden for e in texts])
        senses = [e.sense for e in texts]
        own = np.array([position[population[i].key] for i in members])
        before = probe_margins(states[own], senses, own, states)
        for c in range(len(conditions)):
            after = probe_margins(np.stack([hits[c * n + i].hidden for i in members]), senses, own, states)
            out["sense_probe"][c, members] = after - before
    return out


def _verdicts(result: InterventionResult) -> None:
    survivors = set()
    for r in result.rows:
        if r["primary"] and r["survives"]:
            survivors.add(r["hypothesis_id"])
    for r in result.rows:
        r["hypothesis_survives"] = r["hypothesis_id"] in survivors
    for h in result.plan.hypotheses:
        primary = [r for r in result.rows if r["hypothesis_id"] == h.id and r["primary"]]
        parts = [
            f"{r['intervention']}{'/' + r['ablation'] if r['ablation'] else ''}: {r['outcome']} "
            f"{r['effect']:+.3f} [95% CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}] vs random {r['baseline_mean']:+.3f}"
            f" (p={r['p_value']:.3f}, alpha {r['alpha']:.3g})"
            for r in primary
        ]
        verdict = "SURVIVES" if h.id in survivors else "does not survive"
        result.verdicts.append(
            f"{h.id}: {verdict}; " + ("; ".join(parts) or "no text has its primary outcome")
        )
    result.survivors = sorted(survivors)


def _record(root: Path, result: InterventionResult) -> None:
    """Replace the plan's rows in `interventions` (other plans' rows kept), under the atlas lock."""
    from dataset_cards.render import recorded_context, write_card

    with AtlasLock(root):
        manifest = Manifest.load(root)
        earlier = recorded_plan_hash(root, manifest, result.plan.name)
        if earlier is not None and earlier != result.plan.sha256:
            raise InterveneError(
                f"plan {result.plan.name!r} was recorded with another hash while this one ran"
            )
        kept = [
            r
            for r in read_config(root, manifest, INTERVENTIONS).to_pylist()
            if r["plan_name"] != result.plan.name
        ]
        table = pa.Table.from_pylist(kept + result.rows, schema=INTERVENTIONS_SCHEMA)
        write_config(root, manifest, INTERVENTIONS, table, INTERVENTIONS_SCHEMA)
        manifest.save(root)
        card = AtlasLayout(root).card_path
        if card.exists():
            write_card(root, context=recorded_context(card.read_text(encoding="utf-8")))


def propose_plan(
    root: Path,
    *,
    name: str,
    slug: str | None = None,
    per_layer: int = 1,
    layers: list[int] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plan from the atlas's own routing (see `plan.propose`); nothing is loaded but the atlas."""
    root = Path(root)
    manifest = Manifest.load(root)
    config, row = routing_config(root, manifest, slug)
    examples = labelled_examples(root, manifest, config)
    if not examples:
        raise InterveneError(
            f"{config} routes no labelled text (lemma, sense and target): no plan to propose"
        )
    targets = target_routing(root, manifest, config)
    pairs = [
        ((corpus, r["example_a"]), (corpus, r["example_b"]), bool(r["same_sense"]))
        for pair_config, corpus in PAIR_CONFIGS
        for r in read_config(root, manifest, pair_config).to_pylist()
    ]
    return propose(name, row, examples, targets, pairs, per_layer=per_layer, layers=layers, settings=settings)
