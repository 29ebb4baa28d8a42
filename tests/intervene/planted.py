"""A planted-causal checkpoint: a tiny Mixtral in which expert E at layer 1 decides one sense's next token.

Built in float32 from a seed, with a word-level tokenizer over the probe texts:
- residual dimension 0 carries "this token is `bank`" (only `bank`'s embedding has it; nothing writes it), and
  dimension 1 is 1 for every token (so the router can make one expert frequent);
- layer 1's router sends `bank` to E (dimension 0) and every token to F (dimension 1);
- E's output projection writes a direction that the LM head reads as `of`: in the river sense's texts
  ("the bank of the river") E makes the next token certain; F is a plain random expert, only frequent.
So ablating E must lower log p(next token) in the river texts far beyond load-matched random experts, and
ablating F must not.
"""

from __future__ import annotations

import json
from pathlib import Path

PLANTED, FREQUENT, LAYER = 5, 2, 1
RIVER = [
    "we walked along the bank of the river",
    "the muddy bank of the river was steep",
    "fish rest near the bank of the stream",
    "a willow grew on the bank of the lake",
    "children played on the far bank of the pond",
    "the grassy bank of the canal was wet",
    "he fished from the bank of the river today",
    "they camped by the bank of the creek",
    "ducks sat on the bank of the water",
    "the east bank of the river flooded",
]
MONEY = [
    "she paid the bank with cash",
    "the bank gave him a loan",
    "my bank closed early today",
    "a new bank opened downtown",
    "the bank charged a small fee",
    "his bank sent a letter",
    "that bank lends money to farmers",
    "the bank approved her loan quickly",
]


def probe_lines() -> list[dict]:
    lines = []
    for sense, texts in (("bank%river", RIVER), ("bank%money", MONEY)):
        for i, text in enumerate(texts):
            start = text.index("bank")
            lines.append(
                {
                    "id": f"{sense.split('%')[1]}-{i}",
                    "text": text,
                    "target_start": start,
                    "target_end": start + 4,
                    "label": sense,
                    "lemma": "bank",
                    "pos": "n",
                }
            )
    return lines


def write_probe(path: Path) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in probe_lines()), encoding="utf-8")
    return path


def write_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[BOS]", "[UNK]"], vocab_size=128)
    tokenizer.train_from_iterator(RIVER + MONEY, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A [BOS] $B", special_tokens=[("[BOS]", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.save_pretrained(path)
    return fast


def build_planted(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(path)
    vocab = tokenizer.get_vocab()
    config = AutoConfig.for_model(
        "mixtral",
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=False,
        sliding_window=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    bank, of = vocab["bank"], vocab["of"]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[bank, 0] = 3.0
        emb[:, 1] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:2] = 0.0  # nothing writes the two marker dimensions
            layer.mlp.experts.down_proj[:, :2] = 0.0
            layer.mlp.gate.weight.normal_(0.0, 0.5, generator=generator)
            layer.mlp.gate.weight[:, :2] = 0.0
        gate = model.model.layers[LAYER].mlp.gate.weight
        gate[PLANTED, 0] = 4.0
        gate[FREQUENT, 1] = 3.0
        experts = model.model.layers[LAYER].mlp.experts
        inner = experts.intermediate_dim
        direction = torch.randn(32, generator=generator)
        direction[:2] = 0.0
        direction /= direction.norm()
        experts.gate_up_proj[PLANTED] = 0.0
        experts.gate_up_proj[PLANTED, 0, 0] = 1.0  # gate unit 0 reads "bank"
        experts.gate_up_proj[PLANTED, inner, 0] = 1.0  # and so does its up unit
        experts.down_proj[PLANTED] = 0.0
        experts.down_proj[PLANTED, :, 0] = direction
        model.lm_head.weight[of] = 3.0 * direction
    model.save_pretrained(path)
    return path
