"""The tamperings that passed both `atlas verify` and `atlas validate` before the claims checks, each caught by
the check that must catch it (the catalog of issue 19; `test_defect_catalog.py` holds the ones caught before).

Each case starts from a private copy of the clean SYNTHETIC atlas and tampers the way a careful adversary
would: the manifest's file entries, its derived `configs` section and the card are kept in step with the
change (see `AtlasEditor`), so that only the check under test can see it. Routing replaced by other valid
routing is the audit's (tests/audit); symlinks and hidden files are refused before any check runs (below).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from validation_fixtures import ROUTING, AtlasEditor

from validation import AtlasNotFoundError, run_validation

R = ROUTING
FIRST = "lemma00000.n|lemma00000.n.01|0"  # "ctx0 ctx0 lemma00000 ctx0 end", target = token 2


def _failed(report) -> set[str]:
    return {f"{r.config}:{r.check}" for r in report.failures}


def _set(ed: AtlasEditor, config: str, column: str, rows, values) -> None:
    import pyarrow as pa

    table = ed.table(config)
    data = table.column(column).to_pylist()
    for row, value in zip(rows, values, strict=True):
        data[int(row)] = value
    field = table.schema.field(column)
    ed.write(
        config, table.set_column(table.schema.get_field_index(column), field, pa.array(data, field.type))
    )


# ---- the card -------------------------------------------------------------------------------------------


def card_senses_points_at_substitutions(ed):
    card = ed.card()
    ed.write_card_text(
        card.replace("path: senses/senses-*.parquet", "path: substitutions/substitutions-*.parquet", 1)
    )


def card_drops_a_config(ed):
    card = ed.card()
    block = re.search(r"(?m)^- config_name: sense-pairs\n(?:  .*\n)+", card)
    ed.write_card_text(card.replace(block.group(0), "", 1))


def card_yaml_broken(ed):
    ed.write_card_text(ed.card().replace("configs:\n", "configs: [unclosed\n", 1))


def card_random_init_warning_deleted(ed):
    card = ed.card()
    kept = [line for line in card.splitlines(keepends=True) if "random-init model(s)" not in line]
    ed.write_card_text("".join(kept))


def card_config_description_unlabelled(ed):
    ed.write_card_text(ed.card().replace(f"| `{R}` (random-init model) |", f"| `{R}` |", 1))


# ---- the models row ---------------------------------------------------------------------------------------


def models_row_says_trained(ed):
    _set(ed, "models", "random_init", [0], [False])  # card rendered again: it now says "trained" too


# ---- tokens and texts -----------------------------------------------------------------------------------


def token_replaced_by_another_vocabulary_entry(ed):
    table = ed.routing()
    rows = ed.text_rows(table, FIRST)
    tokens, ids = table.column("token").to_pylist(), table.column("token_id").to_pylist()
    other = next(i for i, t in enumerate(tokens) if t == "ctx1")  # a real entry: token-strings agrees
    _set(ed, R, "token", [rows[0]], [tokens[other]])
    _set(ed, R, "token_id", [rows[0]], [ids[other]])


def char_offsets_shifted(ed):
    table = ed.routing()
    row = ed.text_rows(table, FIRST)[1]  # "ctx0" at 5..9: moved onto the space before it, still in order
    _set(ed, R, "char_start", [row], [4])


def sense_text_changed_outside_target(ed):
    texts = ed.table("senses").column("text").to_pylist()
    ids = ed.table("senses").column("example_id").to_pylist()
    row = ids.index(FIRST)
    assert texts[row].endswith(" end")
    _set(ed, "senses", "text", [row], [texts[row][: -len("end")] + "and"])  # same length, same target


# ---- the manifest's derived sections ----------------------------------------------------------------------


def manifest_config_rows_edited(ed):
    ed.edit_manifest(
        lambda m: m["configs"]["senses"].update(rows=m["configs"]["senses"]["rows"] + 1), derived=False
    )


def manifest_config_dropped_from_derived(ed):
    ed.edit_manifest(lambda m: m["configs"].pop("sense-pairs"), derived=False)


def manifest_corpus_counts_edited(ed):
    ed.edit_manifest(lambda m: m["corpus_counts"].update(examples=m["corpus_counts"]["examples"] + 7))


def manifest_build_record_says_other_model(ed):
    record = {
        "kind": "routing",
        "model_slug": "synthetic-moe",
        "model": "deepseek-ai/DeepSeek-R1",
        "engine": {"engine": "hf", "dtype": "bfloat16", "random_init": False, "weights_dtype": "float16"},
    }
    ed.edit_manifest(lambda m: m["builds"].append(record))


def audit_record_claims_a_pass(ed):
    from atlas_build.atlas.manifest import Manifest, config_data_sha256

    data_sha = config_data_sha256(Manifest.load(ed.root), R)
    audit = {"config": R, "token_layers": 100, "identical_sets": 40, "threshold": 1.0, "passed": True}
    ed.edit_manifest(lambda m: m.setdefault("audits", []).append({**audit, "data_sha256": data_sha}))


CLAIMS = [
    (card_senses_points_at_substitutions, {"atlas:card-configs", "atlas:card-current"}),
    (card_drops_a_config, {"atlas:card-configs", "atlas:card-current"}),
    (card_yaml_broken, {"atlas:card-configs"}),
    (card_random_init_warning_deleted, {"models:random-init-labels", "atlas:card-current"}),
    (card_config_description_unlabelled, {"models:random-init-labels", "atlas:card-current"}),
    (models_row_says_trained, {"models:random-init-labels"}),
    (token_replaced_by_another_vocabulary_entry, {f"{R}:tokenization"}),
    (char_offsets_shifted, {f"{R}:tokenization"}),
    (sense_text_changed_outside_target, {f"{R}:tokenization"}),
    (manifest_config_rows_edited, {"atlas:manifest-derived"}),
    (manifest_config_dropped_from_derived, {"atlas:manifest-derived"}),
    (manifest_corpus_counts_edited, {"atlas:manifest-derived"}),
    (manifest_build_record_says_other_model, {"atlas:manifest-derived"}),
    (audit_record_claims_a_pass, {"atlas:audit-records"}),
]


@pytest.mark.parametrize(("tamper", "expected"), CLAIMS, ids=[t.__name__ for t, _ in CLAIMS])
def test_tampering_is_caught_by_the_right_check(atlas_editor, tamper, expected):
    tamper(atlas_editor)
    report = run_validation(atlas_editor.root)
    assert _failed(report) == expected, report.render_table(only_problems=True)
    for result in report.failures:
        assert result.failing_examples, f"{result.config}:{result.check} failed without an example"


def test_the_clean_card_is_its_own_rendering_after_validate_and_card(atlas_editor):
    """validation.json written after the card changes only the section the comparison leaves out."""
    from atlas_build.cli import main

    root = atlas_editor.root
    first = CliRunner().invoke(main, ["validate", str(root)])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, ["validate", str(root)])  # the card predates validation.json now
    assert second.exit_code == 0, second.output
    assert CliRunner().invoke(main, ["card", str(root)]).exit_code == 0
    third = CliRunner().invoke(main, ["validate", str(root)])
    assert third.exit_code == 0, third.output


def test_the_card_check_reports_the_differing_line(atlas_editor):
    card = atlas_editor.card()
    atlas_editor.write_card_text(card.replace("- **Language:** English", "- **Language:** Klingon", 1))
    result = run_validation(atlas_editor.root).get("atlas", "card-current")
    assert result.status == "failed" and "Klingon" in result.failing_examples[0]


def test_a_shifted_offset_passes_every_row_check(atlas_editor):
    """Why the fresh tokenization is needed: the shifted span is in order, inside the text, covering it."""
    char_offsets_shifted(atlas_editor)
    report = run_validation(atlas_editor.root, tokenizers=False)
    assert report.passed, report.render_table(only_problems=True)


# ---- symlinks and hidden files: refused, one line, no traceback ---------------------------------------


def _symlinked_shard(ed, tmp_path):
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(ed.path(R).read_bytes())
    ed.path(R).unlink()
    os.symlink(outside, ed.path(R))
    return f"{R}/{R}-00000.parquet is a symbolic link"


def _symlink_to_passwd(ed, tmp_path):
    os.symlink("/etc/passwd", ed.root / "senses" / "senses-00001.parquet")
    return "senses/senses-00001.parquet is a symbolic link (to /etc/passwd)"


def _symlinked_config_folder(ed, tmp_path):
    target = tmp_path / "elsewhere"
    (ed.root / "sense-pairs").rename(target)
    os.symlink(target, ed.root / "sense-pairs")
    return "sense-pairs is a symbolic link"


def _hidden_parquet(ed, tmp_path):
    (ed.root / "senses" / ".senses-00001.parquet").write_bytes(ed.path("senses").read_bytes())
    return "senses/.senses-00001.parquet is a hidden file"


def _hidden_folder(ed, tmp_path):
    (ed.root / R / ".extra").mkdir()
    (ed.root / R / ".extra" / f"{R}-00001.parquet").write_bytes(ed.path(R).read_bytes())
    return f"{R}/.extra is a hidden folder"


UNSAFE = [_symlinked_shard, _symlink_to_passwd, _symlinked_config_folder, _hidden_parquet, _hidden_folder]


@pytest.mark.parametrize("plant", UNSAFE, ids=[p.__name__.strip("_") for p in UNSAFE])
def test_symlinks_and_hidden_files_are_refused_by_every_reader(atlas_editor, tmp_path, plant):
    from atlas_build.atlas.manifest import Manifest, UnsafeAtlasError
    from atlas_build.cli import main

    said = plant(atlas_editor, tmp_path)
    root = atlas_editor.root
    with pytest.raises(AtlasNotFoundError, match=re.escape(said)):
        run_validation(root)
    with pytest.raises(UnsafeAtlasError, match=re.escape(said)):
        Manifest.load(root)
    for args in (["verify", str(root)], ["validate", str(root)], ["card", str(root)], ["audit", str(root)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 3, (args, result.output)  # a damaged atlas, for every reader
        assert said in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output


def test_writers_temporary_files_are_not_refused(atlas_editor):
    """A killed writer's `.<name>.<random>.tmp` is an unfinished write (verify lists it), not a foreign file."""
    (atlas_editor.root / "senses" / ".senses-00000.parquet.ab12.tmp").write_bytes(b"PAR1")
    from atlas_build.atlas.manifest import Manifest

    Manifest.load(atlas_editor.root)


