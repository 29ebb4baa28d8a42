"""`atlas audit`: the demo-size atlas (RANDOM-INIT tiny-deepseek-v3) re-routes to 100% identical expert sets, and
routing replaced by other valid routing, which every structural check passes, fails the audit.

The tampered atlases keep their manifest and card in step with the change (a careful adversary), so
`atlas verify` and `atlas validate` pass them: only the audit can tell.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import nested_fixed_list, routing_array
from atlas_build.atlas.writer import write_parquet_atomic
from atlas_build.audit.reroute import AuditError, audit_atlas, clopper_pearson
from atlas_build.cli import main
from dataset_cards.render import write_card

CONFIG = "routing-tiny-deepseek-v3"
QUIET = {"log": lambda *_: None}
EVERY_TEXT = 10_000


def _shard(root):
    """The first routing shard (the small atlas has several)."""
    return root / Manifest.load(root).config_files(CONFIG)[0]


def _rewrite(root, table: pa.Table) -> None:
    """Replace the routing shard with `table`, recording it in the manifest and rendering the card again."""
    path = _shard(root)
    schema = pq.read_schema(path)
    manifest = Manifest.load(root)
    written = write_parquet_atomic(table, path, schema)
    manifest.record(root, CONFIG, written)
    manifest.save(root)
    write_card(root)


def _with_experts(table: pa.Table, experts: np.ndarray, weights: np.ndarray | None = None) -> pa.Table:
    """`table` with its `experts` (and `weights`, when given) replaced by these `[tokens, layers, k]` arrays."""
    replaced = {"experts": experts} if weights is None else {"experts": experts, "weights": weights}
    columns = []
    for field in table.schema:
        if field.name not in replaced:
            columns.append(table.column(field.name))
            continue
        leaf = field.type.value_type.value_type
        columns.append(
            nested_fixed_list(np.asarray(replaced[field.name]).astype(leaf.to_pandas_dtype()), leaf)
        )
    return pa.Table.from_arrays(columns, schema=table.schema)


def _validate_passes(root) -> None:
    result = CliRunner().invoke(
        main, ["validate", str(root), "--problems-only", "--json", str(root.parent / "v.json")]
    )
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["verify", str(root)]).exit_code == 0


def test_the_demo_atlas_audits_to_identical_sets(atlas_copy):
    result = CliRunner().invoke(main, ["audit", str(atlas_copy), "--sample", "60", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "100.00% identical expert sets" in result.output and "PASSED" in result.output
    audit = Manifest.load(atlas_copy).audits[-1]
    assert audit["config"] == CONFIG and audit["texts"] == 60 and audit["seed"] == 3
    assert (
        audit["identical_sets"] == audit["token_layers"] == audit["identical_order"] == audit["weights_close"]
    )
    assert audit["token_layers"] == audit["tokens"] * 5  # tiny-deepseek-v3: MoE layers 1-5
    assert audit["passed"] and audit["against_recorded"] and audit["mismatch_rate"] == 0.0
    card = (atlas_copy / "README.md").read_text()
    assert (
        f"Routing audited on {audit['tokens']} tokens (60 texts, seed 3) against `tiny-deepseek-v3`" in card
    )
    assert "100.00% identical expert sets" in card and "random-init" in card
    _validate_passes(atlas_copy)  # the audit record and the card line are claims validation checks


def test_the_sample_is_seeded(small_atlas):
    from atlas_build.audit.reroute import sample_texts

    manifest = Manifest.load(small_atlas)
    a = sample_texts(small_atlas, manifest, CONFIG, 20, seed=1)
    assert a == sample_texts(small_atlas, manifest, CONFIG, 20, seed=1)
    assert a != sample_texts(small_atlas, manifest, CONFIG, 20, seed=2)
    assert len(a) == 20 and len(set(a)) == 20


def rotate_expert_ids(root):
    table = pq.read_table(_shard(root))
    experts = routing_array(table.column("experts")).astype(np.int64)
    _rewrite(root, _with_experts(table, (experts + 1) % 32))
    return table.num_rows * 5  # every token-layer changed


def replace_one_tokens_experts(root):
    table = pq.read_table(_shard(root))
    experts = routing_array(table.column("experts")).astype(np.int64).copy()
    unused = [e for e in range(32) if e not in experts[7, 2]]
    experts[7, 2] = unused[:8]  # valid, distinct ids; weights left as they were
    _rewrite(root, _with_experts(table, experts))
    return 1


def swap_two_tokens(root):
    table = pq.read_table(_shard(root))
    experts = routing_array(table.column("experts")).copy()
    weights = routing_array(table.column("weights")).copy()
    experts[[3, 40]], weights[[3, 40]] = experts[[40, 3]], weights[[40, 3]]
    _rewrite(root, _with_experts(table, experts, weights))
    layers = (np.sort(experts[3], axis=1) != np.sort(experts[40], axis=1)).any(axis=1)
    return 2 * int(layers.sum())


def another_models_routing(root, tiny_checkpoint):
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.builder import shard_table, wordnet_texts
    from atlas_build.engines.hf import HFEngine

    manifest = Manifest.load(root)
    table = pq.read_table(_shard(root))
    order = {
        (c, s): i
        for i, (c, s) in enumerate(
            zip(table["corpus"].to_pylist(), table["source_id"].to_pylist(), strict=True)
        )
    }
    items = [item for item in wordnet_texts(root, manifest) if (item.corpus, item.source_id) in order]
    items.sort(key=lambda item: order[(item.corpus, item.source_id)])
    engine = HFEngine(str(tiny_checkpoint), random_init=True, seed=1)  # the same texts, another model
    try:
        other = shard_table(engine, items, routing_schema(32, 5, 8, "float16"), True)
    finally:
        engine.close()
    _rewrite(root, other.select(table.schema.names).cast(table.schema))
    return None


@pytest.mark.parametrize(
    "tamper", [rotate_expert_ids, replace_one_tokens_experts, swap_two_tokens, another_models_routing]
)
def test_routing_replaced_by_other_valid_routing_fails_the_audit(atlas_copy, tamper, tiny_checkpoint):
    changed = tamper(atlas_copy, tiny_checkpoint) if tamper is another_models_routing else tamper(atlas_copy)
    if tamper in (rotate_expert_ids, another_models_routing):
        _validate_passes(atlas_copy)  # the blind spot: valid routing, consistent files, a true card
    result = CliRunner().invoke(main, ["audit", str(atlas_copy), "--sample", str(EVERY_TEXT)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "mismatch: " in result.output  # names the first mismatching rows
    audit = Manifest.load(atlas_copy).audits[-1]
    assert not audit["passed"] and audit["first_mismatches"]
    if changed is not None:
        assert audit["token_layers"] - audit["identical_sets"] == changed
    low, high = audit["mismatch_low"], audit["mismatch_upper"]
    assert low <= audit["mismatch_rate"] <= high
    assert "**FAILED**" in (atlas_copy / "README.md").read_text()


def test_one_replaced_token_is_named(atlas_copy):
    replace_one_tokens_experts(atlas_copy)
    result = audit_atlas(atlas_copy, sample=EVERY_TEXT, record=False, **QUIET)
    table = pq.read_table(_shard(atlas_copy))
    source, index = table["source_id"][7].as_py(), table["token_index"][7].as_py()
    assert result.first_mismatches[0].startswith(f"{table['corpus'][7].as_py()}:{source} token {index} ")
    assert "decoder layer 3: expert set differs" in result.first_mismatches[0]


def test_clopper_pearson_is_the_exact_interval():
    """Independent computation: the beta-quantile form of the Clopper-Pearson interval."""
    from scipy.stats import beta

    for k, n in ((0, 50), (3, 200), (50, 50), (7, 1000)):
        low, high = clopper_pearson(k, n)
        want_low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        want_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert low == pytest.approx(want_low, abs=1e-9) and high == pytest.approx(want_high, abs=1e-9)


def test_require_audit_gates_publishing(atlas_copy, tmp_path):
    from atlas_build.publish import PublishError, publish_local

    out = tmp_path / "releases"
    with pytest.raises(PublishError, match="never audited"):
        publish_local(atlas_copy, "0.1.0", out, require_audit=True, **QUIET)
    audit_atlas(atlas_copy, sample=20, **QUIET)
    rotate_expert_ids(atlas_copy)
    with pytest.raises(PublishError, match="changed since its last audit"):
        publish_local(atlas_copy, "0.1.0", out, require_audit=True, **QUIET)
    assert not audit_atlas(atlas_copy, sample=20, **QUIET).passed
    with pytest.raises(PublishError, match="its last audit failed"):
        publish_local(atlas_copy, "0.1.0", out, require_audit=True, **QUIET)
    assert not (out / "v0.1.0").exists()


def test_an_audited_atlas_publishes_with_require_audit(atlas_copy, tmp_path):
    audit_atlas(atlas_copy, sample=20, **QUIET)
    CliRunner().invoke(main, ["validate", str(atlas_copy)])
    CliRunner().invoke(main, ["card", str(atlas_copy)])
    out = tmp_path / "releases"
    result = CliRunner().invoke(
        main, ["publish", str(atlas_copy), "--version", "0.1.0", "--to", str(out), "--require-audit"]
    )
    assert result.exit_code == 0, result.output
    release = out / "v0.1.0"
    assert "Routing audited on" in (release / "README.md").read_text()
    assert json.loads((release / "manifest.json").read_text())["audits"][-1]["passed"]
    # A release is audited, never changed: the result is reported, not recorded.
    before = (release / "manifest.json").read_bytes()
    again = CliRunner().invoke(main, ["audit", str(release), "--sample", "10"])
    assert again.exit_code == 0, again.output
    assert (release / "manifest.json").read_bytes() == before


def test_bad_requests_are_one_line(atlas_copy):
    with pytest.raises(AuditError, match="no routing-nope"):
        audit_atlas(atlas_copy, slug="nope", **QUIET)
    result = CliRunner().invoke(main, ["audit", str(atlas_copy), "--sample", "0"])
    assert result.exit_code == 2 and "--sample must be at least 1" in result.output


# ---- order and weights: the sets agree, so only their own parts can tell (issue 31) ------------------------


def _every_shard(root, change) -> None:
    """Apply `change(table, experts, weights) -> (experts, weights)` to every routing shard."""
    for rel in Manifest.load(root).config_files(CONFIG):
        path = root / rel
        table = pq.read_table(path)
        experts = routing_array(table.column("experts")).astype(np.int64)
        weights = routing_array(table.column("weights"), np.float32)
        new_experts, new_weights = change(table, experts.copy(), weights.copy())
        schema = pq.read_schema(path)
        manifest = Manifest.load(root)
        manifest.record(
            root, CONFIG, write_parquet_atomic(_with_experts(table, new_experts, new_weights), path, schema)
        )
        manifest.save(root)
    write_card(root)


def experts_sorted_by_id_weights_kept(root):
    _every_shard(root, lambda t, e, w: (np.sort(e, axis=2), w))
    return {"order", "weights"}


def top_two_swapped(root):
    def swap(t, e, w):
        e[..., [0, 1]] = e[..., [1, 0]]
        return e, w

    _every_shard(root, swap)
    return {"order", "weights"}


def weights_of_the_neighbouring_token(root):
    _every_shard(root, lambda t, e, w: (e, np.roll(w, 1, axis=0)))
    return {"weights"}


def weights_halved_scaling_halved(root):
    """Halved weights with the models row's scaling factor halved to match: weights-sum still holds."""
    from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA
    from atlas_build.atlas.store import write_config

    _every_shard(root, lambda t, e, w: (e, w / 2))
    manifest = Manifest.load(root)
    models = pq.read_table(root / manifest.config_files(MODELS)[0]).to_pylist()
    for row in models:
        row["routed_scaling_factor"] = row["routed_scaling_factor"] / 2
    write_config(root, manifest, MODELS, pa.Table.from_pylist(models, MODELS_SCHEMA), MODELS_SCHEMA)
    manifest.save(root)
    write_card(root)
    return {"weights"}


