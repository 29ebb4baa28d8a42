"""Checks of what the atlas *claims* about itself: the card, the random-init labels, the manifest's derived
sections and the audit records.

The data checks (`validation.corpora`, `validation.routing`) prove the rows well-formed; these prove that what
a reader is told about the rows is true:

    card-configs        the card's YAML `configs:` (and `dataset_info` split sizes) name exactly the manifest's
                        configs, each globbing exactly that config's files
    card-current        the card rendered again from the atlas (with the context it records) equals the shipped
                        one, apart from the date and the validation section
    random-init-labels  a model is random-init in its models row exactly when its build records, its
                        checkpoint's own marker, and the card (labels, tag, routing config description) say so
    manifest-derived    manifest.json's `configs` section, corpus counts and routing build records equal what
                        its file list and the data imply
    audit-records       every `atlas audit` record names a routing config of the atlas and adds up
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.audits import record_problems
from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest, config_data_sha256
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS
from validation.ledger import Ledger

ATLAS = "atlas"
RANDOM_INIT_TAG = "random-init"
# A build record's notes say "RANDOM-INIT" for a random-init model (the built-in one's CARD_NOTES).
RANDOM_INIT_NOTE = "RANDOM-INIT"

CHECKS = ("card-configs", "card-current", "random-init-labels", "manifest-derived", "audit-records")


def read_card(root: Path) -> tuple[str | None, dict | None, str | None]:
    """(card text, its YAML metadata, why the metadata is unusable) of `root/README.md`; text None: no card."""
    import yaml

    path = AtlasLayout(root).card_path
    if not path.is_file():
        return None, None, None
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return text, None, "the card has no YAML metadata block (--- ... ---)"
    block = text[4:].split("\n---\n", 1)[0]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return text, None, f"the card's YAML metadata does not parse ({first})"
    if not isinstance(data, dict):
        return text, None, "the card's YAML metadata is not a mapping"
    return text, data, None


def card_configs_problems(root: Path, manifest: Manifest, meta: dict) -> list[str]:
    """How the card's `configs:`/`dataset_info` disagree with the manifest (empty when they agree)."""
    layout = AtlasLayout(root)
    configs = manifest.configs()
    listed = meta.get("configs")
    if not isinstance(listed, list):
        return ["the card's YAML has no `configs:` list"]
    problems = []
    seen: dict[str, list[str]] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("config_name"), str):
            problems.append(f"`configs:` entry {entry!r} has no config_name")
            continue
        files = entry.get("data_files")
        patterns = []
        for item in files if isinstance(files, list) else [files]:
            path = item.get("path") if isinstance(item, dict) else item
            patterns += path if isinstance(path, list) else [path]
        seen[entry["config_name"]] = [str(p) for p in patterns if p is not None]
    for name in sorted(set(configs) - set(seen)):
        problems.append(f"{name}: in the manifest, missing from the card's `configs:`")
    for name in sorted(set(seen) - set(configs)):
        problems.append(f"{name}: in the card's `configs:`, not a config of the manifest")
    for name in sorted(set(seen) & set(configs)):
        matched = sorted(
            {rel for pattern in seen[name] for rel in manifest.files if fnmatch.fnmatch(rel, pattern)}
        )
        if matched != sorted(configs[name]["files"]) or seen[name] != [layout.data_glob(name)]:
            problems.append(
                f"{name}: the card's data_files {seen[name]} match {len(matched)} file(s) "
                f"({', '.join(matched[:2]) or 'none'}), the manifest lists {len(configs[name]['files'])} "
                f"({layout.data_glob(name)})"
            )
    infos = meta.get("dataset_info")
    for info in infos if isinstance(infos, list) else [infos] if isinstance(infos, dict) else []:
        name = info.get("config_name") if isinstance(info, dict) else None
        if name not in configs:
            continue
        splits = {
            s.get("name"): s.get("num_examples") for s in info.get("splits") or [] if isinstance(s, dict)
        }
        if splits.get("train") != configs[name]["rows"]:
            problems.append(
                f"{name}: the card's dataset_info says {splits.get('train')} train rows, the manifest "
                f"{configs[name]['rows']}"
            )
    return problems


