"""Recording the routers' logits next to the engine's capture."""

from __future__ import annotations

import os

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above

from gpu_check_parts.arithmetic import router_choice  # noqa: E402
from gpu_check_parts.common import CheckInputError, failure  # noqa: E402


class LogitProbe:
    """Records each router's sigmoid scores, bias and recomputed choice, beside the engine's own hooks.

    DeepSeek-V3 routers return `(router_logits, top_k_weights, top_k_index)`; the engine records the last
    two, the probe the first, so that every recorded choice can be recomputed and every margin measured.
    """

    def __init__(self, engine):
        if engine.adapter.name != "deepseek_v3":
            raise CheckInputError(f"the check covers DeepSeek-V3 routers, not {engine.adapter.name}")
        # The engine's router modules, in MoE-layer order (the order of its `experts` arrays).
        self.routers = [module for _, module in engine._routers]
        self.spec = engine.spec
        self.captures: list[list] = [[] for _ in self.routers]
        self.handles = [
            module.register_forward_hook(self._hook(slot)) for slot, module in enumerate(self.routers)
        ]

    def _hook(self, slot: int):
        def hook(module, args, output):
            self.captures[slot].append(output[0].detach())

        return hook

    def take(self, lengths: np.ndarray, batch_size: int):
        """The forwards of one `route` call over texts already in its order (longest first).

        Returns:
            `(scores float32 [T, L, N], bias float32 [L, N], choice int64 [T, L, k])` on the CPU, tokens of
            the texts concatenated; `choice` is recomputed on the engine's device from the same logits.
        """
        import torch

        spec = self.spec
        scores, choices = [], []
        n_forwards = -(-len(lengths) // batch_size)
        # Per forward: which (row, position) of the padded batch are real tokens, row-major as `route`
        # concatenates them.
        real = []
        for forward in range(n_forwards):
            rows = torch.as_tensor(lengths[forward * batch_size : (forward + 1) * batch_size])
            real.append((torch.arange(int(rows.max()))[None, :] < rows[:, None]).reshape(-1))
        for slot, router in enumerate(self.routers):
            if len(self.captures[slot]) != n_forwards:
                raise RuntimeError(
                    f"router {slot} ran {len(self.captures[slot])} times for {n_forwards} batches"
                )
            bias = router.e_score_correction_bias.float()
            layer_scores, layer_choice = [], []
            for forward, logits in enumerate(self.captures[slot]):
                s = logits.float().sigmoid()  # as the router: sigmoid of float32 logits, on its device
                picked = router_choice(s, bias, spec.n_group, spec.topk_group, spec.top_k)
                mask = real[forward].to(s.device)
                layer_scores.append(s[mask].cpu())
                layer_choice.append(picked[mask].cpu())
            scores.append(torch.cat(layer_scores))
            choices.append(torch.cat(layer_choice))
            self.captures[slot].clear()
        bias = torch.stack([router.e_score_correction_bias.float().cpu() for router in self.routers])
        return torch.stack(scores, dim=1), bias, torch.stack(choices, dim=1)

    def clear(self) -> None:
        for captures in self.captures:
            captures.clear()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.routers, self.captures = [], []


def use_eager_experts(model) -> None:
    """transformers' per-expert loop instead of its grouped matmul (`experts_implementation="eager"`)."""
    model.set_experts_implementation("eager")


class Probed:
    """An engine with its logit probe. If a forward fails (say, a grouped-matmul kernel this GPU or dtype
    lacks), it switches once to transformers' eager experts and retries, and says so in the results."""

    def __init__(self, engine):
        self.engine = engine
        self.probe = LogitProbe(engine)
        self.fallback: str | None = None  # why the eager experts are used

    def route(self, texts: list[str]):
        try:
            return self.engine.route(texts)
        except Exception as error:
            if self.fallback is not None:
                raise
            self.fallback = failure(error)["message"]
            use_eager_experts(self.engine._model)
            self.probe.clear()
            return self.engine.route(texts)

    def experts_implementation(self) -> str | None:
        return getattr(self.engine._model.config, "_experts_implementation", None)

    def close(self) -> None:
        self.probe.close()
        self.engine.close()
