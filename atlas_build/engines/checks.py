"""Checks on a checkpoint before and after loading: nothing is routed that the model would not compute.

- `read_config_json`: config.json as strict JSON (an object; no duplicate keys, NaN or runaway nesting).
- `check_weight_files`: every safetensors file complete (a truncated download is named), every shard
  that `model.safetensors.index.json` names present.
- `check_routing_spec`: the router's numbers agree with each other (1 <= top-k <= experts, at least one
  MoE layer, groups dividing the experts), before a corpus is written or a model loaded.
- `check_loading_info`: transformers' `output_loading_info` has no missing, unexpected or mismatched
  tensors: transformers fills a missing router or `e_score_correction_bias` with fresh values and routes on,
  which gives garbage that passes every later check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from atlas_build.engines.base import ModelLoadError

REDOWNLOAD = "re-download the checkpoint (or pass another one)"


def read_config_json(path: Path) -> dict[str, Any]:
    """`path` (a config.json) parsed strictly.

    Raises:
        ModelLoadError: not UTF-8 JSON, nested too deeply, duplicate keys, NaN/Infinity, not an object.
    """

    def no_duplicates(pairs):
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ModelLoadError(f"{path} is corrupt: key {key!r} appears twice; {REDOWNLOAD}")
            seen[key] = value
        return seen

    def no_constant(name):
        raise ModelLoadError(f"{path} is corrupt: {name} is not a JSON number; {REDOWNLOAD}")

    try:
        data = json.loads(
            path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is corrupt (not valid JSON: {error}); {REDOWNLOAD}") from None
    except RecursionError:
        raise ModelLoadError(
            f"{path} is corrupt (nested too deeply to be a model config); {REDOWNLOAD}"
        ) from None
    except OSError as error:
        raise ModelLoadError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{path} holds a JSON {type(data).__name__}, not a model config (an object); {REDOWNLOAD}"
        )
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ModelLoadError(f"{path}: model_type is {model_type!r}, not a name; {REDOWNLOAD}")
    return data


def check_weight_files(path: Path) -> None:
    """Refuse a checkpoint whose weight files are incomplete, naming the file.

    Reads only safetensors headers (a memory map): cheap even for R1's 163 shards.
    """
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            raise ModelLoadError(
                f"{index} is corrupt ({type(error).__name__}: {error}); {REDOWNLOAD}"
            ) from None
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ModelLoadError(
                f"{path} is incomplete: {len(missing)} of the {len(shards)} weight files its index names are "
                f"missing ({', '.join(missing[:3])}{more}); {REDOWNLOAD}"
            )
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="np") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError (or OSError)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelLoadError(
                f"{file} is truncated or corrupt ({file.stat().st_size} bytes; safetensors: {reason}); "
                f"{REDOWNLOAD}"
            ) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_routing_spec(spec, num_hidden_layers, where: str) -> None:
    """Refuse a routing spec whose numbers cannot describe a router, naming the field.

    Args:
        spec: the adapter's `RoutingSpec`.
        num_hidden_layers: decoder layers of the model.
        where: how to name the config in messages (its path).
    """
    n, k = spec.n_routed_experts, spec.top_k

    def bad(reason: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: {reason}; fix the config or pass another checkpoint")

    if not _is_int(n) or n < 1:
        raise bad(f"the number of routed experts is {n!r}, not a positive integer")
    if not _is_int(k) or not 1 <= k <= n:
        raise bad(f"top-k (num_experts_per_tok) is {k!r}; it must be between 1 and the {n} routed experts")
    if not _is_int(num_hidden_layers) or num_hidden_layers < 1:
        raise bad(f"num_hidden_layers is {num_hidden_layers!r}, not a positive integer")
    if not spec.moe_layers:
        raise bad(
            f"no decoder layer is a Mixture-of-Experts layer (of {num_hidden_layers}; e.g. "
            "first_k_dense_replace >= num_hidden_layers): there is no routing to record"
        )
    outside = [layer for layer in spec.moe_layers if not 0 <= layer < num_hidden_layers]
    if outside:
        raise bad(f"MoE layers {outside} are outside the model's {num_hidden_layers} decoder layers")
    factor = spec.routed_scaling_factor
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise bad(f"routed_scaling_factor is {factor!r}, not a positive number")
    groups, top_groups = spec.n_group, spec.topk_group
    if groups is None:
        return
    if not _is_int(groups) or groups < 1 or n % groups:
        raise bad(f"n_group is {groups!r}, which does not divide the {n} routed experts into equal groups")
    if not _is_int(top_groups) or not 1 <= top_groups <= groups:
        raise bad(f"topk_group is {top_groups!r}; it must be between 1 and n_group = {groups}")
    if k > top_groups * (n // groups):
        raise bad(
            f"top-k = {k} experts cannot be chosen from topk_group = {top_groups} groups of {n // groups} experts"
        )
    if spec.topk_method == "noaux_tc" and n // groups < 2:
        raise bad(
            f"groups of {n // groups} expert: DeepSeek's group score sums the 2 best experts of a group"
        )


def check_loading_info(
    info: dict[str, Any], model_id: str, path: Path, own_prefixes: set[str] | None = None
) -> None:
    """Refuse a load that transformers had to patch: missing, unexpected or mismatched tensors.

    Args:
        info: `from_pretrained(..., output_loading_info=True)`'s second value.
        own_prefixes: first dotted parts of the loaded model's own tensor names (`model`, `lm_head`). An
            unexpected tensor outside them belongs to a part that is deliberately not loaded (the vision
            tower of a multimodal checkpoint loaded as its causal LM) and is not refused.
    """
    if own_prefixes is not None:
        unexpected = [k for k in info.get("unexpected_keys") or () if str(k).split(".")[0] in own_prefixes]
        info = {**info, "unexpected_keys": unexpected}

    def names(keys) -> list[str]:
        out = []
        for key in keys or ():
            if isinstance(key, (tuple, list)):  # mismatched: (name, checkpoint shape, model shape)
                out.append(
                    f"{key[0]} (checkpoint {tuple(key[1])}, model {tuple(key[2])})"
                    if len(key) == 3
                    else str(key[0])
                )
            else:
                out.append(str(key))
        return sorted(out)

    problems = []
    for label, key in (
        ("missing", "missing_keys"),
        ("unexpected", "unexpected_keys"),
        ("mismatched", "mismatched_keys"),
    ):
        found = names(info.get(key))
        if found:
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            problems.append(f"{len(found)} {label} ({shown})")
    errors = [str(e).splitlines()[0] for e in info.get("error_msgs") or [] if str(e).strip()]
    if errors:
        problems.append(f"errors ({'; '.join(errors[:2])})")
    if problems:
        raise ModelLoadError(
            f"the checkpoint of {model_id} at {path} does not match its architecture: tensors "
            f"{'; '.join(problems)}. transformers would fill them with fresh values and route garbage; "
            f"{REDOWNLOAD}, or one whose key names fit this transformers version"
        )
