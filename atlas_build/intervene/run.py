"""Running interventions: the whole model (LM head included), its routers re-decided through the adapter.

One forward per (text, condition): a condition is the clean run, the hypothesis's intervention, or one
random load-matched baseline draw. Conditions are per batch row, so the texts of every condition share
batches (`batch_size` rows each, longest first): the cost is one forward per text per intervention and per
baseline draw, and the clean forward once per text.

Per row the runner returns the log-probability of the next tokens from the target's first token to the one
after it (`[S - 1]`, NaN elsewhere: the LM head runs only there), the final hidden state (after the final
norm) of the target's last token `[H]` and the expert set of every token at every MoE layer `[S, L, k]`.

The hook on each router is prepended to any other (so whoever else reads the router sees the intervened
choice) and is the only code that changes routing; what it changes is decided by `routers.selection` with
the family's own rule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from atlas_build.intervene.examples import Example
from atlas_build.routers.selection import choose_without, weights_for, write_router_output, zero_weights

REROUTE, ZERO_WEIGHT = "reroute", "zero_weight"


@dataclass
class Condition:
    """What one batch row does to the routing. `excluded`: slot -> expert ids removed at every token;
    `forced`: slot -> the expert set every target token gets (transplant)."""

    excluded: dict[int, tuple[int, ...]] = field(default_factory=dict)
    forced: dict[int, tuple[int, ...]] = field(default_factory=dict)
    mode: str = REROUTE


CLEAN = Condition()


@dataclass
class Encoded:
    ids: np.ndarray  # int64 [S]
    targets: np.ndarray  # int64 positions of the target's tokens (sorted)


@dataclass
class RowResult:
    logprobs: np.ndarray  # float64 [S - 1]: log p(x_{t+1} | x_<=t) around the target, NaN elsewhere
    hidden: np.ndarray  # float64 [H]: final hidden state at the target's last token
    experts: np.ndarray  # int16 [S, L, k]: sorted expert ids per token and MoE layer


class Intervener:
    """The model with intervention hooks on its routers.

    Args:
        model: the transformers causal LM (the engine's `detach_model()`).
        adapter, spec: the family's router adapter and routing spec.
        encode: texts -> `[{"ids", "spans"}]`, as the engine tokenizes.
        device: a torch device.
    """

    def __init__(self, model, adapter, spec, encode, device, pad_id: int, batch_size: int = 16):
        self.model, self.adapter, self.spec, self.encode = model, adapter, spec, encode
        self.device, self.pad_id, self.batch_size = device, pad_id, batch_size
        self.routers = adapter.router_modules(model)
        self._decoder = adapter.decoder_model(model)
        self._head = model.get_output_embeddings()
        self.slot_of = {layer: slot for slot, (layer, _) in enumerate(self.routers)}
        self._actions: dict[int, dict] = {}
        self._captured: list = [None] * len(self.routers)
        self._rows = 0
        self._hooks = [
            router.register_forward_hook(self._hook(slot), prepend=True)
            for slot, (_, router) in enumerate(self.routers)
        ]
        self.forwards = 0  # rows run, for the bench

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, slot: int):
        def hook(module, args, output):
            import torch

            action = self._actions.get(slot)
            if action is not None:
                index, weights = self.adapter.read_router_output(output, module)
                index, weights = index.long(), weights.float()
                tokens = index.shape[0]
                per_row = tokens // self._rows
                if "excluded" in action:
                    excluded = action["excluded"].repeat_interleave(per_row, dim=0)  # [T, N]
                    on = excluded.any(dim=1, keepdim=True)
                    if action["mode"] == ZERO_WEIGHT:
                        new_index, new_weights = zero_weights(self.adapter, module, output, excluded)
                    else:
                        new_index, new_weights = choose_without(
                            self.adapter, self.spec, module, args, output, excluded
                        )
                    index = torch.where(on, new_index, index)
                    weights = torch.where(on, new_weights, weights)
                if "forced" in action:
                    forced = action["forced"].reshape(tokens, -1)
                    mask = action["force_mask"].reshape(tokens, 1)
                    forced_weights = weights_for(self.adapter, self.spec, module, args, output, forced)
                    index = torch.where(mask, forced, index)
                    weights = torch.where(mask, forced_weights, weights)
                output = write_router_output(self.adapter, output, index, weights)
            captured, _ = self.adapter.read_router_output(output, module)
            self._captured[slot] = captured.detach()
            return output

        return hook

    def prepare(self, examples: list[Example]) -> dict[tuple[str, str], Encoded]:
        """Token ids and target positions (tokens overlapping the target span) of each example."""
        encoded = self.encode([e.text for e in examples])
        out = {}
        for e, enc in zip(examples, encoded, strict=True):
            spans = enc["spans"]
            hit = (spans[:, 0] >= 0) & (spans[:, 0] < e.target_end) & (spans[:, 1] > e.target_start)
            out[e.key] = Encoded(np.asarray(enc["ids"], np.int64), np.flatnonzero(hit))
        return out

    def run(self, items: list[tuple[Encoded, Condition]]) -> list[RowResult]:
        """One forward per item, batched; results in the order of `items`."""
        import torch

        results: list[RowResult | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: (-len(items[i][0].ids), i))
        n_experts, k = self.spec.n_routed_experts, self.spec.top_k
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(items[i][0].ids) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(items[i][0].ids)
                    ids[row, :n] = torch.from_numpy(items[i][0].ids)
                    mask[row, :n] = 1
                self._actions = self._batch_actions([items[i] for i in batch], width, n_experts, k)
                self._rows = len(batch)
                try:
                    # The decoder stack, then the LM head only where a log-probability is read: from the
                    # token before the target to its last token (the vocabulary can be 100k+ wide).
                    hidden = self._decoder(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
                    ).last_hidden_state
                finally:
                    self._actions = {}
                self.forwards += len(batch)
                experts = torch.stack(
                    [c.reshape(len(batch), width, k).to(self.device) for c in self._captured], dim=2
                )
                experts = torch.sort(experts, dim=-1).values.to(torch.int16).cpu().numpy()
                for row, i in enumerate(batch):
                    enc = items[i][0]
                    n = len(enc.ids)
                    last = int(enc.targets[-1]) if len(enc.targets) else n - 1
                    first = max(int(enc.targets[0]) - 1, 0) if len(enc.targets) else 0
                    stop = min(last + 1, n - 1)  # positions first..stop-1 predict tokens first+1..stop
                    logprobs = np.full(n - 1, np.nan)
                    if stop > first:
                        logits = self._head(hidden[row, first:stop]).double()
                        picked = torch.log_softmax(logits, dim=-1).gather(
                            1, ids[row, first + 1 : stop + 1].to(self.device)[:, None]
                        )
                        logprobs[first:stop] = picked[:, 0].cpu().numpy()
                    results[i] = RowResult(
                        logprobs, hidden[row, last].double().cpu().numpy(), experts[row, :n]
                    )
        return results  # type: ignore[return-value]

    def _batch_actions(self, rows: list[tuple[Encoded, Condition]], width: int, n_experts: int, k: int):
        import torch

        actions: dict[int, dict] = {}
        for row, (enc, cond) in enumerate(rows):
            for slot, experts in cond.excluded.items():
                action = actions.setdefault(slot, {})
                if "excluded" not in action:
                    action["excluded"] = torch.zeros((len(rows), n_experts), dtype=torch.bool)
                action["excluded"][row, list(experts)] = True
                action["mode"] = cond.mode
            for slot, experts in cond.forced.items():
                action = actions.setdefault(slot, {})
                if "forced" not in action:
                    action["forced"] = torch.zeros((len(rows), width, k), dtype=torch.long)
                    action["force_mask"] = torch.zeros((len(rows), width), dtype=torch.bool)
                action["forced"][row, :, :] = torch.tensor(experts, dtype=torch.long)
                action["force_mask"][row, torch.from_numpy(enc.targets)] = True
        return {
            slot: {key: value.to(self.device) if hasattr(value, "to") else value for key, value in a.items()}
            for slot, a in actions.items()
        }


# ---- conditions: the hypothesis's and the random load-matched baselines --------------------------------
def load_matched(
    load: np.ndarray, experts: tuple[int, ...], rng: np.random.Generator, avoid=()
) -> tuple[int, ...]:
    """For each expert, another drawn among the `window` experts nearest to it in load (share of tokens that
    choose it at this layer), never one of `experts` or `avoid`, without repeats."""
    n = len(load)
    window = max(2, n // 8)
    taken = set(experts) | set(avoid)
    out = []
    for expert in experts:
        candidates = [e for e in np.argsort(np.abs(load - load[expert]), kind="stable") if e not in taken]
        pick = int(rng.choice(candidates[:window]))
        taken.add(pick)
        out.append(pick)
    return tuple(out)


def donor_set(recorded: dict, donors: list[Example], slot: int) -> tuple[int, ...] | None:
    """The expert set the donor sense's target tokens were recorded with most often at `slot` (ties: the
    smallest ids)."""
    sets = Counter()
    for e in donors:
        for token in recorded.get(e.key, ()):
            sets[tuple(sorted(int(x) for x in token[slot]))] += 1
    if not sets:
        return None
    best = max(sets.values())
    return min(s for s, count in sets.items() if count == best)
