"""`BuildConfig` (the options of `atlas build`, checked on construction) and `BuildStats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_build.atlas.schema import (
    check_slug,
)
from atlas_build.errors import AtlasError, BuildOptionsError

# The user's corpora, by kind: the option that names the input (`atlas_build.corpora.CUSTOM_CORPORA` reads them).
CUSTOM_CORPUS_INPUTS = {"wic": "wic", "swords": "swords", "jsonl": "texts", "text": "texts"}
CORPORA = ("wordnet", "traces", *CUSTOM_CORPUS_INPUTS)
WEIGHT_STORAGE = ("float16", "float32")
# `--router-inputs` without `--router-input-dim`: 256 dimensions keep inner products within a few percent.
DEFAULT_ROUTER_INPUT_DIM = 256
# numpy's RandomState and torch.manual_seed both take seeds below 2**32 (torch wraps larger ones silently).
SEED_LIMIT = 2**32


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
    seed: int = 0  # numpy and torch seeds: 0 <= seed < 2**32
    # Engine options.
    engine: str = "hf"
    revision: str | None = None
    device: str = "cpu"
    device_map: str | None = None
    dtype: str = "float32"
    batch_size: int = 16
    trust_remote_code: bool = False
    random_init: bool = False
    # The name recorded for the model (default: hub id, checkpoint folder name or built-in name; never a path).
    model_id: str | None = None
    # torch's CPU threads (None: chosen by engines.threads.choose_threads).
    threads: int | None = None
    # Engine-specific keyword arguments, passed to the engine as they are (vllm: tensor_parallel_size).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Storage: float16 halves the routing bytes; the order is taken from float32 before rounding.
    weights_dtype: str = "float16"
    # `--scores M`: also store the top-M experts by the router's selection score, and those scores (hf only).
    scores: int | None = None
    # `--router-inputs LAYERS`: also store the router's input vector at these decoder layers ("all", or a
    # comma list of layers and a-b ranges), projected to `--router-input-dim D` (0: the full vector).
    router_inputs: str | None = None
    router_input_dim: int | None = None

    # `--replace-routing`: rebuild a model's routing with other storage settings (--scores, --weights-dtype),
    # replacing every corpus it routed; without it such a rebuild is refused.
    replace_routing: bool = False
    slug: str | None = None
    texts_per_shard: int = 512
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        # A quoted '~/x' reaches us unexpanded: it means the home folder, never a folder named '~'.
        for name in ("traces", "wordnet_dir", "wic", "swords", "texts"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                setattr(self, name, str(Path(value).expanduser()))
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
        if self.scores is not None and self.scores < 1:
            raise BuildOptionsError(
                f"--scores must be at least 1 (and at least the model's top-k), got {self.scores}"
            )
        if self.scores is not None and self.engine != "hf":
            raise BuildOptionsError(
                f"--scores needs --engine hf: the {self.engine} engine returns no router scores"
            )
        self._check_router_inputs()
        if self.corpus == "traces" and not self.traces:
            raise BuildOptionsError("--corpus traces needs --traces FILE.jsonl")
        if self.traces and self.corpus != "traces":
            raise BuildOptionsError(
                f"--traces is read only with --corpus traces (this is a --corpus {self.corpus} build): add "
                "--corpus traces, or leave out --traces"
            )
        if self.corpus != "wordnet":
            for option, value in (("--max-lemmas", self.max_lemmas), ("--wordnet-dir", self.wordnet_dir)):
                if value is not None:
                    raise BuildOptionsError(
                        f"{option} is an option of --corpus wordnet and does nothing with --corpus "
                        f"{self.corpus}: leave it out"
                    )
        if self.random_init and self.device_map:
            # from_config builds the twin on the CPU; a device map would be silently ignored.
            raise BuildOptionsError(
                "--random-init builds the twin in memory and cannot be spread with --device-map: use "
                "--device cuda for one GPU, or materialize a random-init checkpoint and pass its directory"
            )
        if not 0 <= self.seed < SEED_LIMIT:
            raise BuildOptionsError(f"--seed must be between 0 and {SEED_LIMIT - 1}, got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise BuildOptionsError(f"--threads must be at least 1, got {self.threads}")
        if self.engine == "vllm" and self.threads is not None:
            raise BuildOptionsError(
                "--threads sets the hf engine's CPU threads; vLLM runs on GPUs: leave it out"
            )
        self._check_custom_inputs()
        if self.out.exists() and not self.out.is_dir():
            raise BuildOptionsError(f"--out {self.out} is a file; pass a directory for the atlas")
        if self.model_id is not None:
            from atlas_build.engines.checkpoint import check_model_id

            try:
                check_model_id(self.model_id)
            except AtlasError as error:
                raise BuildOptionsError(str(error)) from None
        if self.slug is not None:
            try:
                check_slug(self.slug)
            except ValueError as error:
                raise BuildOptionsError(str(error)) from None

    def _check_router_inputs(self) -> None:
        """The option forms only; layers that are not MoE layers and D above the hidden size are refused by
        the engine, from the model's config, before its weights load."""
        if self.router_inputs is None:
            if self.router_input_dim is not None:
                raise BuildOptionsError(
                    "--router-input-dim sets the width of the stored router inputs: add --router-inputs LAYERS"
                )
            return
        if self.router_input_dim is None:
            self.router_input_dim = DEFAULT_ROUTER_INPUT_DIM
        if self.router_input_dim < 0:
            raise BuildOptionsError(
                f"--router-input-dim must be 0 (the full vector) or positive, got {self.router_input_dim}"
            )
        if self.engine != "hf":
            raise BuildOptionsError(
                f"--router-inputs needs --engine hf: the {self.engine} engine does not expose the router's input"
            )
        self.router_input_layer_list()

    def router_input_layer_list(self) -> tuple[int, ...] | str | None:
        """`--router-inputs` parsed: "all", a sorted tuple of decoder layers, or None."""
        spec = self.router_inputs
        if spec is None:
            return None
        if spec.strip().lower() == "all":
            return "all"
        layers: set[int] = set()
        for part in spec.split(","):
            first, dash, last = part.strip().partition("-")
            try:
                low = int(first)
                high = int(last) if dash else low
            except ValueError:
                raise BuildOptionsError(
                    f"--router-inputs {spec!r}: expected all, or decoder layers like 3,5,10-12"
                ) from None
            if low < 0 or high < low:
                raise BuildOptionsError(f"--router-inputs {spec!r}: {part.strip()!r} is not a layer or range")
            layers.update(range(low, high + 1))
        return tuple(sorted(layers))

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
            "threads",
            "scores",
            "router_inputs",
            "router_input_dim",
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