@pytest.mark.parametrize(
    "tamper",
    [
        experts_sorted_by_id_weights_kept,
        top_two_swapped,
        weights_of_the_neighbouring_token,
        weights_halved_scaling_halved,
    ],
)
def test_order_and_weights_tampering_fails_the_named_part(atlas_copy, tamper):
    failing = tamper(atlas_copy)
    if tamper in (weights_of_the_neighbouring_token, weights_halved_scaling_halved):
        _validate_passes(atlas_copy)  # consistent files, valid weights: only the audit can tell
    result = CliRunner().invoke(main, ["audit", str(atlas_copy), "--sample", "40"])
    assert result.exit_code == 1, result.output
    audit = Manifest.load(atlas_copy).audits[-1]
    assert audit["identical_sets"] == audit["token_layers"]  # the sets agree: a sets-only audit passed these
    assert set(audit["failed_parts"]) == failing and not audit["passed"]
    assert f"FAILED ({', '.join(p for p in ('sets', 'order', 'weights') if p in failing)})" in result.output
    for name in failing:
        part = audit["parts"][name]
        assert part["agree"] < part["trials"] and not part["passed"]
        # Its own exact interval: the beta-quantile Clopper-Pearson bound, computed here.
        from scipy.stats import beta

        k, n = part["trials"] - part["agree"], part["trials"]
        want_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert part["mismatch_upper"] == pytest.approx(want_high, abs=1e-9)
    card = (atlas_copy / "README.md").read_text()
    assert "identical order" in card and "weights within tolerance" in card and "**FAILED**" in card


