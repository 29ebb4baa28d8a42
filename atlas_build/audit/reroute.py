"""`atlas audit`: re-route a seeded sample of an atlas's texts with the model and compare with the rows.

Structural checks cannot see routing replaced by other valid routing (ids rotated, two tokens swapped, a
shard routed by another model, experts re-sorted, weights moved or rescaled) nor an engine that misaligns
rows with valid ids. The audit can: it routes a sample of the texts of the corpus configs the model routed
(senses, substitutions, the user's corpora; a text without routing rows is a mismatch, so deleting a text's
rows cannot hide) again with the recorded model (or a checkpoint given), always with the `hf` engine as the
reference, and compares per token and MoE layer three parts (atlas/audits.py):

    sets      the same top-k expert ids (the headline: "P% identical")
    order     ... in the same order (highest weight first; a tie within the compute dtype's tolerance may
              come in either order)
    weights   each expert's weight within the tolerance of the storage and compute dtypes

A text whose tokens differ counts every one of its token-layers as mismatched in every part. Each part has
its own threshold and an exact (Clopper-Pearson) 95% confidence interval on its mismatch rate; the audit
passes when every part passes. The result is appended to manifest.json's `audits` (tied to the routing files
by `data_sha256`, hashed by `record_sha256`) and shown on the card. Traces are not sampled: generated tokens
were routed one at a time through the KV cache.

Stands above the engines (floor 4, beside build and publish); nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.audits import PART_NAMES, PARTS, record_sha256
from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.lock import AtlasLock
from atlas_build.atlas.manifest import Manifest, code_version, config_data_sha256, published_release
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.rows import RowsMismatchError, refuse_unverified
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, TEXT_CONFIGS, TEXT_ID_COLUMN, TRACES
from atlas_build.atlas.store import read_config
from atlas_build.atlas.texts import routed_text_configs
from atlas_build.audit.router_inputs import with_router_input_check
from atlas_build.errors import AtlasError

DEFAULT_SAMPLE = 200
DEFAULT_THRESHOLD = 1.0  # same model, same engine, same hardware: every set identical
# Order and weights: the same (ties and dtype rounding are already tolerated in the comparison itself).
DEFAULT_ORDER_THRESHOLD = 1.0
DEFAULT_WEIGHTS_THRESHOLD = 1.0
CONFIDENCE = 0.95
# Plain texts, routed in one prefill (senses, substitutions, the user's corpora); not traces.
AUDITED_CORPORA = tuple(config for config in TEXT_CONFIGS if config != TRACES)
# Relative tolerance of one weight: two units in the last place of the storage dtype, or the compute dtype's.
WEIGHT_RTOL = {"float32": 1e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}
DEFAULT_WEIGHT_RTOL = 2.0**-7
MAX_MISMATCHES_SHOWN = 5
ROUTE_CHUNK = 64  # texts per engine call: bounds the memory of one call


class AuditError(AtlasError):
    """The audit cannot run as asked (no such config, several models and no --slug, no texts)."""


@dataclass
class AuditResult:
    """One audit of one routing config (the manifest's `audits[]` entry is `to_record()`)."""

    config: str
    model: str
    against_recorded: bool  # the model of the models row (not a checkpoint the user gave)
    checkpoint_sha256: str | None
    checkpoint_matches: bool | None  # the audited checkpoint's hash equals the recorded one (None: unknown)
    dtype: str
    seed: int
    sample: int
    texts: int
    tokens: int
    token_layers: int
    identical_sets: int
    identical_order: int
    weights_close: int | None  # None: the atlas stores ids only
    texts_with_other_tokens: int
    mismatch_rate: float
    mismatch_low: float
    mismatch_upper: float
    threshold: float
    weight_rtol: float
    passed: bool
    first_mismatches: list[str] = field(default_factory=list)
    data_sha256: str = ""
    engine: str = "hf"
    audited: str = ""
    code_version: str = ""
    order_threshold: float = DEFAULT_ORDER_THRESHOLD
    weights_threshold: float = DEFAULT_WEIGHTS_THRESHOLD
    # part -> {checked, agree, trials, share, mismatch_low, mismatch_upper, threshold, passed} (atlas/audits.py)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed_parts: list[str] = field(default_factory=list)
    record_sha256: str = ""

    @property
    def identical_share(self) -> float:
        return self.identical_sets / self.token_layers if self.token_layers else 0.0

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["record_sha256"] = record_sha256(record)
        return record

    def summary(self) -> str:
        lines = []
        for name in PARTS:
            part = self.parts.get(name) or {}
            if not part.get("checked", True):
                lines.append(f"{PART_NAMES[name]}: not checked (the atlas stores expert ids only)")
                continue
            lines.append(
                f"{100 * part['share']:.2f}% {PART_NAMES[name]}"
                + (f" (rtol {self.weight_rtol:g})" if name == "weights" else "")
                + f", mismatch rate 95% exact CI {100 * part['mismatch_low']:.3f}%-"
                f"{100 * part['mismatch_upper']:.3f}%, threshold {100 * part['threshold']:.2f}%: "
                + ("passed" if part["passed"] else "FAILED")
            )
        return (
            f"routing audited on {self.tokens} tokens ({self.texts} texts, {self.token_layers} token-layers) "
            f"against {self.model}: " + "; ".join(lines)
        )


def clopper_pearson(failures: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate (scipy's Clopper-Pearson)."""
    if trials <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    interval = binomtest(failures, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def choose_config(root: Path, manifest: Manifest, slug: str | None) -> str:
    routed = sorted(c for c in manifest.configs() if c.startswith(ROUTING_PREFIX))
    if slug:
        config = ROUTING_PREFIX + slug
        if config not in routed:
            raise AuditError(f"{root} has no {config}; its routed models: {', '.join(routed) or 'none'}")
        return config
    if not routed:
        raise AuditError(f"{root} has no routing config to audit: build one with `atlas build`")
    if len(routed) > 1:
        raise AuditError(
            f"{root} has {len(routed)} routed models ({', '.join(routed)}): pass --slug to choose the one to audit"
        )
    return routed[0]


def audited_corpora(manifest: Manifest, config: str) -> list[str]:
    """The plain-text corpus configs the model of `config` routed (its `builds[]` records), traces left out;
    every plain-text config of the atlas when no build of that model is recorded."""
    slug = config[len(ROUTING_PREFIX) :]
    routed = [c for c in routed_text_configs(manifest.builds, slug) if c in AUDITED_CORPORA]
    if routed or any(b.get("model_slug") == slug for b in manifest.builds if isinstance(b, dict)):
        return routed
    return [c for c in AUDITED_CORPORA if c in manifest.configs()]


def sample_texts(
    root: Path, manifest: Manifest, config: str, n: int, seed: int
) -> list[tuple[str, str, str]]:
    """A seeded sample of `n` texts of the corpus configs the model routed: (corpus, source_id, text), in id
    order. Drawn from the corpus configs, not from the routing rows: a text whose rows were deleted is drawn
    as often as any other, and fails the audit."""
    texts: dict[tuple[str, str], str] = {}
    for corpus in audited_corpora(manifest, config):
        if corpus not in manifest.configs():
            continue
        table = read_config(root, manifest, corpus)
        ids = table.column(TEXT_ID_COLUMN[corpus]).to_pylist()
        texts.update(((corpus, i), t) for i, t in zip(ids, table.column("text").to_pylist(), strict=True))
    candidates = sorted(texts)
    if not candidates:
        raise AuditError(
            f"{config} routes no senses, substitutions or user corpus text that the atlas holds: nothing to audit"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False))
    return [(*candidates[i], texts[candidates[i]]) for i in chosen]


def check_files(root: Path, manifest: Manifest, configs: list[str]) -> None:
    """One line, not a traceback, when a file the audit reads is missing, empty, truncated or unreadable, or
    when a config folder holds a Parquet file the manifest does not list (a phantom shard).

    Raises:
        AuditError: naming the file and the way out (`atlas verify`).
    """
    root = Path(root)
    way_out = f"run `atlas verify {root}` and rebuild or restore it; nothing was audited"
    for config in configs:
        listed = set(manifest.config_files(config))
        for rel in sorted(listed):
            path = root / rel
            entry = manifest.files[rel]
            if not path.is_file():
                raise AuditError(f"{rel} is listed in manifest.json but missing from {root}: {way_out}")
            size = path.stat().st_size
            if size == 0:
                raise AuditError(
                    f"{rel} is empty (0 bytes, manifest.json says {entry.get('bytes')}): {way_out}"
                )
            if entry.get("bytes") is not None and size != entry.get("bytes"):
                raise AuditError(
                    f"{rel} has {size} bytes, manifest.json says {entry.get('bytes')} (truncated or replaced): "
                    f"{way_out}"
                )
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                raise AuditError(f"{rel} is not a readable Parquet file ({error}): {way_out}") from error
        folders = {Path(rel).parent for rel in listed}
        for folder in sorted(folders):
            for path in sorted((root / folder).glob("*.parquet")):
                rel = path.relative_to(root).as_posix()
                if rel not in listed:
                    raise AuditError(
                        f"{rel} lies in {folder.as_posix()}/ but manifest.json does not list it (a phantom file): "
                        f"{way_out}"
                    )


def atlas_rows(root: Path, manifest: Manifest, config: str, keys: list[tuple[str, str]]) -> dict:
    """(corpus, source_id) -> its routing rows (token_id, token, experts `[n, L, k]`, weights or None), in
    token_index order."""
    wanted = pa.array(sorted({source for _, source in keys}), pa.string())
    columns = ["source_id", "corpus", "token_index", "token_id", "token", "experts", "weights"]
    parts = []
    for rel in manifest.config_files(config):
        table = pq.read_table(Path(root) / rel, columns=columns)
        parts.append(table.filter(pc.is_in(table.column("source_id"), value_set=wanted)))
    table = pa.concat_tables(parts).sort_by(
        [("corpus", "ascending"), ("source_id", "ascending"), ("token_index", "ascending")]
    )
    out: dict[tuple[str, str], dict] = {}
    if table.num_rows == 0:
        return out
    corpus, source = table.column("corpus").to_pylist(), table.column("source_id").to_pylist()
    experts = routing_array(table.column("experts"))
    weights_col = table.column("weights")
    weights = None if weights_col.null_count == table.num_rows else routing_array(weights_col, np.float32)
    token_ids = table.column("token_id").to_numpy()
    tokens = table.column("token").to_pylist()
    start = 0
    for i in range(1, len(source) + 1):
        if i == len(source) or (corpus[i], source[i]) != (corpus[start], source[start]):
            out[(corpus[start], source[start])] = {
                "token_id": token_ids[start:i],
                "token": tokens[start:i],
                "experts": experts[start:i],
                "weights": None if weights is None else weights[start:i],
            }
            start = i
    return out


class _Tally:
    """Running counts of one audit, and its first mismatches (their descriptions)."""

    COUNTS = (
        "texts",
        "tokens",
        "token_layers",
        "identical_sets",
        "identical_order",
        "weights_close",
        "other_tokens",
    )

    def __init__(self):
        for name in self.COUNTS:
            setattr(self, name, 0)
        self.mismatches: list[str] = []

    def note(self, line: str) -> None:
        if len(self.mismatches) < MAX_MISMATCHES_SHOWN:
            self.mismatches.append(line)


def compare_text(
    tally: _Tally,
    key: tuple[str, str],
    atlas: dict | None,
    fresh: dict,
    layers: list[int],
    rtol: float,
    scale: float,
) -> None:
    """Add one text's comparison to `tally`. `fresh`: token_id `[n]`, token, experts `[n, L, k]`, weights."""
    where = f"{key[0]}:{key[1]}"
    n_layers = fresh["experts"].shape[1]
    tally.texts += 1
    tally.tokens += len(fresh["token_id"])
    if (
        atlas is None
        or len(atlas["token_id"]) != len(fresh["token_id"])
        or not np.array_equal(atlas["token_id"], fresh["token_id"])
    ):
        have = 0 if atlas is None else len(atlas["token_id"])
        tally.token_layers += max(have, len(fresh["token_id"])) * n_layers
        tally.other_tokens += 1
        tally.note(
            f"{where}: the atlas has {have} tokens, the model's tokenizer gives {len(fresh['token_id'])} other ones"
        )
        return
    a, b = atlas["experts"].astype(np.int64), fresh["experts"].astype(np.int64)
    same_set = (np.sort(a, axis=2) == np.sort(b, axis=2)).all(axis=2)  # [n, L]
    same_order = same_set & (a == b).all(axis=2)
    tally.token_layers += same_set.size
    tally.identical_sets += int(same_set.sum())
    close = None
    fw = fresh["weights"]
    if fw is not None:
        fw = np.asarray(fw, dtype=np.float32)
        # The model's weight of each expert the atlas put at position j (meaningful where the sets agree).
        rank_a = np.argsort(np.argsort(a, axis=2, kind="stable"), axis=2, kind="stable")
        fw_by_id = np.take_along_axis(fw, np.argsort(b, axis=2, kind="stable"), axis=2)
        fw_in_a_order = np.take_along_axis(fw_by_id, rank_a, axis=2)
        # A swap of two experts whose weights tie (within the compute dtype's tolerance) is no difference.
        tie_order = np.isclose(fw_in_a_order, fw, rtol=rtol, atol=rtol * scale).all(axis=2)
        same_order = same_order | (same_set & tie_order)
        if atlas["weights"] is not None:
            stored = np.asarray(atlas["weights"])
            close = same_set & np.isclose(
                stored.astype(np.float32),
                fw_in_a_order.astype(stored.dtype).astype(np.float32),
                rtol=rtol,
                atol=rtol * scale,
            ).all(axis=2)
            tally.weights_close += int(close.sum())
    tally.identical_order += int(same_order.sum())
    ok = same_order if close is None else same_order & close
    for token, layer in np.argwhere(~ok)[: max(MAX_MISMATCHES_SHOWN - len(tally.mismatches), 0)]:
        what = (
            "expert set"
            if not same_set[token, layer]
            else ("order" if not same_order[token, layer] else "weights")
        )
        detail = f"atlas {a[token, layer].tolist()}, model {b[token, layer].tolist()}"
        if what == "weights":
            detail = (
                f"atlas weights {np.round(atlas['weights'][token, layer].astype(np.float64), 4).tolist()}, "
                f"model {np.round(fw_in_a_order[token, layer].astype(np.float64), 4).tolist()}"
            )
        tally.note(
            f"{where} token {token} {fresh['token'][token]!r} decoder layer {layers[layer]}: {what} differs "
            f"({detail})"
        )


def part_verdict(agree: int, trials: int, threshold: float, checked: bool = True) -> dict[str, Any]:
    """One part's record: its counts, share, exact 95% interval on its mismatch rate and verdict."""
    if not checked:
        return {"checked": False, "agree": None, "trials": trials, "threshold": threshold, "passed": True}
    low, high = clopper_pearson(trials - agree, trials)
    return {
        "checked": True,
        "agree": agree,
        "trials": trials,
        "share": agree / trials if trials else 0.0,
        "mismatch_low": low,
        "mismatch_upper": high,
        "threshold": threshold,
        "passed": trials > 0 and agree / trials >= threshold,
    }


def _engine_for(row: dict, builds: list[dict], model: str | None, device: str, batch_size: int):
    """The reference engine: hf, the recorded model (a random-init twin rebuilt from its seed) or `model`."""
    from atlas_build.engines.recorded import recorded_engine

    twin = bool(((builds[-1] if builds else {}).get("engine") or {}).get("random_init"))
    return recorded_engine(row, model, device, batch_size, random_init=twin)


def audit_atlas(
    root: Path,
    *,
    model: str | None = None,
    slug: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    order_threshold: float = DEFAULT_ORDER_THRESHOLD,
    weights_threshold: float = DEFAULT_WEIGHTS_THRESHOLD,
    device: str = "cpu",
    batch_size: int = 8,
    record: bool = True,
    log: Callable[[str], None] = print,
) -> AuditResult:
    """Audit one routing config of the atlas at `root` (see the module docstring).

    Args:
        root: the atlas directory.
        model: a checkpoint to audit against (default: the models row's model, revision and seed).
        slug: which routing config, when the atlas has several.
        sample: texts to re-route (all of them when the atlas has fewer).
        seed: seed of the sample.
        threshold: least share of identical expert sets that passes.
        order_threshold: least share of token-layers in identical order (ties tolerated) that passes.
        weights_threshold: least share of token-layers whose weights agree within tolerance that passes.
        record: append the result to manifest.json and render the card again (never in a published release).

    Raises:
        AuditError: nothing to audit as asked. ModelLoadError: the model cannot be loaded.
    """
    root = Path(root)
    if sample < 1:
        raise AuditError(f"--sample must be at least 1, got {sample}")
    for option, value in (
        ("--threshold", threshold),
        ("--order-threshold", order_threshold),
        ("--weights-threshold", weights_threshold),
    ):
        if not 0.0 <= value <= 1.0:
            raise AuditError(f"{option} must lie in [0, 1], got {value}")
    manifest = Manifest.load(root)
    config = choose_config(root, manifest, slug)
    model_slug = config[len(ROUTING_PREFIX) :]
    audited = [MODELS, config, *(c for c in audited_corpora(manifest, config))]
    check_files(root, manifest, audited)
    try:  # the audit compares the model with these files' rows: they must be the manifest's
        refuse_unverified(root, manifest.files, set(audited))
    except RowsMismatchError as error:
        raise AuditError(str(error)) from error
    rows = [r for r in read_config(root, manifest, MODELS).to_pylist() if r["model_slug"] == model_slug]
    if len(rows) != 1:
        raise AuditError(
            f"{root} has {len(rows)} models rows for {config}, expected 1: run `atlas validate {root}`"
        )
    row = rows[0]
    builds = [b for b in manifest.builds if b.get("model_slug") == model_slug]
    chosen = sample_texts(root, manifest, config, sample, seed)
    stored = atlas_rows(root, manifest, config, [(c, s) for c, s, _ in chosen])
    engine, audited_model = _engine_for(row, builds, model, device, batch_size)
    engine = with_router_input_check(engine, row, root, manifest, config, chosen, log)
    try:
        fresh_row = engine.model_row()
        layers = list(row["moe_layers"])
        if list(fresh_row["moe_layers"]) != layers or fresh_row["top_k"] != row["top_k"]:
            raise AuditError(
                f"{audited_model} has MoE layers {fresh_row['moe_layers']} and top-k {fresh_row['top_k']}, "
                f"{config} was routed with {layers} and {row['top_k']}: not the model of this config"
            )
        log(
            f"re-routing {len(chosen)} texts of {config} with {audited_model} (hf engine, {row.get('dtype')})"
        )
        rtol = max(
            WEIGHT_RTOL.get(row.get("weights_dtype") or "", 0.0),
            WEIGHT_RTOL.get(row.get("dtype"), DEFAULT_WEIGHT_RTOL),
        )
        tally = _Tally()
        scale = float(fresh_row.get("routed_scaling_factor") or row["routed_scaling_factor"])
        if fresh_row.get("routed_scaling_factor") not in (None, row["routed_scaling_factor"]):
            tally.note(
                f"the models row says routed_scaling_factor {row['routed_scaling_factor']}, {audited_model} "
                f"has {fresh_row['routed_scaling_factor']}: the stored weights are not the model's"
            )
        for start in range(0, len(chosen), ROUTE_CHUNK):
            part = chosen[start : start + ROUTE_CHUNK]
            batch = engine.route([text for _, _, text in part])
            offsets = np.concatenate([[0], np.cumsum(batch.token_counts)])
            for i, (corpus, source, _) in enumerate(part):
                lo, hi = int(offsets[i]), int(offsets[i + 1])
                fresh = {
                    "token_id": np.asarray(batch.token_ids[lo:hi], dtype=np.int64),
                    "token": batch.tokens[lo:hi],
                    "experts": batch.experts[lo:hi],
                    "weights": None if batch.weights is None else batch.weights[lo:hi],
                }
                compare_text(
                    tally,
                    (corpus, source),
                    stored.get((corpus, source)),
                    fresh,
                    layers,
                    rtol,
                    scale,
                )
    finally:
        engine.close()
    recorded_sha = row.get("checkpoint_sha256")
    audited_sha = fresh_row.get("checkpoint_sha256")
    mismatched = tally.token_layers - tally.identical_sets
    low, high = clopper_pearson(mismatched, tally.token_layers)
    weights_stored = row.get("weights_dtype") is not None
    parts = {
        "sets": part_verdict(tally.identical_sets, tally.token_layers, threshold),
        "order": part_verdict(tally.identical_order, tally.token_layers, order_threshold),
        "weights": part_verdict(tally.weights_close, tally.token_layers, weights_threshold, weights_stored),
    }
    failed = [name for name in PARTS if not parts[name]["passed"]]
    result = AuditResult(
        config=config,
        model=audited_model,
        against_recorded=model is None,
        checkpoint_sha256=audited_sha,
        checkpoint_matches=None if not (recorded_sha and audited_sha) else recorded_sha == audited_sha,
        dtype=str(row.get("dtype")),
        seed=seed,
        sample=sample,
        texts=tally.texts,
        tokens=tally.tokens,
        token_layers=tally.token_layers,
        identical_sets=tally.identical_sets,
        identical_order=tally.identical_order,
        weights_close=tally.weights_close if weights_stored else None,
        texts_with_other_tokens=tally.other_tokens,
        mismatch_rate=mismatched / tally.token_layers if tally.token_layers else 1.0,
        mismatch_low=low,
        mismatch_upper=high,
        threshold=threshold,
        weight_rtol=rtol,
        passed=not failed,
        first_mismatches=tally.mismatches,
        data_sha256=config_data_sha256(manifest, config),
        audited=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
        order_threshold=order_threshold,
        weights_threshold=weights_threshold,
        parts=parts,
        failed_parts=failed,
    )
    if record:
        _record(root, result, log)
    return result


def _record(root: Path, result: AuditResult, log: Callable[[str], None]) -> None:
    """Append the result to manifest.json and render the card again, holding the atlas lock."""
    from dataset_cards.render import recorded_context, write_card

    if published_release(root) is not None:
        log(f"{root} is a published release: the result is not recorded (a published version never changes)")
        return
    with AtlasLock(root):
        manifest = Manifest.load(root)
        if config_data_sha256(manifest, result.config) != result.data_sha256:
            raise AuditError(f"{result.config} changed while it was audited: audit it again")
        manifest.audits.append(result.to_record())
        manifest.save(root)
        card = AtlasLayout(root).card_path
        if card.exists():
            # The same context (where the card says the atlas lives) as the card had.
            write_card(root, context=recorded_context(card.read_text(encoding="utf-8")))
