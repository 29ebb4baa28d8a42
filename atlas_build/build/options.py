"""`BuildConfig` (the options of `atlas build`, checked on construction) and `BuildStats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_build.atlas.schema import (
    check_slug,
)
from atlas_build.errors import BuildOptionsError

# The user's corpora, by kind: the option that names the input (`atlas_build.corpora.CUSTOM_CORPORA` reads them).
CUSTOM_CORPUS_INPUTS = {"wic": "wic", "swords": "swords", "jsonl": "texts", "text": "texts"}
CORPORA = ("wordnet", "traces", *CUSTOM_CORPUS_INPUTS)
WEIGHT_STORAGE = ("float16", "float32")


@dataclass
class BuildConfig:
    """Options of `atlas build`; see `atlas build --help` for each."""

    model: str
    out: Path
    corpus: str = "wordnet"
    # Corpus options: part of the atlas's identity (a second model must route the same texts).
    max_lemmas: int | None = None
    wordnet_dir: str | None = None
    traces: str | None = None
    # The user's corpora: --wic DIR, --swords FILE, --texts FILE (jsonl) or FILE_OR_DATASET (text).
    wic: str | None = None
    swords: str | None = None
    texts: str | None = None
    text_column: str | None = None  # --corpus text: the column (field) holding the text; default "text"
    seed: int = 0
    # Engine options.
    engine: str = "hf"
    revision: str | None = None
    device: str = "cpu"
    device_map: str | None = None
    dtype: str = "float32"
    batch_size: int = 16
    trust_remote_code: bool = False
    random_init: bool = False
    # Engine-specific keyword arguments, passed to the engine as they are (vllm: tensor_parallel_size).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Storage: float16 halves the routing bytes; the order is taken from float32 before rounding.
    weights_dtype: str = "float16"
    slug: str | None = None
    texts_per_shard: int = 512
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.corpus not in CORPORA:
            raise BuildOptionsError(f"--corpus must be one of {CORPORA}, got {self.corpus!r}")
        if self.max_lemmas is not None and self.max_lemmas < 1:
            raise BuildOptionsError(f"--max-lemmas must be at least 1, got {self.max_lemmas}")
        if self.batch_size < 1:
            raise BuildOptionsError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.texts_per_shard < 1:
            raise BuildOptionsError(f"--texts-per-shard must be at least 1, got {self.texts_per_shard}")
        if self.weights_dtype not in WEIGHT_STORAGE:
            raise BuildOptionsError(
                f"--weights-dtype must be one of {WEIGHT_STORAGE}, got {self.weights_dtype!r}"
            )
        if self.corpus == "traces" and not self.traces:
            raise BuildOptionsError("--corpus traces needs --traces FILE.jsonl")
        self._check_custom_inputs()
        if self.out.exists() and not self.out.is_dir():
            raise BuildOptionsError(f"--out {self.out} is a file; pass a directory for the atlas")
        if self.slug is not None:
            try:
                check_slug(self.slug)
            except ValueError as error:
                raise BuildOptionsError(str(error)) from None

    def _check_custom_inputs(self) -> None:
        """Each input option goes with its corpus: a --wic given to --corpus jsonl would be silently unused."""
        metavar = {"wic": "--wic DIR", "swords": "--swords FILE", "texts": "--texts FILE"}
        wanted = CUSTOM_CORPUS_INPUTS.get(self.corpus)
        for option in ("wic", "swords", "texts"):
            given = getattr(self, option) is not None
            if option == wanted and not given:
                raise BuildOptionsError(f"--corpus {self.corpus} needs {metavar[option]}")
            if given and option != wanted:
                users = [kind for kind, name in CUSTOM_CORPUS_INPUTS.items() if name == option]
                raise BuildOptionsError(
                    f"--{option} is an option of --corpus {' or '.join(users)}, not of --corpus {self.corpus}"
                )
        if self.text_column is not None and self.corpus != "text":
            raise BuildOptionsError(
                f"--text-column is an option of --corpus text, not of --corpus {self.corpus}"
            )

    def corpus_input(self) -> str | None:
        """The input path of a user's corpus (None for wordnet and traces)."""
        option = CUSTOM_CORPUS_INPUTS.get(self.corpus)
        return getattr(self, option) if option else None

    def corpus_options(self) -> dict[str, Any]:
        return {"corpus": "wordnet", "max_lemmas": self.max_lemmas, "seed": self.seed}

    def engine_options(self) -> dict[str, Any]:
        keys = (
            "engine",
            "revision",
            "device",
            "device_map",
            "dtype",
            "batch_size",
            "random_init",
            "weights_dtype",
            "engine_kwargs",
        )
        return {key: getattr(self, key) for key in keys}


@dataclass
class BuildStats:
    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    shards_skipped: int = 0
    files: int = 0
    bytes: int = 0
    routing_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Routing throughput: tokens routed and written per second of the routing step."""
        return self.tokens / self.routing_seconds if self.routing_seconds > 0 else 0.0
