"""Every MoE family of the installed transformers, with its status here: verified, refused (why), not MoE.

A family is a transformers `models/<module>` folder. It looks MoE when its configuration declares an expert
count (`num_experts`, `n_routed_experts`, `num_local_experts`, `moe_num_experts`) or its modeling code
defines a router class (`*TopKRouter`, `*TopkRouter`, `*Router`); the scan reads the installed source files,
imports nothing, and so sees a family the day transformers adds it. A family is verified when one of its
model_types has a router adapter (tests/routers recomputes each); otherwise it must be named below, refused
with the reason or marked not MoE, and tests/routers/test_model_list fails until it is.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_KEYS = re.compile(r"^\s+(num_experts|n_routed_experts|num_local_experts|moe_num_experts)\s*[:=]", re.M)
_ROUTER = re.compile(r"^class \w*(TopKRouter|TopkRouter|Router)\(", re.M)

_NO_CAUSAL_LM = (
    "a multimodal checkpoint whose MoE text tower has no causal-LM class in this transformers; loading it as "
    "image-text-to-text and routing its text tower (as for Qwen3-VL-MoE) is not yet verified for it here"
)
_NOT_DECODER = "not a decoder-only causal LM (the engine routes causal LMs over text)"


def _unverified(router: str) -> str:
    return (
        f"{router}: no float64 recomputation in tests/routers yet, so refused rather than recorded unverified"
    )


# Families (transformers module names) known to be MoE and refused, with the reason.
REFUSED = {
    "axk1": _unverified("AXK1's MoE router"),
    "axk2": _unverified("AXK2's MoE router"),
    "beam": _unverified("Beam's MoE router"),
    "cohere2_moe": _unverified("Cohere2-MoE's router"),
    "dbrx": "DbrxRouter returns the logits only; top-k and the p-norm renormalisation (moe_normalize_expert_"
    "weights) happen in the experts block, outside the router contract: needs its own adapter, not yet written",
    "deepseek_ocr2": _NO_CAUSAL_LM,
    "diffusion_gemma": "a diffusion LM (no causal decoder to route text through)",
    "doge": "Doge's cross-domain MoE picks top-k of num_experts embedding experts through product keys (two "
    "top-ks over sqrt(num_experts) half-keys): no per-expert router score in the contract; not yet recomputed",
    "dots3_note": _unverified("dots3's MoE router"),
    "ernie4_5_vl_moe": _NO_CAUSAL_LM + "; its text and vision experts are routed by modality",
    "flint": _unverified("Flint's MoE router"),
    "gemma4": _unverified("Gemma 4's MoE router"),
    "glm4v_moe": _NO_CAUSAL_LM,
    "granite_docling": _NO_CAUSAL_LM,
    "hy_v4": _unverified("Hunyuan v4's MoE router"),
    "inkling": _unverified("Inkling's MoE router"),
    "inkling2": _unverified("Inkling 2's MoE router"),
    "jetmoe": "JetMoE routes attention heads as well as MLPs (mixture of attention heads): two routings per "
    "layer, which the one-router-per-layer atlas does not record",
    "kolibri1": _unverified("Kolibri's MoE router"),
    "mellum": _unverified("Mellum's MoE router"),
    "minimax_m3_vl": _unverified("MiniMax-M3-VL's text router"),
    "mistral4": _NO_CAUSAL_LM,
    "mistral_large4": _NO_CAUSAL_LM,
    "muse_spark": _NO_CAUSAL_LM,
    "nemotron_h": _unverified("Nemotron-H's MoE router (hybrid Mamba layers)"),
    "nllb_moe": _NOT_DECODER + ": an encoder-decoder translation model",
    "openai_privacy_filter": _NOT_DECODER + ": a token classifier",
    "phimoe": "PhimoeTopKRouter chooses by sparsemixer (the second expert after masking the first, weights "
    "from masked softmaxes): no single per-expert selection score; its recomputation is not yet written",
    "qwen3_omni_moe": _NO_CAUSAL_LM + " (the thinker's text tower sits two configs deep)",
    "qwen4_exp": _unverified("Qwen4-exp's MoE router"),
    "switch_transformers": _NOT_DECODER + ": an encoder-decoder (T5-style) model",
    "unlimited_ocr": _NO_CAUSAL_LM,
    "zaya": _unverified("ZAYA's MoE router"),
}

# Families the scan flags that are not Mixture-of-Experts language models, with why.
NOT_MOE = {
    "vitpose_backbone": "a vision pose backbone: its `num_experts` are per-dataset MLP branches chosen by the "
    "dataset index, not a token router",
}


@cache
def installed_families() -> dict[str, list[str]]:
    """`{module: [model_type, ...]}` of every family of the installed transformers that looks MoE."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    root = Path(transformers.__file__).parent / "models"
    by_module: dict[str, list[str]] = {}
    for model_type in CONFIG_MAPPING_NAMES:
        by_module.setdefault(model_type_to_module_name(model_type), []).append(model_type)
    out = {}
    for module, types in sorted(by_module.items()):
        folder = root / module
        if not folder.is_dir():
            continue
        configs = "".join(p.read_text(encoding="utf-8") for p in folder.glob("configuration_*.py"))
        if _KEYS.search(configs) or any(
            _ROUTER.search(p.read_text(encoding="utf-8")) for p in folder.glob("modeling_*.py")
        ):
            out[module] = types
    return out


def refusal(model_type: str) -> str | None:
    """Why `model_type`'s family is refused, or None when it is not named as refused."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    return REFUSED.get(model_type_to_module_name(model_type)) if model_type else None


def family_status(module: str, model_types: list[str]) -> tuple[str, str]:
    """`(status, detail)`: ("verified", adapters), ("refused", reason), ("not MoE", why) or ("unknown", "")."""
    from atlas_build.routers import ADAPTERS

    verified = [t for t in model_types if t in ADAPTERS]
    if verified:
        return "verified", ", ".join(verified)
    if module in REFUSED:
        return "refused", REFUSED[module]
    if module in NOT_MOE:
        return "not MoE", NOT_MOE[module]
    return "unknown", ""


def catalog() -> list[dict[str, object]]:
    """Every MoE-looking family of the installed transformers, plus every refused or verified one the scan
    misses (a wrapper whose MoE keys sit in another family's config), each with its status."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    from atlas_build.routers import ADAPTERS

    families = dict(installed_families())
    for module in REFUSED:
        families.setdefault(module, [module])
    for name in ADAPTERS.names():
        families.setdefault(model_type_to_module_name(name), [name])
    rows = []
    for module, types in sorted(families.items()):
        status, detail = family_status(module, types)
        rows.append({"family": module, "model_types": sorted(set(types)), "status": status, "detail": detail})
    return rows
