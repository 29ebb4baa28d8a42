"""Loading a checkpoint for the hf engine: its config, hash, routing spec, dtype and model class.

Module-level functions with no engine state (the vLLM engine and the meta-device model row use them too).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from atlas_build.engines.base import ModelLoadError
from atlas_build.engines.checks import (
    check_routing_spec,
    read_config_json,
)
from atlas_build.routers import RouterAdapter, decoder_config

# Above this, a checkpoint is identified by its file listing rather than by hashing every byte.
HASH_WEIGHTS_LIMIT = 4 << 30


def checkpoint_sha256(path: Path) -> str:
    """sha256 over config.json and the weight files; for very large checkpoints over their listing."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    by_content = total <= HASH_WEIGHTS_LIMIT
    for p in files:
        digest.update(p.name.encode() + b"\0")
        if by_content or p.suffix == ".json":
            with open(p, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        else:
            digest.update(str(p.stat().st_size).encode())
    return ("" if by_content else "listing:") + digest.hexdigest()


def load_config(path: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    read_config_json(config_file)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as error:
        message = str(error)
        if "trust_remote_code" in message:
            raise ModelLoadError(
                f"{path} needs custom code from the checkpoint; pass --trust-remote-code if you trust it"
            ) from error
        raise ModelLoadError(f"could not read {config_file}: {message.splitlines()[0]}") from error
    except Exception as error:  # noqa: BLE001 - config classes validate with their own error types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"could not read {config_file}: {first}") from error


def library_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None where one is not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def routing_spec_of(adapter: RouterAdapter, config, path: Path):
    """The adapter's routing spec of `config`, checked for consistency (see `checks.check_routing_spec`)."""
    where = f"{path / 'config.json'}"
    try:
        spec = adapter.routing_spec(config)
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise ModelLoadError(
            f"{where}: the routing fields cannot be read ({type(error).__name__}: {error}); fix the config "
            "or pass another checkpoint"
        ) from None
    # A multimodal wrapper (Llama 4, Qwen3.5-MoE) keeps its layer count in the text decoder's config.
    check_routing_spec(spec, getattr(decoder_config(config), "num_hidden_layers", None), where)
    return spec


def resolve_dtype(config, dtype: str):
    """`--dtype` -> torch dtype; "auto" is the checkpoint's own (`config.dtype`), as `from_pretrained` does."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, found) if isinstance(found, str) else found


def auto_model_class(config):
    """`AutoModelForCausalLM`, or `AutoModelForImageTextToText` for a multimodal MoE wrapper that transformers
    gives no causal-LM class (Qwen3-VL-MoE): the whole wrapper loads, and only its text tower is run (the
    adapter's `layers_path` names it)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if (
        model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    ):
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def meta_model(config, dtype: str, trust_remote_code: bool = False):
    """The architecture of `config` on the meta device: shapes and parameter counts, no memory, no weights.

    Quantized checkpoints (FP8) are counted as their unquantized architecture (no scale tensors).
    """
    import torch

    with torch.device("meta"):
        return auto_model_class(config).from_config(
            config, dtype=resolve_dtype(config, dtype), trust_remote_code=trust_remote_code
        )
