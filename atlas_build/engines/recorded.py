"""The hf engine of a model an atlas recorded: what `atlas audit` and `atlas intervene` re-run."""

from __future__ import annotations

from typing import Any

# The dtypes a models row may name that the hf engine loads as they are; anything else loads as `auto`.
LOADABLE_DTYPES = ("float32", "bfloat16", "float16")


def recorded_engine(
    row: dict[str, Any], model: str | None, device: str, batch_size: int, random_init: bool
) -> tuple[Any, str]:
    """`(engine, what was loaded)`: the models row's checkpoint (its random-init twin rebuilt from the row's seed
    when `random_init`), or `model` (a local checkpoint given instead) in the row's dtype.

    Raises:
        ModelLoadError: the checkpoint cannot be loaded (callers say how to give it).
    """
    from atlas_build.engines import ENGINES

    engine_cls = ENGINES.get("hf")
    dtype = row.get("dtype") if row.get("dtype") in LOADABLE_DTYPES else "auto"
    if model is not None:
        return engine_cls(model, dtype=dtype, device=device, batch_size=batch_size), model
    engine = engine_cls(
        row["model_id"],
        revision=row.get("revision"),
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        random_init=random_init,
        seed=int(row.get("seed") or 0),
    )
    return engine, row["model_id"] + (f"@{row['revision']}" if row.get("revision") else "")
