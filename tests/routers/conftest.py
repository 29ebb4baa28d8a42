"""Tiny random checkpoints, one per routed architecture, built offline and shared by the router tests.

Each checkpoint is a standard HF directory (config.json, safetensors, a word-level fast tokenizer with
offsets), small enough for two CPU cores. Router weights are re-drawn wider than HF's std 0.02 so that
expert choices are decided by clear margins rather than float noise; DeepSeek-V3 and GLM-4 MoE also get a
non-zero `e_score_correction_bias`, GPT-OSS a non-zero router bias. Multimodal families (Llama 4,
Qwen3.5-MoE) are saved as their released wrapper (`*ForConditionalGeneration`, with a tiny vision tower), so
the engine reads them as it reads a real checkpoint: the MoE settings in `text_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Texts routed in the tests: different lengths, so that batches are padded.
TEXTS = [
    "the bank of the river was muddy after the rain",
    "she deposited money at the bank",
    "fox",
    "a quick brown fox jumps over the lazy dog near the old bank of the river today",
    "they sat on the bank",
]
# Tokenizer training corpus: a few words of TEXTS are left out on purpose, so [UNK] is routed too.
CORPUS = [
    "the bank of the river was muddy after the rain",
    "she deposited money at the bank",
    "a quick brown fox jumps over the lazy dog",
    "they sat on the old bank and talked",
]
VOCAB_SIZE = 64
# Qwen3.5's AutoTokenizer class rebuilds a byte-level BPE from tokenizer.json whatever its tokenizer_class
# says, so those checkpoints get a byte-level BPE (256 byte symbols + merges learnt from CORPUS).
BYTE_BPE_VOCAB_SIZE = 320


@dataclass(frozen=True)
class Case:
    """One tiny checkpoint: its architecture, config and what the tests expect of it.

    Attributes:
        name: fixture key (an architecture, or architecture + variant).
        model_type: transformers `model_type` (the adapter registry key).
        config: keyword arguments of the config class.
        config: keyword arguments of the config class (of `text_config` when `wrapper` is set).
        moe_block: class name of the decoder layers' MoE block (`layer.<block_attr>`).
        moe_layers: the decoder layers that must be MoE.
        router_std: std of the re-drawn router weights.
        bias_std: std of the router's `bias_attr` tensor (0: left at zero).
        block_attr: decoder-layer attribute holding the MoE block.
        router_attr: MoE-block attribute holding the router.
        bias_attr: the router tensor that `bias_std` re-draws.
        wrapper: the other sub-configs of a multimodal wrapper (e.g. `vision_config`); None for a plain
            causal LM.
        tokenizer: "word" (word-level, [BOS] prepended) or "byte_bpe" (byte-level BPE, no BOS).
    """

    name: str
    model_type: str
    config: dict[str, Any]
    moe_block: str
    moe_layers: tuple[int, ...]
    router_std: float = 0.5
    bias_std: float = 0.0
    block_attr: str = "mlp"
    router_attr: str = "gate"
    bias_attr: str = "e_score_correction_bias"
    wrapper: dict[str, Any] | None = None
    tokenizer: str = "word"


_COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
_MLA = {  # DeepSeek multi-head latent attention, scaled down
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "q_lora_rank": 24,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
}

_LLAMA4_TEXT = {
    **_COMMON,
    "head_dim": 8,
    "intermediate_size": 16,  # each expert, and the shared expert
    "intermediate_size_mlp": 48,  # the dense layers
    "num_hidden_layers": 4,
    "interleave_moe_layer_step": 2,  # Maverick's interleaving: layers 1 and 3 MoE
    "num_local_experts": 8,
    "attention_chunk_size": 8,  # shorter than the longest text: chunked attention matters
}
_LLAMA4_VISION = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 16,
    "patch_size": 4,
    "vision_output_dim": 16,
    "projector_input_dim": 16,
    "projector_output_dim": 32,
}
_QWEN3_5_TEXT = {
    **_COMMON,
    "vocab_size": BYTE_BPE_VOCAB_SIZE,
    "head_dim": 8,
    "num_hidden_layers": 4,  # Gated DeltaNet in layers 0-2, full attention in layer 3
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
}
_QWEN3_5_VISION = {
    "depth": 1,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_heads": 2,
    "out_hidden_size": 32,
    "num_position_embeddings": 16,
    "patch_size": 4,
}

CASES = {
    case.name: case
    for case in [
        Case(
            "deepseek_v2_greedy",
            "deepseek_v2",
            {
                **_COMMON,
                **_MLA,
                "num_hidden_layers": 3,
                "first_k_dense_replace": 1,
                "n_routed_experts": 8,
                "n_shared_experts": 1,
                "moe_intermediate_size": 16,
                "num_experts_per_tok": 2,
                "topk_method": "greedy",
                "routed_scaling_factor": 2.0,
            },
            "DeepseekV2Moe",
            (1, 2),
        ),
        Case(
            "deepseek_v2_group_limited",
            "deepseek_v2",
            {
                **_COMMON,
                **_MLA,
                "num_hidden_layers": 3,
                "first_k_dense_replace": 1,
                "n_routed_experts": 16,
                "n_shared_experts": 2,
                "moe_intermediate_size": 8,
                "num_experts_per_tok": 3,
                "topk_method": "group_limited_greedy",
                "n_group": 4,
                "topk_group": 2,
                "routed_scaling_factor": 16.0,
            },
            "DeepseekV2Moe",
            (1, 2),
        ),
        Case(
            "deepseek_v3",
            "deepseek_v3",
            {
                **_COMMON,
                **_MLA,
                "num_hidden_layers": 3,
                "first_k_dense_replace": 1,
                "n_routed_experts": 16,
                "n_shared_experts": 1,
                "moe_intermediate_size": 8,
                "num_experts_per_tok": 4,
                "n_group": 4,
                "topk_group": 2,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
                "num_nextn_predict_layers": 0,
            },
            "DeepseekV3MoE",
            (1, 2),
            router_std=0.15,
            bias_std=0.1,
        ),
        Case(
            "mixtral",
            "mixtral",
            {
                **_COMMON,
                "num_hidden_layers": 2,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "sliding_window": None,
            },
            "MixtralSparseMoeBlock",
            (0, 1),
        ),
        Case(
            "qwen2_moe",
            "qwen2_moe",
            {
                **_COMMON,
                "num_hidden_layers": 4,
                "decoder_sparse_step": 2,  # layers 1 and 3 MoE, 0 and 2 dense
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 16,
                "shared_expert_intermediate_size": 32,
                "norm_topk_prob": False,
            },
            "Qwen2MoeSparseMoeBlock",
            (1, 3),
        ),
        Case(
            "qwen3_moe",
            "qwen3_moe",
            {
                **_COMMON,
                "head_dim": 8,
                "num_hidden_layers": 3,
                "mlp_only_layers": [1],  # layer 1 dense, 0 and 2 MoE
                "num_experts": 8,
                "num_experts_per_tok": 3,
                "moe_intermediate_size": 16,
                "norm_topk_prob": True,
            },
            "Qwen3MoeSparseMoeBlock",
            (0, 2),
        ),
        Case(
            "olmoe",
            "olmoe",
            {
                **_COMMON,
                "num_hidden_layers": 2,
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "norm_topk_prob": False,
            },
            "OlmoeSparseMoeBlock",
            (0, 1),
        ),
        Case(
            "glm4_moe",
            "glm4_moe",
            {
                **_COMMON,
                "head_dim": 8,
                "num_hidden_layers": 3,
                "first_k_dense_replace": 1,
                "n_routed_experts": 16,
                "n_shared_experts": 1,
                "moe_intermediate_size": 8,
                "num_experts_per_tok": 4,
                "n_group": 4,  # released GLM-4.5 uses 1 group; 4 exercise the group limit
                "topk_group": 2,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
                "num_mtp_layers": 0,
            },
            "Glm4MoeMoE",
            (1, 2),
            router_std=0.15,
            bias_std=0.1,
        ),
        Case(
            "gpt_oss",
            "gpt_oss",
            {
                **_COMMON,
                "head_dim": 8,
                "num_hidden_layers": 2,  # sliding, then full attention
                "sliding_window": 4,  # shorter than most texts: the window matters
                "num_local_experts": 8,
                "num_experts_per_tok": 3,
                "intermediate_size": 16,
            },
            "GptOssMLP",
            (0, 1),
            router_attr="router",
            bias_std=0.5,
            bias_attr="bias",
        ),
        Case(
            "llama4_text",
            "llama4_text",
            {
                **_LLAMA4_TEXT,
                "num_experts_per_tok": 2,  # releases route top-1; 2 checks the order of a top-k
            },
            "Llama4TextMoe",
            (1, 3),
            block_attr="feed_forward",
            router_attr="router",
        ),
        Case(
            "llama4",
            "llama4",
            {**_LLAMA4_TEXT, "num_experts_per_tok": 1},
            "Llama4TextMoe",
            (1, 3),
            block_attr="feed_forward",
            router_attr="router",
            wrapper={"vision_config": _LLAMA4_VISION},
        ),
        Case(
            "qwen3_5_moe",
            "qwen3_5_moe",
            _QWEN3_5_TEXT,
            "Qwen3_5MoeSparseMoeBlock",
            (0, 1, 2, 3),
            wrapper={"vision_config": _QWEN3_5_VISION},
            tokenizer="byte_bpe",
        ),
        Case(
            "qwen3_5_moe_text",
            "qwen3_5_moe_text",
            {**_QWEN3_5_TEXT, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]},
            "Qwen3_5MoeSparseMoeBlock",
            (0, 1),
            tokenizer="byte_bpe",
        ),
    ]
}


def make_config(case: Case):
    """The transformers config of a case (from its model_type, as AutoConfig would build it)."""
    from transformers import AutoConfig

    if case.wrapper is not None:
        return AutoConfig.for_model(case.model_type, text_config=dict(case.config), **case.wrapper)
    return AutoConfig.for_model(case.model_type, **case.config)


def build_model(case: Case, seed: int = 0):
    """Seeded random-init model of a case, with wide routers (and a router bias where `bias_std` says).

    A wrapper case is built as its multimodal class (the layout of the released checkpoints).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    config = make_config(case)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if case.wrapper is not None else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.modules():  # in layer order
            if type(block).__name__ != case.moe_block:
                continue
            gate = getattr(block, case.router_attr)
            gate.weight.normal_(0.0, case.router_std, generator=generator)
            if case.bias_std:
                bias = getattr(gate, case.bias_attr)
                bias.copy_(torch.randn(bias.shape, generator=generator) * case.bias_std)
    return model.eval()


def write_byte_bpe_tokenizer(path: Path) -> None:
    """A byte-level BPE fast tokenizer (offsets, no BOS, <|endoftext|> id 0 as pad) trained on CORPUS: the
    shape of Qwen's tokenizers, which Qwen3_5Tokenizer loads as it is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BYTE_BPE_VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    assert tokenizer.get_vocab_size() <= BYTE_BPE_VOCAB_SIZE
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(path)


def write_tokenizer(path: Path, kind: str = "word") -> None:
    """A word-level fast tokenizer (offsets, [BOS] prepended, [PAD] id 0) trained on CORPUS."""
    if kind == "byte_bpe":
        return write_byte_bpe_tokenizer(path)
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[BOS]", "[UNK]"], vocab_size=VOCAB_SIZE)
    tokenizer.train_from_iterator(CORPUS, trainer)
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A [BOS] $B", special_tokens=[("[BOS]", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(name) -> Path`: the checkpoint directory of `CASES[name]`, built once a session."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            path = tmp_path_factory.mktemp(name)
            build_model(CASES[name]).save_pretrained(path)
            write_tokenizer(path, CASES[name].tokenizer)
            built[name] = path
        return built[name]

    return get
