"""Built-in checkpoints, materialised on demand as standard HF checkpoint directories."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from atlas_build.models import tiny_deepseek_v3

BUILTIN = {tiny_deepseek_v3.NAME: tiny_deepseek_v3}


def cache_root() -> Path:
    base = os.environ.get("ROUTING_ATLAS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "routing-atlas"
    )
    return Path(base)


# Checkpoints whose hash was checked in this process: path -> (hash, listing), re-checked when files change.
_VERIFIED: dict[Path, tuple[str, tuple]] = {}


def directory_sha256(path: Path) -> str:
    """sha256 over the names and bytes of every file of a checkpoint directory (its hash record excepted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != HASH_FILE):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


HASH_FILE = ".routing-atlas-sha256"


def _listing(path: Path) -> tuple:
    return tuple(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(path).iterdir()) if p.is_file()
    )


def builtin_checkpoint(name: str) -> Path:
    """The materialised checkpoint of a built-in model, generated once per generator version.

    The cached directory is exactly what `atlas model materialize NAME DIR` writes, plus the hash of its
    files recorded when it was generated. The hash is checked before every first use in a process: a cached
    copy that was modified (or damaged) is generated again, never used.
    """
    module = BUILTIN[name]
    path = cache_root() / "models" / f"{name}-g{module.GENERATOR_VERSION}-s{module.DEFAULT_SEED}"
    if not (path / "config.json").exists() or not (path / HASH_FILE).exists():
        _generate(module, path)
    verified = _VERIFIED.get(path)
    if verified is not None and verified[1] == _listing(path):
        return path
    recorded = (path / HASH_FILE).read_text(encoding="utf-8").strip()
    if directory_sha256(path) != recorded:
        sys.stderr.write(
            f"warning: the cached built-in model {name} at {path} does not match the hash recorded when it was "
            "generated (modified or damaged); generating it again\n"
        )
        _generate(module, path)
    _VERIFIED[path] = ((path / HASH_FILE).read_text(encoding="utf-8").strip(), _listing(path))
    return path


def _generate(module, path: Path) -> None:
    module.materialize(path, seed=module.DEFAULT_SEED, overwrite=True)
    (path / HASH_FILE).write_text(directory_sha256(path) + "\n", encoding="utf-8")


def load_tokenizer(spec: str):
    """A models row's `tokenizer` -> the tokenizer: built-in names resolve to their materialised checkpoint.

    Never runs code named by the atlas: `trust_remote_code=False`, whatever the tokenizer's files ask for.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        builtin_checkpoint(spec) if spec in BUILTIN else spec, trust_remote_code=False
    )


def checkpoint_marker(row: dict) -> dict | None:
    """The `routing_atlas` marker (config.json) of a models row's checkpoint: a built-in model's generated
    checkpoint, or a local checkpoint directory; None for anything else (hub ids are not fetched)."""
    model_id = str(row.get("model_id") or "")
    path = builtin_checkpoint(model_id) if model_id in BUILTIN else Path(model_id)
    config = path / "config.json"
    if (not path.is_absolute() and model_id not in BUILTIN) or not config.is_file():
        return None
    return (json.loads(config.read_text(encoding="utf-8")) or {}).get("routing_atlas")
