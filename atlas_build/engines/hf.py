"""The `hf` engine: transformers' own model code, routing captured by forward hooks on the routers.

(Over 600 lines: the router hooks, `route`, `generate` and the models row share one engine's hook state and
captured buffers; split, each part would reach into the others' internals. What needs no engine state, the
loading of a checkpoint's config, hash, spec and model class, is `engines/loading.py`.)

`output_router_logits` gives only logits for DeepSeek-V3 (the group-limited, bias-corrected choice is not
recoverable from them), so the routers' own outputs are recorded instead. Only the decoder stack runs:
the LM head is never computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atlas_build.engines.base import Engine, ModelLoadError, RoutingBatch
from atlas_build.engines.checkpoint import model_identity, resolve_checkpoint
from atlas_build.engines.checks import (
    check_loading_info,
    check_weight_files,
)
from atlas_build.engines.loading import (  # noqa: F401 - re-exported: importable from here too
    HASH_WEIGHTS_LIMIT,
    auto_model_class,
    checkpoint_sha256,
    library_versions,
    load_config,
    meta_model,
    resolve_dtype,
    routing_spec_of,
)
from atlas_build.engines.router_inputs import (
    check_router_inputs,
    empty_inputs,
    project_captures,
    router_input_note,
    router_input_row,
)
from atlas_build.engines.threads import choose_threads
from atlas_build.errors import AtlasError
from atlas_build.routers import RouterAdapter, UnsupportedModelError, adapter_for, decoder_config

DTYPES = ("float32", "bfloat16", "float16", "auto")


class TextTooLongError(AtlasError):
    """A text has more tokens than the model's context."""