def check_card(root: Path, manifest: Manifest, ledger: Ledger) -> tuple[str | None, dict | None]:
    """`card-configs` and `card-current`; returns the card text and metadata for the label checks."""
    text, meta, problem = read_card(root)
    for check in ("card-configs", "card-current"):
        ledger.declare(ATLAS, check)
    if text is None:
        for check in ("card-configs", "card-current"):
            ledger.skip(ATLAS, check, "the atlas has no card (README.md) yet: `atlas card DIR` writes it")
        return None, None
    if problem:
        ledger.fail(ATLAS, "card-configs", [problem])
        ledger.skip(ATLAS, "card-current", "the card's metadata is unusable (see card-configs)")
        return text, None
    problems = card_configs_problems(root, manifest, meta)
    ledger.count(
        ATLAS, "card-configs", "card configs equal the manifest's", len(manifest.configs()), len(problems)
    )
    ledger.add_examples(ATLAS, "card-configs", problems)
    from dataset_cards.render import rerender_card

    try:
        pair = rerender_card(root)
    except Exception as error:  # noqa: BLE001 - unreadable data files are reported by manifest-files
        ledger.skip(
            ATLAS, "card-current", f"the card cannot be rendered again ({type(error).__name__}: {error})"
        )
        return text, meta
    if pair is None:
        ledger.skip(
            ATLAS, "card-current", "the card records no rendering context (written by an older version)"
        )
        return text, meta
    shipped, fresh = pair
    if shipped != fresh:
        ledger.fail(ATLAS, "card-current", [_first_difference(shipped, fresh)])
    else:
        ledger.count(ATLAS, "card-current", "card equals its rendering from the atlas", 1, 0)
    return text, meta


def _first_difference(shipped: str, fresh: str) -> str:
    a, b = shipped.splitlines(), fresh.splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return (
                f"README.md line {i + 1} differs from the card the atlas renders: {x[:80]!r}, expected "
                f"{y[:80]!r}; rerun `atlas card DIR`"
            )
    return f"README.md has {len(a)} lines, the card the atlas renders {len(b)}; rerun `atlas card DIR`"


# ---- random-init labels ----------------------------------------------------------------------------------


def random_init_claims(
    row: dict[str, Any],
    builds: list[dict[str, Any]],
    card: str | None,
    meta: dict | None,
    marker: dict | None,
) -> list[str]:
    """Where the labels of one model disagree with its models row's `random_init` (empty when consistent).

    Args:
        row: the models row.
        builds: the manifest's build records of this model's slug.
        card: the card's text, or None without a card.
        meta: the card's YAML metadata (None without a usable one).
        marker: the checkpoint's `routing_atlas` marker from its config.json, when it could be read.
    """
    slug, flag = row.get("model_slug"), bool(row.get("random_init"))
    said = "random-init" if flag else "trained (random_init false)"
    problems = []
    says_random = []
    if row.get("model_id") == "synthetic" or row.get("model_type") == "synthetic":
        says_random.append("its model_id/model_type is synthetic")
    for build in builds:
        if (build.get("engine") or {}).get("random_init"):
            says_random.append("its build record was made with --random-init")
        if any(RANDOM_INIT_NOTE in str(note) for note in build.get("model_notes") or []):
            says_random.append("its build record's notes call it RANDOM-INIT")
    if marker and marker.get("random_init"):
        says_random.append("its checkpoint's config.json marks it random_init")
    if says_random and not flag:
        problems.append(f"{slug}: the models row says {said}, but {'; '.join(dict.fromkeys(says_random))}")
    if card is not None:
        body = card.split("\n---\n", 1)[1] if card.startswith("---\n") and "\n---\n" in card[4:] else card
        label = f"`{slug}` ({RANDOM_INIT_TAG})"
        config_label = f"| `{ROUTING_PREFIX}{slug}` ({RANDOM_INIT_TAG} model) |"
        tags = (meta or {}).get("tags") or []
        card_says = {
            "its label": label in body,
            "its routing config's description": config_label in body,
        }
        if flag:
            missing = [what for what, present in card_says.items() if not present]
            if meta is not None and RANDOM_INIT_TAG not in tags:
                missing.append(f"the `{RANDOM_INIT_TAG}` tag")
            if "random-init model(s): " not in body:
                missing.append("the random-init warning")
            if missing:
                problems.append(f"{slug}: random-init in its models row; the card lacks {', '.join(missing)}")
        elif any(card_says.values()):
            problems.append(f"{slug}: the card labels it random-init, its models row says trained")
    return problems


