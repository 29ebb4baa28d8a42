"""`atlas model`: the built-in checkpoints, and the MoE architectures the atlas can route."""

from __future__ import annotations

from pathlib import Path

import click

from atlas_build.commands._options import SEED


@click.group("model")
def command() -> None:
    """Built-in models (random-init, for tests and as null models) and supported architectures."""


@command.command("materialize")
@click.argument("name")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=SEED, default=None, help="Weight seed (default: the built-in seed).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
def materialize(name: str, out_dir: Path, seed: int | None, overwrite: bool) -> None:
    """Write built-in model NAME as a standard HF checkpoint directory OUT_DIR."""
    from atlas_build.models import BUILTIN
    from atlas_build.registry import Registry

    if name not in BUILTIN:
        from atlas_build.errors import AtlasError

        raise AtlasError(Registry("built-in model", dict.fromkeys(BUILTIN, "")).unknown_message(name))
    from atlas_build.errors import AtlasError

    module = BUILTIN[name]
    if str(out_dir).startswith("~"):
        out_dir = out_dir.expanduser()
    for parent in [out_dir.absolute(), *out_dir.absolute().parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == out_dir.absolute() else f"is below the file {parent}"
                raise AtlasError(f"{out_dir} {where}; pass a directory")
            break
    from atlas_build.atlas.manifest import refuse_inside_release

    refuse_inside_release(out_dir, f"writing a checkpoint at {out_dir}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise AtlasError(f"{out_dir} is not empty: pass --overwrite or choose another directory")
    if seed is not None and not 0 <= seed < 2**32:
        raise AtlasError(f"--seed must be between 0 and {2**32 - 1}, got {seed}")
    try:
        path = module.materialize(
            out_dir, seed=module.DEFAULT_SEED if seed is None else seed, overwrite=overwrite
        )
    except OSError as error:
        # A read-only file system, no permission, a full disk: the generator removed its temporary folder.
        raise AtlasError(
            f"cannot write {out_dir}: {error.strerror or error}; nothing was left behind: pass a folder you "
            "can write to"
        ) from None
    click.echo(f"wrote {name} (RANDOM-INIT) to {path}")


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the two lists.")
def list_models(as_json: bool) -> None:
    """List the built-in models, every supported MoE architecture with what was verified of each, and every
    MoE family of the installed transformers with its status (verified, refused with the reason, not MoE)."""
    from atlas_build.models import BUILTIN
    from atlas_build.routers import ADAPTERS, VERIFIED_FOR_ALL

    builtins = {
        name: (module.__doc__ or "").strip().splitlines()[0] for name, module in sorted(BUILTIN.items())
    }
    adapters = {model_type: ADAPTERS.get(model_type) for model_type in ADAPTERS.names()}
    architectures = [
        {"model_type": name, "family": adapter.family, "verified": [*VERIFIED_FOR_ALL, *adapter.verified]}
        for name, adapter in adapters.items()
    ]
    from atlas_build.routers.catalog import catalog

    families = catalog()
    if as_json:
        import json

        click.echo(
            json.dumps({"builtin": builtins, "architectures": architectures, "families": families}, indent=2)
        )
        return
    click.echo("Built-in models (RANDOM-INIT):")
    for name, summary in builtins.items():
        click.echo(f"  {name}\t{summary}")
    click.echo("\nSupported MoE architectures (transformers model_type, released models):")
    for name, adapter in adapters.items():
        click.echo(f"  {name}\t{adapter.family}")
        if adapter.verified:
            click.echo(f"  {'':{len(name)}}\talso verified: {'; '.join(adapter.verified)}")
    click.echo(
        "Verified of every architecture by tests/routers, on a tiny random-init checkpoint built there: "
        + "; ".join(VERIFIED_FOR_ALL)
        + "."
    )
    click.echo("\nEvery MoE family of the installed transformers (family: status):")
    for row in families:
        detail = f" ({row['detail']})" if row["detail"] else ""
        click.echo(f"  {row['family']}: {row['status']}{detail}")