class HFEngine(Engine):
    """transformers engine with router hooks.

    Args:
        model: built-in name, checkpoint directory or hub id.
        dtype: compute dtype (routers of DeepSeek-V3 score in float32 regardless).
        device: "cpu" or "cuda" (ignored when `device_map` is given).
        device_map: passed to `from_pretrained` (e.g. "auto" to spread a large checkpoint over GPUs).
        random_init: build the architecture from its config with seeded random weights (a null model).
        load_weights: False builds the architecture on the meta device: enough for `model_row()` and the
            tokenizer (the driver of a distributed build), no memory, and it cannot route.
        model_id: the name recorded for the model (default: see `checkpoint.model_identity`).
        threads: torch's CPU threads (default: see `threads.choose_threads`).
        scores_top_m: M ≥ top_k: also capture, per token and MoE layer, the M experts of highest selection
            score and those scores (the router adapter's `selection_scores`); None: no scores.
        router_input_layers: decoder layers (MoE layers of the model) whose router input `route` returns,
            or "all"; None: none captured.
        router_input_dim: D of the projection of those inputs (0: the full vector; at most the hidden size).
        router_input_seed: seed of the projection matrix.
    """

    name = "hf"
    # M of `--scores M` (None: no selection scores captured); engines built on this one inherit None.
    scores_top_m: int | None = None
    # `--router-inputs`: the decoder layers whose router inputs are captured and their projection (None:
    # none); engines built on this one that capture no router inputs (vLLM) inherit None.
    router_input_layers: tuple[int, ...] | None = None
    projection: Any = None

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        device_map: str | None = None,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        random_init: bool = False,
        seed: int = 0,
        load_weights: bool = True,
        model_id: str | None = None,
        threads: int | None = None,
        scores_top_m: int | None = None,
        router_input_layers: tuple[int, ...] | str | None = None,
        router_input_dim: int = 0,
        router_input_seed: int = 0,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        import torch

        self.model_id = model_identity(model, revision, model_id)
        self.batch_size = batch_size
        self.dtype_name = dtype
        self.random_init = random_init
        self.seed = seed
        self._trust = trust_remote_code
        # The driver of a distributed build (load_weights=False) may run where the workers' GPUs are not.
        if load_weights and device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device")
        path, self.revision, self.builtin = resolve_checkpoint(model, revision)
        self.path = path
        self.config = load_config(path, trust_remote_code)
        self.adapter: RouterAdapter = adapter_for(self.config)
        self.spec = routing_spec_of(self.adapter, self.config, path)
        self.scores_top_m = self._check_scores_top_m(scores_top_m)
        self.router_input_layers, self.projection = self._check_router_inputs(
            router_input_layers, router_input_dim, router_input_seed
        )
        self._input_slots: list[int] = []
        self._inputs: dict[int, list[Any]] = {}
        self._capture_inputs = False
        self._matrix_on: dict[Any, Any] = {}  # the projection matrix, float64, per device it is used on
        self._model = (
            self._load_model(path, dtype, device, device_map, trust_remote_code)
            if load_weights
            else meta_model(self.config, dtype, trust_remote_code)
        )
        self.device = next(self._model.parameters()).device
        n_params = sum(p.numel() for p in self._model.parameters())
        # The driver of a distributed build (meta device) chooses as its workers on `device` will: the thread
        # count is part of the shard key it computes for them.
        compute_device = self.device.type if load_weights else device
        self.threads, self.threads_reason = choose_threads(threads, n_params, compute_device)
        if load_weights:
            torch.set_num_threads(self.threads)
        self._routers = self.adapter.router_modules(self._model)
        self._tokenizer = self._load_tokenizer(path, trust_remote_code)
        self._captured: list[list[tuple[Any, Any]]] = [[] for _ in self._routers]
        self._select_input_slots()
        self._hooks = [
            router.register_forward_hook(self._make_hook(i)) for i, (_, router) in enumerate(self._routers)
        ]

    # ---- loading -------------------------------------------------------------------------------
    def _load_model(
        self, path: Path, dtype: str, device: str, device_map: str | None, trust_remote_code: bool
    ):
        import torch

        auto = auto_model_class(self.config)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            if self.random_init:
                torch.manual_seed(self.seed)
                model = auto.from_config(
                    self.config,
                    dtype=torch_dtype if dtype != "auto" else None,
                    trust_remote_code=trust_remote_code,
                )
            else:
                check_weight_files(path)
                kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
                if device_map:
                    kwargs["device_map"] = device_map
                # Mismatched shapes are reported (and refused below, by name) rather than raised as
                # transformers' generic "see the report above".
                model, info = auto.from_pretrained(
                    path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
                )
                own = {name.split(".")[0] for name in model.state_dict()}
                check_loading_info(info, self.model_id, path, own)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - torch, safetensors and accelerate raise their own types
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelLoadError(
                f"could not load the weights of {self.model_id} from {path}: {first}"
            ) from error
        if not device_map:
            model = model.to(device)
        model.eval()
        return model

    def _load_tokenizer(self, path: Path, trust_remote_code: bool):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"could not load the tokenizer of {self.model_id} from {path}: {error}"
            ) from error
        if not tokenizer.is_fast:
            raise ModelLoadError(f"{self.model_id}: character offsets need a fast (tokenizers) tokenizer")
        return tokenizer

    def _check_scores_top_m(self, scores_top_m: int | None) -> int | None:
        """`--scores M`: refused (before any weight is loaded) for adapters without selection scores, and
        outside top_k ≤ M ≤ N."""
        if scores_top_m is None:
            return None
        self.adapter.require_selection_scores()
        k, n = self.spec.top_k, self.spec.n_routed_experts
        if not k <= scores_top_m <= n:
            raise ModelLoadError(
                f"--scores {scores_top_m}: M must be between top_k = {k} and the {n} routed experts of "
                f"{self.model_id}"
            )
        return int(scores_top_m)

    def _check_router_inputs(self, layers, dim: int, seed: int):
        hidden = int(self.text_config.hidden_size)
        return check_router_inputs(self.spec.moe_layers, hidden, self.model_id, layers, dim, seed)

    def _select_input_slots(self) -> None:
        # Router inputs, per MoE-layer slot, captured only inside `route` and only for the layers asked for.
        wanted = set(self.router_input_layers)
        self._input_slots = [slot for slot, (idx, _) in enumerate(self._routers) if idx in wanted]
        self._inputs = {slot: [] for slot in self._input_slots}

    def enable_router_inputs(self, layers: tuple[int, ...] | str, dim: int, seed: int) -> None:
        """Return router inputs from now on (as `router_input_layers`, `router_input_dim` and
        `router_input_seed` at construction would): what `atlas audit` re-routes an atlas's sample with."""
        self.router_input_layers, self.projection = self._check_router_inputs(layers, dim, seed)
        self._matrix_on = {}
        self._select_input_slots()

    def router_input_row(self) -> dict[str, Any]:
        """The models row's `router_input_*` fields (all None without router inputs)."""
        return router_input_row(self.router_input_layers, self.projection)

    def _make_hook(self, slot: int):
        def hook(module, args, output):
            if self._capture_inputs and slot in self._inputs:
                self._inputs[slot].append(args[0].detach())
            index, weights = self.adapter.read_router_output(output, module)
            captured = (index.detach(), weights.detach().float())
            if self.scores_top_m:
                captured += self._top_scores(module, args, output)
            self._captured[slot].append(captured)

        return hook

    def _top_scores(self, module, args, output):
        """The top-M experts by selection score, highest first (a stable sort: ties to the lower id)."""
        import torch

        scores = self.adapter.selection_scores(module, args, output).detach().float()
        values, ids = torch.sort(scores, dim=-1, descending=True, stable=True)
        m = self.scores_top_m
        return ids[..., :m].contiguous(), values[..., :m].contiguous()

    # ---- contract ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def text_config(self):
        """The text decoder's config: `text_config` of a multimodal wrapper (Llama 4, Qwen3.5-MoE), else
        `config`. The shape of what is routed (layers, context) is read here."""
        return decoder_config(self.config)

    @property
    def max_length(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)

    @property
    def weightless(self) -> bool:
        """True when the model is only its architecture on the meta device (no weights loaded)."""
        return str(self.device) == "meta"

    def model_row(self) -> dict[str, Any]:
        # Counted on the architecture (meta device), not on the loaded weights: an FP8 checkpoint's scale
        # tensors would otherwise make the row, and so the atlas, differ between a local build and a
        # distributed one (whose driver never loads weights).
        arch = self._model if self.weightless else meta_model(self.config, self.dtype_name, self._trust)
        total = sum(p.numel() for p in arch.parameters())
        routed = sum(self.adapter.routed_expert_params(arch, idx) for idx, _ in self._routers)
        inactive = routed * (self.spec.n_routed_experts - self.spec.top_k) // self.spec.n_routed_experts
        architectures = getattr(self.config, "architectures", None) or [type(self._model).__name__]
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "checkpoint_sha256": None if self.random_init else checkpoint_sha256(self.path),
            "architecture": architectures[0],
            "model_type": self.config.model_type,
            "router_adapter": self.adapter.name,
            "num_hidden_layers": self.text_config.num_hidden_layers,
            "moe_layers": list(self.spec.moe_layers),
            "n_routed_experts": self.spec.n_routed_experts,
            "top_k": self.spec.top_k,
            "n_shared_experts": self.spec.n_shared_experts,
            "scoring_func": self.spec.scoring_func,
            "topk_method": self.spec.topk_method,
            "n_group": self.spec.n_group,
            "topk_group": self.spec.topk_group,
            "norm_topk_prob": self.spec.norm_topk_prob,
            "routed_scaling_factor": self.spec.routed_scaling_factor,
            "routing_kind": self.spec.routing_kinds(self.text_config.num_hidden_layers),
            "n_zero_experts": self.spec.n_zero_experts,
            "total_params": int(total),
            "active_params": int(total - inactive),
            "dtype": str(resolve_dtype(self.config, self.dtype_name)).removeprefix("torch."),
            "engine": self.name,
            # Where to load it from: the hub id, the built-in name, or the local path given.
            "tokenizer": self.model_id,
            "add_bos_token": self._adds_bos(),
            "random_init": self.is_random_init,
            "seed": self.seed if self.random_init else self._builtin_info.get("seed"),
            "scores_top_m": self.scores_top_m,
            **self.router_input_row(),
        }

    def provenance(self) -> dict[str, Any]:
        """What produced the routing besides the checkpoint: library versions, device, numerics, batching."""
        import torch

        info = library_versions("torch", "transformers", "accelerate")
        cuda = self.device.type == "cuda"
        config = getattr(self._model, "config", self.config)
        info.update(
            device=torch.cuda.get_device_name(self.device) if cuda else self.device.type,
            device_count=torch.cuda.device_count() if cuda else 1,
            cuda=torch.version.cuda,
            dtype=str(resolve_dtype(self.config, self.dtype_name)).removeprefix("torch."),
            attention=getattr(config, "_attn_implementation", None) or "eager",
            experts=getattr(config, "_experts_implementation", None) or "eager",
            cuda_graphs=False,  # transformers runs eagerly
            batch_size=self.batch_size,
            threads=self.threads,
            threads_reason=self.threads_reason,
        )
        return info

    def model_notes(self) -> list[str]:
        from atlas_build.models import BUILTIN

        notes = list(getattr(BUILTIN.get(self.model_id), "CARD_NOTES", [])) if self.builtin else []
        notes.extend(self.adapter.card_notes(self.config))
        if self.random_init:
            notes.append(
                f"Random-init twin of {self.model_id}'s architecture (seed {self.seed}): a null model, its "
                "routing carries no finding."
            )
        if self.scores_top_m:
            notes.append(
                f"Selection scores (--scores {self.scores_top_m}): `score_experts` / `scores` hold, per token "
                f"and MoE layer, the {self.scores_top_m} experts of highest "
                f"{self.adapter.selection_score_kind}, highest first (ties: lower id first)."
            )
        if self.projection is not None:
            notes.append(router_input_note(self.router_input_layers, self.projection))
        return notes

    @property
    def _builtin_info(self) -> dict[str, Any]:
        # Checkpoints that routing-atlas generated say so in their config.json.
        return getattr(self.config, "routing_atlas", None) or {}

    @property
    def is_random_init(self) -> bool:
        return bool(self.random_init or self._builtin_info.get("random_init"))

    def _adds_bos(self) -> bool:
        bos = self._tokenizer.bos_token_id
        ids = self._tokenizer("a")["input_ids"]
        return bos is not None and len(ids) > 0 and ids[0] == bos

    def encode(self, texts: list[str]) -> list[dict[str, Any]]:
        """Tokenize as `tokenizer(text)` does (special tokens included), with offsets."""
        encoded = self._tokenizer(
            texts, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True
        )
        out = []
        limit = self.max_length
        for i in range(len(texts)):
            ids = np.asarray(encoded["input_ids"][i], dtype=np.int64)
            if limit is not None and len(ids) > limit:
                raise TextTooLongError(
                    f"text {i} has {len(ids)} tokens, more than the model's context of {limit}: "
                    "split it before routing"
                )
            spans = np.asarray(encoded["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            special = np.asarray(encoded["special_tokens_mask"][i], dtype=bool)
            spans[special] = -1
            out.append({"ids": ids, "spans": spans})
        return out

    def route(self, texts: list[str]) -> RoutingBatch:
        import torch

        if self.weightless:
            raise RuntimeError("this engine was built without weights (load_weights=False): it cannot route")
        encoded = self.encode(texts)
        lengths = np.array([len(e["ids"]) for e in encoded], dtype=np.int64)
        n_layers, k = len(self._routers), self.spec.top_k
        experts_out: list[np.ndarray | None] = [None] * len(texts)
        weights_out: list[np.ndarray | None] = [None] * len(texts)
        score_ids_out: list[np.ndarray | None] = [None] * len(texts)
        scores_out: list[np.ndarray | None] = [None] * len(texts)
        inputs_out: list[np.ndarray | None] = [None] * len(texts)
        # Longest first within the call: less padding, and a deterministic batch composition.
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        # The decoder stack only (no LM head); Llama4ForCausalLM's base_model_prefix names no attribute.
        base_model = self.adapter.decoder_model(self._model)
        # Families whose routing padding changes (the adapter's `route_alone` says why) run one text a batch.
        step = 1 if self.adapter.route_alone else self.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), step):
                batch = order[start : start + step]
                width = int(lengths[batch].max())
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = torch.from_numpy(encoded[i]["ids"])
                    mask[row, : lengths[i]] = 1
                for slot in self._captured:
                    slot.clear()
                for captures in self._inputs.values():
                    captures.clear()
                # Right padding: real tokens never attend to pads, so their routing is unaffected.
                self._capture_inputs = True
                try:
                    base_model(
                        input_ids=input_ids.to(self.device),
                        attention_mask=mask.to(self.device),
                        use_cache=False,
                    )
                finally:
                    self._capture_inputs = False
                index, weights = self._collect(len(batch), width, n_layers, k)
                score_ids, scores = self._collect_scores(len(batch), width)
                projected = self._collect_inputs(len(batch), width) if self._input_slots else None
                for row, i in enumerate(batch):
                    experts_out[i] = index[row, : lengths[i]]
                    weights_out[i] = weights[row, : lengths[i]]
                    if scores is not None:
                        score_ids_out[i] = score_ids[row, : lengths[i]]
                        scores_out[i] = scores[row, : lengths[i]]
                    if projected is not None:
                        inputs_out[i] = projected[row, : lengths[i]]
                for captures in self._inputs.values():
                    captures.clear()
                    if scores is not None:
                        score_ids_out[i] = score_ids[row, : lengths[i]]
                        scores_out[i] = scores[row, : lengths[i]]
        tokens: list[str] = []
        for e in encoded:
            tokens.extend(self._tokenizer.convert_ids_to_tokens(e["ids"].tolist()))
        return RoutingBatch(
            token_counts=lengths,
            token_ids=np.concatenate([e["ids"] for e in encoded]) if encoded else np.zeros(0, np.int64),
            tokens=tokens,
            char_spans=np.concatenate([e["spans"] for e in encoded])
            if encoded
            else np.zeros((0, 2), np.int32),
            experts=np.concatenate(experts_out) if encoded else np.zeros((0, n_layers, k), np.int16),
            weights=np.concatenate(weights_out) if encoded else np.zeros((0, n_layers, k), np.float32),
            **self._score_arrays(score_ids_out, scores_out, n_layers),
            router_inputs=self._input_array(inputs_out),
        )

    def _collect_inputs(self, batch: int, width: int) -> np.ndarray:
        """The batch's router inputs, projected (`router_inputs.project_captures`): float32 `[B, S, n, D]`."""
        captures = []
        for slot in self._input_slots:
            if len(self._inputs[slot]) != 1:
                raise RuntimeError(
                    f"router of MoE layer {self._routers[slot][0]} ran {len(self._inputs[slot])} times"
                )
            captures.append(self._inputs[slot][0])
        return project_captures(captures, self.projection, self._matrix_on, batch, width)

    def _input_array(self, inputs_out: list) -> np.ndarray | None:
        if not self._input_slots:
            return None
        if not inputs_out:
            return empty_inputs(len(self._input_slots), self.projection)
        return np.concatenate(inputs_out)

    def _score_arrays(self, score_ids: list, scores: list, n_layers: int) -> dict[str, np.ndarray | None]:
        if not self.scores_top_m:
            return {"score_experts": None, "scores": None}
        m = self.scores_top_m
        return {
            "score_experts": np.concatenate(score_ids) if score_ids else np.zeros((0, n_layers, m), np.int16),
            "scores": np.concatenate(scores) if scores else np.zeros((0, n_layers, m), np.float32),
        }

    def _collect_scores(self, batch: int, width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Hook captures -> the top-M ids int16 `[B, S, L, M]` and scores float32 `[B, S, L, M]`, highest
        score first; `(None, None)` without `--scores`."""
        import torch

        if not self.scores_top_m:
            return None, None
        m = self.scores_top_m
        # One device for the stack: with a device_map the MoE layers can sit on different GPUs.
        ids = torch.stack([c[0][2].reshape(batch, width, m).to(self.device) for c in self._captured], dim=2)
        scores = torch.stack(
            [c[0][3].reshape(batch, width, m).to(self.device) for c in self._captured], dim=2
        )
        return ids.to(torch.int16).cpu().numpy(), scores.cpu().numpy()

    def _collect(self, batch: int, width: int, n_layers: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hook captures -> experts int16 `[B, S, L, k]`, weights float32 `[B, S, L, k]`, highest first."""
        import torch

        index_layers, weight_layers = [], []
        for slot, captures in enumerate(self._captured):
            if len(captures) != 1:
                raise RuntimeError(f"router of MoE layer {self._routers[slot][0]} ran {len(captures)} times")
            index, weights = captures[0][:2]
            weights, order = torch.sort(weights, dim=-1, descending=True, stable=True)
            index = torch.gather(index, -1, order)
            # With a device_map the MoE layers, and so their captures, can sit on different GPUs.
            index_layers.append(index.reshape(batch, width, k).to(self.device))
            weight_layers.append(weights.reshape(batch, width, k).to(self.device))
        index = torch.stack(index_layers, dim=2).to(torch.int16).cpu().numpy()
        weights = torch.stack(weight_layers, dim=2).cpu().numpy()
        return index, weights

    def detach_model(self):
        """The loaded transformers model, without this engine's router hooks, for a caller that runs the whole
        model and hooks the routers itself (`atlas intervene`); the engine cannot route afterwards."""
        if self.weightless:
            raise RuntimeError(
                "this engine was built without weights (load_weights=False): no model to detach"
            )
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        model, self._model = self._model, None
        return model

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._model = None

    def generate(
        self, prompt_text: str, max_new_tokens: int, *, stop_token_ids: list[int] | None = None
    ) -> tuple[str, RoutingBatch]:
        """Greedy generation from `prompt_text` with the routing of every token captured on the way.

        The prompt is tokenized as `route` does (special tokens added, e.g. R1's BOS) and prefilled once;
        then each decoding step feeds one token through the KV cache, so each router call covers exactly
        that new token. After the last step the last generated token is fed once more (its logits are
        not used), so the routing covers the prompt and every generated token: the same tokens a prefill
        of the whole sequence routes, and, up to float rounding of the cached attention, with the same
        experts (tests/traces/test_generate.py checks this on the tiny model).

        Args:
            prompt_text: the formatted prompt (chat template applied, BOS left to the tokenizer).
            max_new_tokens: most tokens to generate; fewer when the model's context is reached first.
            stop_token_ids: tokens that end the generation (default: the config's and tokenizer's EOS).
                The stopping token is routed, but left out of the returned text.

        Returns:
            `(generated_text, routing)`: the decoded new tokens (special tokens kept, so that the text
            re-tokenizes to the same ids where byte-level decoding allows), and a one-text
            `RoutingBatch` over prompt + generated tokens. Character spans of generated tokens are
            offsets into `prompt_text + generated_text`; special tokens, and generated tokens whose
            bytes do not decode to whole characters, get (-1, -1).
        """
        import torch

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        tokenizer = self._tokenizer
        prompt = self.encode([prompt_text])[0]
        n_prompt = len(prompt["ids"])
        limit = self.max_length
        budget = max_new_tokens if limit is None else min(max_new_tokens, limit - n_prompt)
        if budget < 1:
            raise TextTooLongError(
                f"the prompt has {n_prompt} tokens, the model's context is {limit}: no room to generate"
            )
        if stop_token_ids is None:
            stop_token_ids = []
            for source in (getattr(self._model, "generation_config", None), self.config, tokenizer):
                eos = getattr(source, "eos_token_id", None)
                stop_token_ids.extend(eos if isinstance(eos, list) else [] if eos is None else [eos])
        stops = set(stop_token_ids)
        # The embedding matrix may be padded past the tokenizer's vocabulary (R1: 129280 rows for 128815
        # ids): such ids have no text, so greedy decoding never picks them.
        vocab = len(tokenizer)
        n_layers, k = len(self._routers), self.spec.top_k
        index_parts: list[list[torch.Tensor]] = [[] for _ in self._routers]
        weight_parts: list[list[torch.Tensor]] = [[] for _ in self._routers]
        score_id_parts: list[list[torch.Tensor]] = [[] for _ in self._routers]
        score_parts: list[list[torch.Tensor]] = [[] for _ in self._routers]

        def step(ids: list[int], cache):
            for slot in self._captured:
                slot.clear()
            out = self._model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            for slot, captures in enumerate(self._captured):
                if len(captures) != 1:
                    raise RuntimeError(
                        f"router of MoE layer {self._routers[slot][0]} ran {len(captures)} times in one step"
                    )
                index, weights = captures[0][:2]
                index_parts[slot].append(index.reshape(len(ids), k))
                weight_parts[slot].append(weights.reshape(len(ids), k))
                if self.scores_top_m:
                    score_id_parts[slot].append(captures[0][2].reshape(len(ids), self.scores_top_m))
                    score_parts[slot].append(captures[0][3].reshape(len(ids), self.scores_top_m))
            return out

        generated: list[int] = []
        with torch.inference_mode():
            out = step(prompt["ids"].tolist(), None)
            while True:
                next_id = int(out.logits[0, -1, :vocab].float().argmax())
                generated.append(next_id)
                if next_id in stops or len(generated) >= budget:
                    break
                out = step([next_id], out.past_key_values)
            # Route the last generated token too: its router calls are what a prefill would record.
            step([generated[-1]], out.past_key_values)
        for slot in self._captured:
            slot.clear()

        index_layers, weight_layers = [], []
        for slot in range(n_layers):
            weights = torch.cat(weight_parts[slot])
            weights, order = torch.sort(weights, dim=-1, descending=True, stable=True)
            # One device for the stack: with a device_map the layers can sit on different GPUs.
            index_layers.append(torch.gather(torch.cat(index_parts[slot]), -1, order).to(self.device))
            weight_layers.append(weights.to(self.device))
        experts = torch.stack(index_layers, dim=1).to(torch.int16).cpu().numpy()
        gate_weights = torch.stack(weight_layers, dim=1).cpu().numpy()
        score_arrays = {"score_experts": None, "scores": None}
        if self.scores_top_m:
            score_arrays = {
                "score_experts": torch.stack([torch.cat(p).to(self.device) for p in score_id_parts], dim=1)
                .to(torch.int16)
                .cpu()
                .numpy(),
                "scores": torch.stack([torch.cat(p).to(self.device) for p in score_parts], dim=1)
                .cpu()
                .numpy(),
            }

        text_ids = generated[:-1] if generated[-1] in stops else generated
        generated_text = tokenizer.decode(
            text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        # Spans of generated tokens: each token's text is what it adds to the decoded prefix. Decoding a
        # short window before it keeps this linear and lets byte-level pieces merge into characters.
        special = set(tokenizer.all_special_ids)
        spans = np.full((len(generated), 2), -1, dtype=np.int32)
        cursor, pieces_ok = len(prompt_text), True
        pieces = []
        for i, token_id in enumerate(text_ids):
            window = text_ids[max(0, i - 6) : i]
            before = tokenizer.decode(window, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            after = tokenizer.decode(
                [*window, token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            piece = after[len(before) :] if after.startswith(before) else None
            if piece is None or "\ufffd" in piece:
                pieces_ok = False
                piece = ""
            pieces.append(piece)
            if token_id not in special and piece:
                spans[i] = (cursor, cursor + len(piece))
            cursor += len(piece)
        if not pieces_ok or "".join(pieces) != generated_text:
            # Bytes split across tokens (or a decoder that rewrites text): no exact offsets to give.
            spans[:] = -1
        ids = np.concatenate([prompt["ids"], np.asarray(generated, dtype=np.int64)])
        return generated_text, RoutingBatch(
            token_counts=np.array([len(ids)], dtype=np.int64),
            token_ids=ids,
            tokens=tokenizer.convert_ids_to_tokens(ids.tolist()),
            char_spans=np.concatenate([prompt["spans"], spans]),
            experts=experts,
            weights=gate_weights,
            **score_arrays,
        )


__all__ = ["HFEngine", "ModelLoadError", "TextTooLongError", "UnsupportedModelError"]