def test_the_card_shows_all_three_parts(atlas_copy):
    audit_atlas(atlas_copy, sample=20, **QUIET)
    card = (atlas_copy / "README.md").read_text()
    for part in ("identical expert sets", "identical order", "weights within tolerance"):
        assert f"100.00% {part}" in card


def _forge_pass(root) -> None:
    """A careful forger: the last audit record says passed on every part, and hashes as a real one would."""
    from atlas_build.atlas.audits import record_sha256

    manifest = Manifest.load(root)
    record = manifest.audits[-1]
    record.update(passed=True, failed_parts=[], identical_sets=record["token_layers"])
    record["identical_order"] = record["weights_close"] = record["token_layers"]
    for part in record["parts"].values():
        part.update(agree=part["trials"], share=1.0, passed=True, mismatch_low=0.0)
    record["record_sha256"] = record_sha256(record)
    manifest.save(root)


def test_a_forged_record_is_refused_by_require_audit(atlas_copy, tmp_path):
    from atlas_build.publish import PublishError, publish_local

    experts_sorted_by_id_weights_kept(atlas_copy)
    audit_atlas(atlas_copy, sample=20, **QUIET)
    manifest = Manifest.load(atlas_copy)
    manifest.audits[-1]["passed"] = True  # edited by hand: no longer adds up, no longer hashes
    manifest.save(atlas_copy)
    out = tmp_path / "releases"
    with pytest.raises(PublishError, match="not trustworthy .*does not hash to its record_sha256"):
        publish_local(atlas_copy, "0.1.0", out, require_audit=True, **QUIET)
    _forge_pass(atlas_copy)  # whole, consistent, re-hashed: only a re-route can tell
    result = CliRunner().invoke(
        main, ["publish", str(atlas_copy), "--version", "0.1.0", "--to", str(out), "--require-audit"]
    )
    assert result.exit_code != 0
    assert "a re-check of 16 texts" in result.output and "fails (order, weights)" in result.output
    assert "Traceback" not in result.output and not (out / "v0.1.0").exists()


