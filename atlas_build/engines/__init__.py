"""Engines: an engine turns texts into routing arrays (see `engines.base.Engine`)."""

from atlas_build.registry import Registry

ENGINES = Registry(
    "engine",
    {
        "hf": "atlas_build.engines.hf:HFEngine",
        # Imports vllm only when constructed; a missing vllm says how to install it.
        "vllm": "atlas_build.engines.vllm:VLLMEngine",
    },
)