def check_random_init(
    manifest: Manifest,
    models: dict[str, list[dict]],
    ledger: Ledger,
    card: str | None,
    meta: dict | None,
    checkpoint_marker: Callable[[dict], dict | None] | None = None,
) -> None:
    ledger.declare(MODELS, "random-init-labels")
    rows = [row for rows in models.values() for row in rows]
    if not rows:
        ledger.skip(MODELS, "random-init-labels", "no models rows")
        return
    failing = 0
    for row in rows:
        builds = [b for b in manifest.builds if b.get("model_slug") == row.get("model_slug")]
        marker = None
        if checkpoint_marker is not None:
            try:
                marker = checkpoint_marker(row)
            except Exception:  # noqa: BLE001 - an unreadable checkpoint only means no marker to compare
                marker = None
        problems = random_init_claims(row, builds, card, meta, marker)
        failing += bool(problems)
        ledger.add_examples(MODELS, "random-init-labels", problems)
    ledger.count(MODELS, "random-init-labels", "labels agree with random_init", len(rows), failing)


def local_checkpoint_marker(row: dict) -> dict | None:
    """The `routing_atlas` marker of a models row's checkpoint when it is a local directory (read as JSON: no
    code runs), else None."""
    import json

    path = Path(str(row.get("model_id") or ""))
    config = path / "config.json"
    if not path.is_absolute() or not config.is_file():
        return None
    return (json.loads(config.read_text(encoding="utf-8")) or {}).get("routing_atlas")


# ---- the manifest's derived sections ---------------------------------------------------------------------


def corpus_count_facts(root: Path, manifest: Manifest) -> dict[str, Any]:
    """The corpus counts the data implies (the keys `corpora.corpus_counts` records), recomputed here."""
    facts: dict[str, Any] = {}

    def read(config: str, columns: list[str]):
        files = manifest.config_files(config)
        if not files or not all((root / rel).is_file() for rel in files):
            return None  # a missing file is reported by manifest-files
        import pyarrow as pa

        return pa.concat_tables([pq.read_table(root / rel, columns=columns) for rel in files])

    senses = read(SENSES, ["lemma", "pos", "synset"])
    if senses is not None:
        pairs_lp = senses.group_by(["lemma", "pos"]).aggregate([])
        facts["examples"] = senses.num_rows
        facts["lemmas"] = pairs_lp.num_rows
        facts["synsets"] = len(pc.unique(senses.column("synset")))
        pos = pairs_lp.column("pos").to_pylist()
        facts["lemmas_by_pos"] = {p: pos.count(p) for p in sorted(set(pos))}
    pairs = read(SENSE_PAIRS, ["lemma", "pos", "same_sense"])
    if pairs is not None:
        same = int(pc.sum(pairs.column("same_sense")).as_py() or 0)
        facts["pairs"] = {"total": pairs.num_rows, "same": same, "different": pairs.num_rows - same}
        facts["pair_lemmas"] = pairs.group_by(["lemma", "pos"]).aggregate([]).num_rows
    subs = read(SUBSTITUTIONS, ["relation"])
    if subs is not None:
        relations = subs.column("relation").to_pylist()
        facts["substitutions"] = {"total": len(relations), **{r: relations.count(r) for r in set(relations)}}
    return facts


def _same_counts(recorded: Any, fact: Any) -> bool:
    """Counts agree; in a breakdown (a dict) a missing key counts as zero."""
    if isinstance(fact, dict) and isinstance(recorded, dict):
        return all(recorded.get(k, 0) == fact.get(k, 0) for k in set(recorded) | set(fact))
    return recorded == fact