def test_a_deleted_text_fails_the_audit(atlas_copy):
    """All rows of one text deleted (manifest and card recomputed): the audit samples the corpus configs."""
    path = _shard(atlas_copy)
    table = pq.read_table(path)
    victim = table["source_id"][0].as_py()
    _rewrite(atlas_copy, table.filter(pa.compute.not_equal(table["source_id"], victim)))
    result = audit_atlas(atlas_copy, sample=EVERY_TEXT, record=False, **QUIET)
    assert not result.passed and result.texts_with_other_tokens == 1
    assert any(
        line.startswith(f"{table['corpus'][0].as_py()}:{victim}: the atlas has 0 tokens")
        for line in result.first_mismatches
    )


@pytest.mark.parametrize("damage", ["truncated", "empty", "deleted", "phantom"])
def test_damaged_files_are_one_line(atlas_copy, damage):
    path = _shard(atlas_copy)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "deleted":
        path.unlink()
    else:
        (path.parent / "routing-99999.parquet").write_bytes(path.read_bytes())
    result = CliRunner().invoke(main, ["audit", str(atlas_copy)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    want = {
        "truncated": "truncated or replaced",
        "empty": "is empty",
        "deleted": "missing from",
        "phantom": "a phantom file",
    }
    assert want[damage] in result.output and "atlas verify" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
