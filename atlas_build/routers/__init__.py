"""Router adapters, one per MoE architecture, registered by transformers `model_type`."""

from __future__ import annotations

from atlas_build.registry import Registry
from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError

ADAPTERS = Registry(
    "router adapter",
    {
        "deepseek_v2": "atlas_build.routers.deepseek_v2:DeepseekV2Adapter",
        "deepseek_v3": "atlas_build.routers.deepseek_v3:DeepseekV3Adapter",
        "mixtral": "atlas_build.routers.mixtral:MixtralAdapter",
        "olmoe": "atlas_build.routers.olmoe:OlmoeAdapter",
        "qwen2_moe": "atlas_build.routers.qwen2_moe:Qwen2MoeAdapter",
        "qwen3_moe": "atlas_build.routers.qwen3_moe:Qwen3MoeAdapter",
    },
)

# model_types known to be MoE but without an adapter here: named in the error, not guessed at.
KNOWN_UNSUPPORTED_MOE = ("jamba", "dbrx", "granitemoe", "phimoe", "gpt_oss", "llama4", "deepseek_v32")


def adapter_for(config) -> RouterAdapter:
    """The adapter for a transformers config, or UnsupportedModelError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(ADAPTERS.names())
    if model_type in ADAPTERS:
        return ADAPTERS.get(model_type)()
    if model_type in KNOWN_UNSUPPORTED_MOE or _looks_moe(config):
        raise UnsupportedModelError(
            f"model_type {model_type!r} is a Mixture-of-Experts architecture without a router adapter; "
            f"supported MoE architectures: {supported}. Add one in atlas_build/routers/."
        )
    raise UnsupportedModelError(
        f"model_type {model_type!r} is a dense model (no MoE router to record); "
        f"supported MoE architectures: {supported}."
    )


def _looks_moe(config) -> bool:
    keys = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    return any((getattr(config, key, None) or 0) > 1 for key in keys)


__all__ = ["ADAPTERS", "RouterAdapter", "RoutingSpec", "UnsupportedModelError", "adapter_for"]
