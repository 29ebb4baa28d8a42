"""What the `hf` engine does for `--router-inputs`: the option checks, the projection of captured router
inputs, and the models row fields and card note. The capture itself (forward hooks) stays in `hf.py`."""

from __future__ import annotations

from typing import Any

import numpy as np

from atlas_build.atlas.projection import IDENTITY, RouterInputProjection
from atlas_build.errors import BuildOptionsError

ROW_KEYS = ("layers", "dim", "hidden_size", "projection", "seed", "projection_sha256")


def check_router_inputs(
    moe_layers, hidden_size: int, model_id: str, layers, dim: int, seed: int
) -> tuple[tuple[int, ...], RouterInputProjection | None]:
    """`--router-inputs` / `--router-input-dim`, refused (from the config, before any weight loads) for a layer
    that is not an MoE layer and for D outside 0..hidden size. Returns the layers (in MoE-layer order) and the
    projection (None without router inputs)."""
    if layers is None:
        return (), None
    moe = tuple(moe_layers)
    if layers == "all":
        layers = moe
    wrong = [layer for layer in layers if layer not in moe]
    if wrong:
        contiguous = moe == tuple(range(moe[0], moe[-1] + 1))
        shown = f"{moe[0]}-{moe[-1]}" if contiguous else ",".join(map(str, moe))
        raise BuildOptionsError(
            f"--router-inputs {','.join(map(str, wrong))}: not an MoE layer of {model_id}, whose "
            f"{len(moe)} MoE layers are {shown}: pass some of those decoder layer indices, or all"
        )
    if dim < 0 or dim > hidden_size:
        raise BuildOptionsError(
            f"--router-input-dim {dim}: D must be 0 (the full vector) or between 1 and the hidden size "
            f"{hidden_size} of {model_id}"
        )
    chosen = set(layers)
    return tuple(layer for layer in moe if layer in chosen), RouterInputProjection(seed, hidden_size, dim)


def project_captures(
    captures: list, projection: RouterInputProjection, matrices: dict, batch: int, width: int
):
    """Captured router inputs (one tensor per chosen layer) -> float32 `[B, S, n, D]`.

    The product runs in float64 on the capture's device (a CPU matmul at R1's width, 7168 x 256 per token and
    layer, would cost far more than the GPU forward); the matrix is the float64 one
    `atlas_build.atlas.projection` draws from the seed, so the result is the float64 product up to the order of
    its sums (~1e-16 relative), far below the float16 the atlas stores. `matrices` caches it per device."""
    import torch

    per_layer = []
    for captured in captures:
        x = captured.reshape(batch, width, -1)
        if projection.matrix is None:
            per_layer.append(x.float().cpu())
            continue
        if matrices.get(x.device) is None:
            matrices[x.device] = torch.from_numpy(projection.matrix).to(x.device)
        per_layer.append((x.double() @ matrices[x.device]).float().cpu())
    return torch.stack(per_layer, dim=2).numpy()


def router_input_row(layers: tuple[int, ...], projection: RouterInputProjection | None) -> dict[str, Any]:
    """The models row's `router_input_*` fields (all None without router inputs)."""
    if projection is None:
        return {f"router_input_{key}": None for key in ROW_KEYS}
    return {
        "router_input_layers": list(layers),
        "router_input_dim": projection.dim,
        "router_input_hidden_size": projection.hidden_size,
        "router_input_projection": projection.method,
        "router_input_seed": projection.seed,
        "router_input_projection_sha256": projection.sha256,
    }


def router_input_note(layers: tuple[int, ...], projection: RouterInputProjection) -> str:
    """The dataset card's sentence on the stored router inputs."""
    how = (
        "the full vector"
        if projection.method == IDENTITY
        else f"projected to {projection.dim} dimensions by the seeded Gaussian JL matrix {projection.method} "
        f"(seed {projection.seed})"
    )
    return (
        f"Router inputs (--router-inputs): `router_inputs` holds, per token, the vector the router of decoder "
        f"layers {list(layers)} read (hidden size {projection.hidden_size}), {how}, as float16."
    )


def empty_inputs(n_layers: int, projection: RouterInputProjection) -> np.ndarray:
    return np.zeros((0, n_layers, projection.dim), np.float32)
