"""Benchmark `atlas intervene`: the cost of one intervened text relative to one plain forward.

    .venv/bin/python bench/bench_intervene.py [--device cpu|cuda] [--texts 64] [--draws 19] [--quick]

On the built-in tiny-deepseek-v3 (RANDOM-INIT: timings only, no finding), with the same texts and batches:

    plain       the model's decoder stack + the LM head over every position, no hooks (one forward per text)
    clean       `Intervener.run` with no intervention (hooks that only read the routers, LM head around the
                target only)
    ablate      one hypothesis (one expert removed at one MoE layer, the family's own rule) + `--draws`
                load-matched random draws, all in the same batches: (1 + draws) forwards per text

Reported: seconds per text of each, and ablate's cost per intervened text (its time / (texts x (1 + draws)))
over plain's per text; the design target is about 1 (one forward per intervention, batched). On CPU torch
runs one thread and the clock is the process's CPU time (the machine is shared); on CUDA, wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "the",
    "bank",
    "of",
    "the",
    "river",
    "was",
    "muddy",
    "after",
    "rain",
    "and",
    "she",
    "deposited",
    "money",
    "at",
    "a",
    "branch",
    "near",
    "it",
]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(8, 20))))
        words[int(rng.integers(0, len(words)))] = "bank"
        out.append(" ".join(words))
    return out


def clock(device: str) -> float:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--draws", type=int, default=19)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="16 texts, 4 draws")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.draws = 16, 4
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    from atlas_build.engines.hf import HFEngine
    from atlas_build.intervene.examples import Example
    from atlas_build.intervene.run import CLEAN, Condition, Intervener, load_matched

    engine = HFEngine("tiny-deepseek-v3", device=args.device, batch_size=args.batch_size)
    tokenizer = engine.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = engine.detach_model()
    examples = [
        Example("senses", str(i), "bank", "s", t, t.index("bank"), t.index("bank") + 4)
        for i, t in enumerate(texts(args.texts))
    ]
    encoded = [{"ids": np.asarray(e["ids"])} for e in engine.encode([e.text for e in examples])]

    def plain() -> None:
        with torch.inference_mode():
            for start in range(0, len(encoded), args.batch_size):
                batch = encoded[start : start + args.batch_size]
                width = max(len(r["ids"]) for r in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, r in enumerate(batch):
                    ids[i, : len(r["ids"])] = torch.from_numpy(r["ids"])
                    mask[i, : len(r["ids"])] = 1
                model(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device), use_cache=False)

    def timed(fn) -> float:
        start = clock(args.device)
        fn()
        return clock(args.device) - start

    plain_s = timed(plain)  # before any hook is registered
    intervener = Intervener(
        model, engine.adapter, engine.spec, engine.encode, engine.device, pad, args.batch_size
    )
    rows = [intervener.prepare(examples)[e.key] for e in examples]
    slot = 2
    rng = np.random.default_rng(0)
    load = np.full(engine.spec.n_routed_experts, 1.0 / engine.spec.n_routed_experts)
    sets = [(3,)] + [load_matched(load, (3,), rng) for _ in range(args.draws)]
    clean_s = timed(lambda: intervener.run([(r, CLEAN) for r in rows]))
    conditions = [Condition(excluded={slot: s}) for s in sets]
    ablate_s = timed(lambda: intervener.run([(r, c) for c in conditions for r in rows]))
    n = len(rows)
    per_plain = plain_s / n
    per_intervened = ablate_s / (n * len(conditions))
    report = {
        "model": "tiny-deepseek-v3 (RANDOM-INIT)",
        "device": args.device,
        "texts": n,
        "draws": args.draws,
        "plain_s_per_text": per_plain,
        "clean_s_per_text": clean_s / n,
        "ablate_s_per_intervened_text": per_intervened,
        "intervened_over_plain": per_intervened / per_plain,
        "forwards": intervener.forwards,
    }
    print(json.dumps(report, indent=1))
    intervener.close()


if __name__ == "__main__":
    main()