def derived_problems(root: Path, manifest: Manifest, raw: dict, models: dict[str, list[dict]]) -> list[str]:
    """How manifest.json's derived sections disagree with its file list and the data."""
    problems = []
    computed = manifest.configs()
    written = raw.get("configs")
    if not isinstance(written, dict):
        problems.append("manifest.json has no `configs` section")
        written = {}
    for name in sorted(set(computed) | set(written)):
        have, want = written.get(name), computed.get(name)
        if have is None or want is None:
            problems.append(
                f"configs.{name}: {'missing from' if have is None else 'listed in'} the `configs` section, "
                f"{'present in' if want is not None else 'absent from'} the file list"
            )
            continue
        for key in ("rows", "bytes", "files"):
            if have.get(key) != want[key]:
                problems.append(
                    f"configs.{name}.{key}: {have.get(key)!r}, the file list implies {want[key]!r}"
                )
    counts = manifest.corpus_counts or {}
    for key, fact in corpus_count_facts(root, manifest).items():
        if key in counts and not _same_counts(counts[key], fact):
            problems.append(f"corpus_counts.{key}: {counts[key]!r}, the corpus files hold {fact!r}")
    last: dict[str, dict] = {}
    for build in manifest.builds:
        if build.get("kind") == "routing" and build.get("model_slug"):
            last[build["model_slug"]] = build
    for slug, build in sorted(last.items()):
        rows = models.get(slug) or []
        if len(rows) != 1:
            if ROUTING_PREFIX + slug in computed:
                problems.append(f"builds[{slug}]: {len(rows)} models rows for the model it built")
            continue
        row, engine = rows[0], build.get("engine") or {}
        model = str(build.get("model") or "")
        if model and model != row.get("model_id") and model.split("@")[0] != row.get("model_id"):
            problems.append(f"builds[{slug}].model: {model!r}, its models row says {row.get('model_id')!r}")
        if engine.get("dtype") not in (None, "auto") and engine.get("dtype") != row.get("dtype"):
            problems.append(
                f"builds[{slug}].engine.dtype: {engine.get('dtype')!r}, models row {row.get('dtype')!r}"
            )
        if engine.get("engine") is not None and engine.get("engine") != row.get("engine"):
            problems.append(
                f"builds[{slug}].engine: {engine.get('engine')!r}, models row {row.get('engine')!r}"
            )
        stored = engine.get("weights_dtype")
        if row.get("weights_dtype") is not None and stored is not None and stored != row.get("weights_dtype"):
            problems.append(
                f"builds[{slug}].engine.weights_dtype: {stored!r}, models row {row.get('weights_dtype')!r}"
            )
    return problems


def check_manifest_derived(
    root: Path, manifest: Manifest, models: dict[str, list[dict]], ledger: Ledger
) -> None:
    ledger.declare(ATLAS, "manifest-derived")
    problems = derived_problems(root, manifest, Manifest.raw(root), models)
    ledger.count(ATLAS, "manifest-derived", "derived sections agree", 1, 1 if problems else 0)
    ledger.add_examples(ATLAS, "manifest-derived", problems)


def audit_problems(manifest: Manifest) -> tuple[list[str], list[str]]:
    """(problems, stale notes) of the manifest's `atlas audit` records."""
    problems, stale = [], []
    configs = manifest.configs()
    for i, audit in enumerate(manifest.audits):
        config = audit.get("config") if isinstance(audit, dict) else None
        if config not in configs or not str(config).startswith(ROUTING_PREFIX):
            problems.append(f"audits[{i}]: names {config!r}, not a routing config of the atlas")
            continue
        try:
            layers, same = int(audit["token_layers"]), int(audit["identical_sets"])
            sound = 0 <= same <= layers and bool(audit["passed"]) == (
                layers > 0 and same / layers >= float(audit["threshold"])
            )
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"audits[{i}] ({config}): malformed ({type(error).__name__}: {error})")
            continue
        if "parts" in audit:
            # The per-part verdict (sets, order, weights) and the record's hash: record_problems says it all.
            problems.extend(f"audits[{i}] ({config}): {problem}" for problem in record_problems(audit))
        elif not sound:
            problems.append(
                f"audits[{i}] ({config}): {same} identical of {layers} token-layers does not give "
                f"passed={audit['passed']} at threshold {audit['threshold']}"
            )
        if audit.get("data_sha256") != config_data_sha256(manifest, config):
            stale.append(f"audits[{i}] ({config}): the routing files changed since this audit")
    return problems, stale


def check_audits(manifest: Manifest, ledger: Ledger) -> None:
    ledger.declare(ATLAS, "audit-records")
    if not manifest.audits:
        ledger.skip(ATLAS, "audit-records", "no `atlas audit` record in manifest.json")
        return
    problems, stale = audit_problems(manifest)
    ledger.count(ATLAS, "audit-records", "audit records add up", len(manifest.audits), len(problems))
    ledger.add_examples(ATLAS, "audit-records", problems)
    if stale:
        ledger.declare(ATLAS, "audit-records", stale=stale)
