"""`atlas audit`: re-route a seeded sample of an atlas's texts with the model and compare with the rows.

Structural checks cannot see routing replaced by other valid routing (ids rotated, two tokens swapped, a
shard routed by another model) nor an engine that misaligns rows with valid ids. The audit can: it routes a
sample of the atlas's plain texts (senses, substitutions, the user's corpora) again with the recorded model (or a checkpoint given), always
with the `hf` engine as the reference, and compares per token and MoE layer:

    identical set     the same top-k expert ids (the headline: "P% identical")
    identical order   ... in the same order (highest weight first)
    weights close     ... and weights within the tolerance of the storage and compute dtypes

A text whose tokens differ counts every one of its token-layers as mismatched. The mismatch rate gets an exact
(Clopper-Pearson) 95% confidence interval; the audit passes when the share of identical sets reaches the
threshold. The result is appended to manifest.json's `audits` (tied to the routing files by `data_sha256`)
and shown on the card. Traces are not sampled: generated tokens were routed one at a time through the KV cache.

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

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.lock import AtlasLock
from atlas_build.atlas.manifest import Manifest, code_version, config_data_sha256, published_release
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, TEXT_CONFIGS, TEXT_ID_COLUMN, TRACES
from atlas_build.atlas.store import read_config
from atlas_build.audit.router_inputs import with_router_input_check
from atlas_build.errors import AtlasError

DEFAULT_SAMPLE = 200
DEFAULT_THRESHOLD = 1.0  # same model, same engine, same hardware: every set identical
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

    @property
    def identical_share(self) -> float:
        return self.identical_sets / self.token_layers if self.token_layers else 0.0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"routing audited on {self.tokens} tokens ({self.texts} texts, {self.token_layers} token-layers) "
            f"against {self.model}: {100 * self.identical_share:.2f}% identical expert sets, "
            f"{100 * self.identical_order / max(self.token_layers, 1):.2f}% identical order"
            + (
                f", {100 * self.weights_close / max(self.token_layers, 1):.2f}% weights within rtol "
                f"{self.weight_rtol:g}"
                if self.weights_close is not None
                else ""
            )
            + f"; mismatch rate {100 * self.mismatch_rate:.3f}% (95% exact CI "
            f"{100 * self.mismatch_low:.3f}%-{100 * self.mismatch_upper:.3f}%)"
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


def sample_texts(
    root: Path, manifest: Manifest, config: str, n: int, seed: int
) -> list[tuple[str, str, str]]:
    """A seeded sample of `n` routed plain texts: (corpus, source_id, text), in id order."""
    keys = set()
    for rel in manifest.config_files(config):
        table = pq.read_table(Path(root) / rel, columns=["corpus", "source_id"])
        keys.update(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    texts: dict[tuple[str, str], str] = {}
    for corpus in AUDITED_CORPORA:
        table = read_config(root, manifest, corpus)
        ids = table.column(TEXT_ID_COLUMN[corpus]).to_pylist()
        texts.update(((corpus, i), t) for i, t in zip(ids, table.column("text").to_pylist(), strict=True))
    candidates = sorted(key for key in keys if key in texts)
    if not candidates:
        raise AuditError(
            f"{config} routes no senses or substitutions text that the atlas holds: nothing to audit"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False))
    return [(*candidates[i], texts[candidates[i]]) for i in chosen]


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
    same_order = (a == b).all(axis=2)
    tally.token_layers += same_set.size
    tally.identical_sets += int(same_set.sum())
    tally.identical_order += int(same_order.sum())
    close = same_order
    if atlas["weights"] is not None and fresh["weights"] is not None:
        stored_dtype = atlas["weights"].dtype
        close = same_order & np.isclose(
            atlas["weights"],
            fresh["weights"].astype(stored_dtype).astype(np.float32),
            rtol=rtol,
            atol=rtol * scale,
        ).all(axis=2)
        tally.weights_close += int(close.sum())
    bad = np.argwhere(~same_set) if not same_set.all() else np.argwhere(~close)
    for token, layer in bad[: MAX_MISMATCHES_SHOWN - len(tally.mismatches)]:
        what = (
            "expert set"
            if not same_set[token, layer]
            else ("order" if not same_order[token, layer] else "weights")
        )
        detail = f"atlas {a[token, layer].tolist()}, model {b[token, layer].tolist()}"
        if what == "weights":
            detail = (
                f"atlas weights {np.round(atlas['weights'][token, layer], 4).tolist()}, "
                f"model {np.round(fresh['weights'][token, layer], 4).tolist()}"
            )
        tally.note(
            f"{where} token {token} {fresh['token'][token]!r} decoder layer {layers[layer]}: {what} differs "
            f"({detail})"
        )


def _engine_for(row: dict, builds: list[dict], model: str | None, device: str, batch_size: int):
    """The reference engine: hf, the recorded model (a random-init twin rebuilt from its seed) or `model`."""
    from atlas_build.engines import ENGINES

    engine_cls = ENGINES.get("hf")
    dtype = row.get("dtype") if row.get("dtype") in ("float32", "bfloat16", "float16") else "auto"
    if model is not None:
        return engine_cls(model, dtype=dtype, device=device, batch_size=batch_size), model
    twin = bool(((builds[-1] if builds else {}).get("engine") or {}).get("random_init"))
    recorded = row["model_id"] + (f"@{row['revision']}" if row.get("revision") else "")
    engine = engine_cls(
        row["model_id"],
        revision=row.get("revision"),
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        random_init=twin,
        seed=int(row.get("seed") or 0),
    )
    return engine, recorded


def audit_atlas(
    root: Path,
    *,
    model: str | None = None,
    slug: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
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
        record: append the result to manifest.json and render the card again (never in a published release).

    Raises:
        AuditError: nothing to audit as asked. ModelLoadError: the model cannot be loaded.
    """
    root = Path(root)
    if sample < 1:
        raise AuditError(f"--sample must be at least 1, got {sample}")
    if not 0.0 <= threshold <= 1.0:
        raise AuditError(f"--threshold must lie in [0, 1], got {threshold}")
    manifest = Manifest.load(root)
    config = choose_config(root, manifest, slug)
    model_slug = config[len(ROUTING_PREFIX) :]
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
                    float(row["routed_scaling_factor"]),
                )
    finally:
        engine.close()
    recorded_sha = row.get("checkpoint_sha256")
    audited_sha = fresh_row.get("checkpoint_sha256")
    mismatched = tally.token_layers - tally.identical_sets
    low, high = clopper_pearson(mismatched, tally.token_layers)
    weights_stored = row.get("weights_dtype") is not None
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
        passed=tally.token_layers > 0 and tally.identical_sets / tally.token_layers >= threshold,
        first_mismatches=tally.mismatches,
        data_sha256=config_data_sha256(manifest, config),
        audited=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
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
