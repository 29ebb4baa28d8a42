"""The `vllm` engine: vLLM's offline `LLM` with `enable_return_routed_experts=True`, prefill only.

VERIFIED ONLY WHERE `make test-vllm` HAS PASSED (vLLM and a CUDA GPU, `tests/engines/test_vllm_gpu.py`:
both engines over the same texts, >= 99.9% identical expert sets). On machines without them only the
mapping from vLLM's documented output arrays to atlas rows is tested (`tests/engines/test_vllm_mapping.py`).

What vLLM (0.32-0.33) gives, and what this engine does with it:

- `CompletionOutput.routed_experts` (on `request_output.outputs[0]`): int `[seq_len, num_hidden_layers,
  top_k]` expert ids, seq_len = prompt + generated - 1, so `max_tokens=1` gives exactly the prompt tokens.
  Dense layers (DeepSeek's `first_k_dense_replace`) are all zeros; the MoE layers are picked out by the
  router adapter's `moe_layers`. vLLM 0.21 returned `RequestOutput.prompt_routed_experts` `[prompt_len,
  num_moe_layers, top_k]` instead; both layouts are read.
- Ids only: the gate weights are not returned, so the atlas's `weights` are null (`returns_weights=False`).
- Order of the k ids: vLLM's top-k kernels do not sort by gate weight (DeepSeek's grouped top-k is not even
  chosen on the weight but on the bias-corrected score), so no rank can be read from them. The ids are
  stored SORTED ASCENDING BY EXPERT ID: a canonical, deterministic order that does not pretend to be a
  ranking. Only the set of k experts per (token, layer) is meaningful for this engine.
- Known failure modes of some vLLM versions are refused rather than written: a row count different from the
  prompt's token count (a bug dropped the last prompt token), an all-zero MoE layer or duplicate ids within
  a token's top-k (fused-MoE paths that never filled the capture buffer), ids out of range.

Tokenization is the checkpoint's HF tokenizer, exactly as in the hf engine (`tokenizer(text)` with offsets);
vLLM gets `prompt_token_ids`, so both engines route the same token sequences. vLLM reads DeepSeek's routing
from `topk_method`/`scoring_func` in config.json (R1's own config and the built-in model carry them).

Requirements (checked by vLLM at start-up): Model Runner V2 (`VLLM_USE_V2_MODEL_RUNNER=1` is set here when
unset), prefix caching on (vLLM's default; the routing store is keyed by KV block), no pipeline
parallelism. vLLM pins its own torch and transformers: it lives in its own environment
(`requirements/vllm.txt`, `docs/runbook.md`) and is imported only when this engine is constructed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from atlas_build.engines.base import RoutingBatch
from atlas_build.engines.checks import check_weight_files
from atlas_build.engines.hf import (
    DTYPES,
    HFEngine,
    load_config,
    meta_model,
    model_identity,
    resolve_checkpoint,
    routing_spec_of,
)
from atlas_build.errors import AtlasError
from atlas_build.routers import adapter_for

VLLM_INSTALL_HINT = "pip install -r requirements/vllm.txt"


class VLLMMissingError(AtlasError):
    """`--engine vllm` was asked for, but vLLM is not installed in this environment."""


class VLLMOptionsError(AtlasError):
    """An option the vllm engine cannot honour (random-init twins, a device map, ...)."""


class VLLMRoutingError(AtlasError):
    """vLLM's routed experts are missing or malformed: nothing is written rather than bad rows."""


def import_vllm():
    """`import vllm`, or VLLMMissingError with the install command."""
    try:
        import vllm
    except ImportError as error:
        raise VLLMMissingError(
            f"--engine vllm needs vLLM, which is not importable here ({error}). vLLM pins its own torch and "
            "transformers, so install it in a separate environment on a CUDA machine: "
            f"`python -m venv .venv-vllm && .venv-vllm/bin/{VLLM_INSTALL_HINT} && "
            ".venv-vllm/bin/pip install --no-deps -e .` (see docs/runbook.md)"
        ) from error
    return vllm