def test_hidden_files_outside_the_data_folders_are_not_refused(atlas_editor):
    """An explorer site or a user's .git inside the atlas folder holds hidden files of its own: not data."""
    from atlas_build.atlas.manifest import Manifest

    (atlas_editor.root / "site").mkdir()
    (atlas_editor.root / "site" / ".routing-atlas-explorer").write_text("{}")
    (atlas_editor.root / ".git").mkdir()
    Manifest.load(atlas_editor.root)


def test_no_tokenizer_code_runs(atlas_editor, tmp_path):
    """A models row naming a tokenizer with custom code: validation loads it with trust_remote_code=False."""
    import json

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    sentinel = tmp_path / "code-ran"
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "auto_map": {"AutoTokenizer": ["tok.CustomTokenizer", None]},
                "tokenizer_class": "CustomTokenizer",
            }
        )
    )
    (folder / "tok.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    _set(atlas_editor, "models", "tokenizer", [0], [str(folder)])
    from atlas_build.models import load_tokenizer

    report = run_validation(atlas_editor.root)
    with pytest.raises(Exception):  # noqa: B017 - refused one way or another, never run
        load_tokenizer(str(folder))
    assert not sentinel.exists()
    assert report.get(R, "tokenization").status == "skipped"


def test_the_tokenization_check_compares_with_an_independent_tokenization(atlas_editor):
    """The fixture's tokenizer splits on whitespace: the rows' spans are the words' own spans."""
    table = atlas_editor.routing()
    rows = atlas_editor.text_rows(table, FIRST)
    text = "ctx0 ctx0 lemma00000 ctx0 end"
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    spans = np.stack(
        [table.column("char_start").to_numpy()[rows], table.column("char_end").to_numpy()[rows]], 1
    )
    assert [tuple(s) for s in spans.tolist()] == words


# ---- on a real atlas: the built-in (RANDOM-INIT) model, its tokenizer and its checkpoint's marker ----------


def test_a_real_atlas_is_retokenized_and_its_random_init_labels_agree(atlas_copy):
    """The demo-size atlas of tiny-deepseek-v3 passes every claims check with the built-in tokenizer; a models row
    rewritten to say "trained" (card rendered again to match) is caught by the build records and the
    checkpoint's own marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA
    from atlas_build.atlas.store import write_config
    from atlas_build.models import checkpoint_marker, load_tokenizer
    from dataset_cards.render import write_card

    options = {"tokenizer_loader": load_tokenizer, "checkpoint_marker": checkpoint_marker}
    report = run_validation(atlas_copy, **options)
    assert report.passed, report.render_table(only_problems=True)
    tokenization = report.get("routing-tiny-deepseek-v3", "tokenization")
    assert tokenization.status == "passed" and tokenization.details["checked"] > 100

    manifest = Manifest.load(atlas_copy)
    rows = pq.read_table(atlas_copy / manifest.config_files(MODELS)[0]).to_pylist()
    rows[0]["random_init"] = False
    write_config(
        atlas_copy, manifest, MODELS, pa.Table.from_pylist(rows, schema=MODELS_SCHEMA), MODELS_SCHEMA
    )
    manifest.save(atlas_copy)
    write_card(atlas_copy)
    report = run_validation(atlas_copy, **options)
    assert _failed(report) == {"models:random-init-labels"}, report.render_table(only_problems=True)
    (example,) = report.get("models", "random-init-labels").failing_examples
    assert (
        "notes call it RANDOM-INIT" in example and "checkpoint's config.json marks it random_init" in example
    )
