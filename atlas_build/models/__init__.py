"""Built-in checkpoints, materialised on demand as standard HF checkpoint directories."""

from __future__ import annotations

import os
from pathlib import Path

from atlas_build.models import tiny_deepseek_v3

BUILTIN = {tiny_deepseek_v3.NAME: tiny_deepseek_v3}


def cache_root() -> Path:
    base = os.environ.get("ROUTING_ATLAS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "routing-atlas"
    )
    return Path(base)


def builtin_checkpoint(name: str) -> Path:
    """The materialised checkpoint of a built-in model, generated once per generator version.

    The cached directory is exactly what `atlas model materialize NAME DIR` writes.
    """
    module = BUILTIN[name]
    path = cache_root() / "models" / f"{name}-g{module.GENERATOR_VERSION}-s{module.DEFAULT_SEED}"
    if not (path / "config.json").exists():
        module.materialize(path, seed=module.DEFAULT_SEED, overwrite=True)
    return path


def load_tokenizer(spec: str):
    """A models row's `tokenizer` -> the tokenizer: built-in names resolve to their materialised checkpoint."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_checkpoint(spec) if spec in BUILTIN else spec)
