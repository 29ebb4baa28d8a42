"""Router adapters, one per MoE architecture, registered by transformers `model_type`."""

from __future__ import annotations

from atlas_build.registry import Registry
from atlas_build.routers.base import (
    VERIFIED_FOR_ALL,
    RouterAdapter,
    RoutingSpec,
    UnsupportedModelError,
    decoder_config,
)
from atlas_build.routers.families import FAMILIES

ADAPTERS = Registry(
    "router adapter",
    {
        "deepseek_v2": "atlas_build.routers.deepseek_v2:DeepseekV2Adapter",
        "llama4": "atlas_build.routers.llama4:Llama4Adapter",
        "llama4_text": "atlas_build.routers.llama4:Llama4TextAdapter",
        "qwen3_5_moe": "atlas_build.routers.qwen3_5_moe:Qwen3_5MoeAdapter",
        "qwen3_5_moe_text": "atlas_build.routers.qwen3_5_moe:Qwen3_5MoeTextAdapter",
    }
    | {name: f"atlas_build.routers.families:{name}" for name in FAMILIES},
)

# Config keys whose value > 1 marks a Mixture-of-Experts model (at the top or in a sub-config).
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def adapter_for(config) -> RouterAdapter:
    """The adapter for a transformers config, or UnsupportedModelError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(ADAPTERS.names())
    if model_type in ADAPTERS:
        return ADAPTERS.get(model_type)()
    from atlas_build.routers.catalog import refusal

    reason = refusal(model_type)
    if reason:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is a Mixture-of-Experts family the atlas refuses: {reason}; "
            f"supported MoE architectures: {supported} (see `atlas model list`)."
        )
    moe_in = moe_config_name(config)
    if moe_in is not None:
        where = f" (its MoE settings are in {moe_in})" if moe_in else ""
        raise UnsupportedModelError(
            f"model_type {model_type!r} is a Mixture-of-Experts architecture without a router adapter{where}; "
            f"supported MoE architectures: {supported}. Add one in atlas_build/routers/."
        )
    raise UnsupportedModelError(
        f"model_type {model_type!r} is a dense model (no MoE router to record); "
        f"supported MoE architectures: {supported}."
    )


def moe_config_name(config, _path: str = "config", _depth: int = 0) -> str | None:
    """Where `config` says it has routed experts: "config", "config.text_config", ... or None (dense).

    Multimodal wrappers (Qwen3.5-MoE, Qwen3-VL-MoE, GLM-4.5V, Llama 4) keep the text decoder's MoE keys in
    a sub-config, so sub-configs are searched too (two levels: Qwen3-Omni nests `thinker_config.text_config`).
    """
    if _looks_moe(config):
        return _path
    if _depth >= 2:
        return None
    for name in _sub_config_names(config):
        found = moe_config_name(getattr(config, name, None), f"{_path}.{name}", _depth + 1)
        if found:
            return found
    return None


def _sub_config_names(config) -> list[str]:
    from transformers import PretrainedConfig

    names = list(getattr(config, "sub_configs", None) or {})
    for name, value in (vars(config) if hasattr(config, "__dict__") else {}).items():
        if isinstance(value, PretrainedConfig) and name not in names:
            names.append(name)
    return names


def _looks_moe(config) -> bool:
    if config is None:
        return False
    for key in MOE_KEYS:
        try:
            value = getattr(config, key, None)
        except Exception:  # e.g. heterogeneous configs refuse global reads of per-layer keys
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return True
    return False


__all__ = [
    "ADAPTERS",
    "VERIFIED_FOR_ALL",
    "RouterAdapter",
    "RoutingSpec",
    "UnsupportedModelError",
    "adapter_for",
    "decoder_config",
    "moe_config_name",
]