def _checked_rows(routed: Any, n_tokens: int, num_hidden_layers: int, n_moe: int, top_k: int, text: str):
    """One prompt's array, checked for presence, shape and row count (no pass over its values)."""
    if routed is None:
        raise VLLMRoutingError(
            f"vLLM returned no routed experts for {text}: either the request was preempted (vLLM drops a "
            "preempted request's capture: give it more room, e.g. --engine-arg gpu_memory_utilization=0.95 or "
            "--engine-arg max_num_seqs=64), or vLLM is older than 0.32 or was started without "
            "enable_return_routed_experts=True, Model Runner V2 and prefix caching, or with pipeline parallelism"
        )
    array = np.asarray(routed)
    if array.ndim != 3 or array.shape[2] != top_k:
        raise VLLMRoutingError(
            f"vLLM's routed experts for {text} have shape {array.shape}, expected [tokens, layers, top_k={top_k}]"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise VLLMRoutingError(f"vLLM's routed experts for {text} are {array.dtype}, not integer expert ids")
    if np.issubdtype(array.dtype, np.unsignedinteger):
        # vLLM stores ids as uint8 (<= 256 experts) or uint16: widen, so that sorting and the range and
        # -1 checks below read them as numbers.
        array = array.astype(np.int32)
    if array.shape[1] not in (num_hidden_layers, n_moe):
        raise VLLMRoutingError(
            f"vLLM's routed experts for {text} have {array.shape[1]} layers; the model has {num_hidden_layers} "
            f"decoder layers of which {n_moe} are MoE"
        )
    rows = array.shape[0]
    if rows != n_tokens:
        why = (
            "the last prompt token has no routing (the symptom of SGLang's bug #20964; from vLLM it means its "
            "capture and the prompt disagree: check the vLLM version against requirements/vllm.txt)"
            if rows == n_tokens - 1
            else "vLLM's routing does not line up with the prompt"
        )
        raise VLLMRoutingError(
            f"vLLM returned routing for {rows} tokens of {text}, which has {n_tokens}: {why}"
        )
    return array


def _moe_ids(array: np.ndarray, num_hidden_layers: int, moe_layers, n_routed_experts: int, top_k: int, where):
    """Checked rows `[T, layers, k]` -> int16 `[T, moe_layers, k]`, ids ascending; one vectorised pass.

    `where(token)` names a row of `array` in error messages.
    """
    moe = list(moe_layers)
    if array.shape[1] == num_hidden_layers and num_hidden_layers != len(moe):
        dense = [layer for layer in range(num_hidden_layers) if layer not in set(moe)]
        if np.any(array[:, dense]):
            token = int(np.argwhere(array[:, dense].any(axis=(1, 2)))[0, 0])
            raise VLLMRoutingError(
                f"vLLM reported experts for dense decoder layers {dense} at {where(token)}: its layer indexing "
                "does not match the model's MoE layers, so no layer can be trusted"
            )
        array = array[:, moe]
    holes = (array == -1).all(axis=-1)
    if holes.any():
        token, layer = (int(x) for x in np.argwhere(holes)[0])
        raise VLLMRoutingError(
            f"vLLM returned -1 for every expert of MoE layer {moe[layer]} at {where(token)} ({int(holes.sum())} "
            "(token, layer) rows in all): those are prefix-cache holes (tokens whose KV blocks came from the "
            "prefix cache, left unfilled by vLLM 0.21); upgrade vLLM to the version in requirements/vllm.txt"
        )
    if array.size and (array.min() < 0 or array.max() >= n_routed_experts):
        token = int(np.argwhere(((array < 0) | (array >= n_routed_experts)).any(axis=(1, 2)))[0, 0])
        raise VLLMRoutingError(
            f"vLLM returned expert ids in [{array.min()}, {array.max()}] (first at {where(token)}); valid ids "
            f"are [0, {n_routed_experts})"
        )
    ids = np.sort(array, axis=-1)
    if top_k > 1 and ids.size:
        # A top-k holds k distinct experts: k zeros mean a capture buffer that was never filled.
        zero = ~ids.any(axis=-1)
        if zero.any():
            token, layer = (int(x) for x in np.argwhere(zero)[0])
            raise VLLMRoutingError(
                f"vLLM returned all-zero expert ids for MoE layer {moe[layer]} at {where(token)} "
                f"({int(zero.sum())} (token, layer) rows in all): the capture buffer was never filled (a known "
                "bug of some fused-MoE paths); upgrade vLLM, or select another MoE backend (vLLM's VLLM_*MOE* "
                "environment variables) or run eagerly (--engine-arg enforce_eager=true)"
            )
        duplicate = ids[..., 1:] == ids[..., :-1]
        if duplicate.any():
            token, layer, _ = (int(x) for x in np.argwhere(duplicate)[0])
            raise VLLMRoutingError(
                f"vLLM returned duplicate ids {array[token, layer].tolist()} in the top-{top_k} of MoE layer "
                f"{moe[layer]} at {where(token)}: a top-k holds distinct experts, so the capture is corrupt"
            )
    return ids.astype(np.int16)


def experts_from_vllm(
    routed: Any,
    *,
    n_tokens: int,
    num_hidden_layers: int,
    moe_layers: tuple[int, ...] | list[int],
    n_routed_experts: int,
    top_k: int,
    text: str = "text",
) -> np.ndarray:
    """One prompt's routed experts from vLLM -> int16 `[n_tokens, len(moe_layers), top_k]`, ids ascending.

    Args:
        routed: int `[n_tokens, num_hidden_layers, top_k]` (dense layers all zero) or the older
            `[n_tokens, len(moe_layers), top_k]`; None when vLLM returned nothing.
        n_tokens: the prompt's token count.
        num_hidden_layers: decoder layers of the model.
        moe_layers: decoder-layer index of each MoE layer, in atlas order.
        n_routed_experts: valid ids are `[0, n_routed_experts)`.
        top_k: experts per token and layer.
        text: how to name the prompt in errors.

    Raises:
        VLLMRoutingError: missing array, wrong shape, dropped tokens, a dense layer with ids (layer
            mapping broken), ids out of range, all-zero ids or duplicate ids within a top-k.
    """
    array = _checked_rows(routed, n_tokens, num_hidden_layers, len(moe_layers), top_k, text)
    return _moe_ids(
        array,
        num_hidden_layers,
        moe_layers,
        n_routed_experts,
        top_k,
        lambda token: f"token {token} of {text}",
    )


def routing_batch_from_vllm(
    encoded: list[dict[str, Any]],
    tokens: list[str],
    request_outputs: list[Any],
    *,
    num_hidden_layers: int,
    moe_layers: tuple[int, ...] | list[int],
    n_routed_experts: int,
    top_k: int,
) -> RoutingBatch:
    """vLLM's request outputs for `encoded` prompts -> a RoutingBatch with `weights=None`.

    The checks of `experts_from_vllm` run once over the whole batch (per-text numpy calls would cost more
    than vLLM's forward pass per token at R1's shape).

    Args:
        encoded: per text `{"ids": int64 [n], "spans": int32 [n, 2]}` (`HFEngine.encode`).
        tokens: token strings of all texts, concatenated (`[T]`).
        request_outputs: `LLM.generate`'s outputs, in the order of `encoded`.
        num_hidden_layers, moe_layers, n_routed_experts, top_k: the model's shape.
    """
    if len(request_outputs) != len(encoded):
        raise VLLMRoutingError(f"vLLM returned {len(request_outputs)} outputs for {len(encoded)} prompts")
    n_moe = len(moe_layers)
    arrays = []
    for i, (enc, out) in enumerate(zip(encoded, request_outputs, strict=True)):
        sent = getattr(out, "prompt_token_ids", None)
        if sent is not None and list(sent) != enc["ids"].tolist():
            raise VLLMRoutingError(
                f"vLLM routed other tokens than it was given for text {i} ({len(sent)} vs {len(enc['ids'])} "
                "tokens): the two engines would not route the same sequence"
            )
        array = _checked_rows(
            routed_experts_of(out), len(enc["ids"]), num_hidden_layers, n_moe, top_k, f"text {i}"
        )
        if arrays and array.shape[1] != arrays[0].shape[1]:
            raise VLLMRoutingError(f"vLLM's routed experts change layout between text 0 and text {i}")
        arrays.append(array)
    counts = np.array([len(e["ids"]) for e in encoded], dtype=np.int64)
    starts = np.cumsum(counts) - counts

    def where(token: int) -> str:
        text = int(np.searchsorted(starts, token, side="right") - 1)
        return f"token {token - int(starts[text])} of text {text}"

    experts = (
        _moe_ids(np.concatenate(arrays), num_hidden_layers, moe_layers, n_routed_experts, top_k, where)
        if arrays
        else np.zeros((0, n_moe, top_k), np.int16)
    )
    return RoutingBatch(
        token_counts=counts,
        token_ids=np.concatenate([e["ids"] for e in encoded]) if encoded else np.zeros(0, np.int64),
        tokens=list(tokens),
        char_spans=np.concatenate([e["spans"] for e in encoded]) if encoded else np.zeros((0, 2), np.int32),
        experts=experts,
        weights=None,
    )


def routed_experts_of(request_output: Any):
    """The prompt's routed experts of one `RequestOutput`: `outputs[0].routed_experts` (vLLM >= 0.32), else
    the response-level `prompt_routed_experts` of vLLM 0.21; None when neither is there."""
    outputs = getattr(request_output, "outputs", None) or []
    routed = getattr(outputs[0], "routed_experts", None) if outputs else None
    if routed is None:
        routed = getattr(request_output, "prompt_routed_experts", None)
    return routed


class VLLMEngine(HFEngine):
    """vLLM engine: expert ids of every prompt token, no gate weights.

    Construction is cheap (config, tokenizer, the architecture on the meta device for `model_row`); vLLM's
    `LLM` starts on the first `route` call, so a build that routes on Ray workers never loads the model in
    the driver. Inherits the hf engine's checkpoint resolution, tokenizer, `encode` and `model_row`.

    Args:
        model: built-in name, checkpoint directory or hub id.
        dtype: vLLM's `dtype` ("auto": the checkpoint's; FP8 checkpoints keep their quantization).
        device: ignored (vLLM runs on the platform it was built for).
        device_map: must be None (vLLM shards with `tensor_parallel_size`).
        batch_size: ignored: each `route` call goes to vLLM at once and vLLM batches by token budget.
        tensor_parallel_size: GPUs per model replica (8 for DeepSeek-R1 in FP8 on H200s).
        gpu_memory_utilization: fraction of each GPU vLLM may take (weights + KV cache).
        max_model_len: longest prompt; None is the model's context (vLLM sizes the KV cache for it).
        llm_kwargs: further keyword arguments of `vllm.LLM` (e.g. `{"enforce_eager": True}`).
    """

    name = "vllm"
    returns_weights = False

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "cuda",
        device_map: str | None = None,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        random_init: bool = False,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        llm_kwargs: dict[str, Any] | None = None,
        load_weights: bool = False,  # vLLM loads its weights itself, on the first route
        model_id: str | None = None,
        threads: int | None = None,  # the hf engine's CPU threads; vLLM runs on GPUs
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if random_init:
            raise VLLMOptionsError(
                "--random-init needs the hf engine: vLLM cannot build the seeded random-init twin. Route the "
                "twin with --engine hf (or materialize a random-init checkpoint and pass its directory)"
            )
        if device_map:
            raise VLLMOptionsError(
                f"--device-map {device_map} is for the hf engine; vLLM spreads a model with "
                "--tensor-parallel-size"
            )
        if tensor_parallel_size < 1:
            raise VLLMOptionsError(f"--tensor-parallel-size must be at least 1, got {tensor_parallel_size}")
        import_vllm()  # fail here, with the install hint, not deep inside the first shard
        self.model_id = model_identity(model, revision, model_id)
        self.batch_size = batch_size
        self.dtype_name = dtype
        self.random_init = False
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.llm_kwargs = dict(llm_kwargs or {})
        path, self.revision, self.builtin = resolve_checkpoint(model, revision)
        self.path: Path = path
        self.config = load_config(path, trust_remote_code)
        self.adapter = adapter_for(self.config)
        self.spec = routing_spec_of(self.adapter, self.config, path)
        # vLLM reads the weights only when it starts (first route): a truncated file or a missing shard
        # is refused now, before anything is written.
        check_weight_files(path)
        # The hf engine's model_row counts parameters of `_model`: the meta-device architecture has them.
        self._model = meta_model(self.config, dtype, trust_remote_code)
        self._routers = self.adapter.router_modules(self._model)
        self.device = "meta"
        self._tokenizer = self._load_tokenizer(path, trust_remote_code)
        self._hooks = []
        self._llm = None
        self.threads, self.threads_reason = None, "vLLM runs on GPUs"

    def provenance(self) -> dict[str, Any]:
        """Library versions, GPUs and the vLLM settings that decide the routing path (CUDA graphs or eager,
        MoE backend, batching). Misaligned rows from fused shared experts (flashinfer#4894) hold valid,
        distinct ids that no check can catch: this record is how such an atlas is found afterwards."""
        from atlas_build.engines.hf import library_versions

        info = library_versions("torch", "transformers", "accelerate", "vllm", "flashinfer-python")
        info["flashinfer"] = info.pop("flashinfer-python")
        try:
            import torch

            cuda = torch.cuda.is_available()
            info.update(
                device=torch.cuda.get_device_name(0) if cuda else None,
                device_count=torch.cuda.device_count() if cuda else 0,
                cuda=torch.version.cuda,
            )
        except ImportError:  # pragma: no cover - torch comes with vLLM
            pass
        arguments = self.llm_arguments()
        info.update(
            dtype=self.dtype_name,
            attention=os.environ.get("VLLM_ATTENTION_BACKEND") or "vllm default",
            cuda_graphs=not arguments.get("enforce_eager", False),
            moe_backend={k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_") and "MOE" in k}
            or "vllm default",
            tensor_parallel_size=self.tensor_parallel_size,
            batch_size=None,
            max_num_batched_tokens=arguments.get("max_num_batched_tokens"),
            max_num_seqs=arguments.get("max_num_seqs"),
            engine_args={k: v for k, v in self.llm_kwargs.items()},
        )
        return info

    @property
    def max_length(self) -> int | None:
        return self.max_model_len or getattr(self.text_config, "max_position_embeddings", None)

    def llm_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `vllm.LLM` for this engine."""
        kwargs: dict[str, Any] = {
            "model": str(self.path),
            "tokenizer": str(self.path),
            "dtype": self.dtype_name,
            "tensor_parallel_size": self.tensor_parallel_size,
            "trust_remote_code": self.trust_remote_code,
            "seed": self.seed,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_return_routed_experts": True,
            # The routing store is keyed by KV block and shared with the prefix cache: vLLM requires it on.
            "enable_prefix_caching": True,
        }
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        if self.tensor_parallel_size > 1:
            # One replica per node, in processes of its own, also when this runs inside a Ray actor.
            kwargs["distributed_executor_backend"] = "mp"
        kwargs.update(self.llm_kwargs)
        if kwargs.get("pipeline_parallel_size", 1) != 1:
            raise VLLMOptionsError("vLLM does not return routed experts with pipeline parallelism")
        return kwargs

    def _start(self):
        if self._llm is None:
            vllm = import_vllm()
            # Routing return exists only in Model Runner V2.
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "1")
            self._llm = vllm.LLM(**self.llm_arguments())
            self._sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        return self._llm

    def route(self, texts: list[str]) -> RoutingBatch:
        encoded = self.encode(texts)  # raises TextTooLongError past `max_length`
        tokens: list[str] = []
        for e in encoded:
            tokens.extend(self._tokenizer.convert_ids_to_tokens(e["ids"].tolist()))
        if not encoded:
            return routing_batch_from_vllm([], [], [], **self._shape())
        llm = self._start()
        prompts = [{"prompt_token_ids": e["ids"].tolist()} for e in encoded]
        outputs = llm.generate(prompts, self._sampling, use_tqdm=False)
        return routing_batch_from_vllm(encoded, tokens, list(outputs), **self._shape())

    def _shape(self) -> dict[str, Any]:
        return {
            "num_hidden_layers": self.config.num_hidden_layers,
            "moe_layers": self.spec.moe_layers,
            "n_routed_experts": self.spec.n_routed_experts,
            "top_k": self.spec.top_k,
        }

    def generate(self, *args, **kwargs):
        raise VLLMOptionsError(
            "the vllm engine routes given texts only: generating traces needs the hf engine"
        )

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
        self._model = None


__all__ = [
    "VLLMEngine",
    "VLLMMissingError",
    "VLLMOptionsError",
    "VLLMRoutingError",
    "experts_from_vllm",
    "meta_model",
    "routed_experts_of",
    "routing_batch_from_vllm",
]
