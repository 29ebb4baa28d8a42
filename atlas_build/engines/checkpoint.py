"""Where a `--model` comes from: a built-in name, a local checkpoint directory, or a hub id.

A hub id (`org/name`, optionally `org/name@revision`) is resolved with `huggingface_hub.snapshot_download`,
which reads the local Hugging Face cache first (and only, when `HF_HUB_OFFLINE=1`) and downloads otherwise.
A name is a local path when it exists, or when it is written as one (`./x`, `/x`, `~/x`, `a/b/c`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from atlas_build.engines.base import ModelLoadError

# What a routing engine needs of a hub repository: configs, weights, tokenizer files, chat templates and
# (only run with --trust-remote-code) the repository's modelling code.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
# The hub's rule for repository ids (huggingface_hub.utils.validate_repo_id): org/name, each part of
# letters, digits, '-', '_' and '.', not starting or ending with '-' or '.'.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"^(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<revision>[^\s@]+))?$")
# A recorded --model-id: `name` or `org/name` by the same rule.
MODEL_ID = re.compile(rf"{_REPO_PART}(?:/{_REPO_PART})?")


@dataclass(frozen=True)
class ModelRef:
    """A parsed `--model`: `kind` is "builtin", "local" or "hub"; `revision` only for hub ids."""

    kind: str
    name: str
    revision: str | None = None


def parse_model_ref(model: str, revision: str | None = None) -> ModelRef:
    """Classify `--model` without touching the network.

    Raises:
        ModelLoadError: a path that does not exist, a malformed hub id, or two different revisions
            (`org/name@rev` and `--revision`).
    """
    from atlas_build.models import BUILTIN

    if model in BUILTIN:
        if revision:
            raise ModelLoadError(f"--revision is for hub models; {model!r} is a built-in model")
        return ModelRef("builtin", model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model path {path} is a file; pass a checkpoint directory (with config.json)"
            )
        if revision:
            raise ModelLoadError(f"--revision is for hub models; {model!r} is a local directory")
        return ModelRef("local", str(path))
    if model.endswith("@") and HUB_ID.match(model[:-1]):
        raise ModelLoadError(
            f"{model!r}: the revision after '@' is empty; give {model}REVISION (a branch, tag or commit) or "
            "leave the '@' out"
        )
    match = HUB_ID.match(model)
    written_as_path = model.startswith((".", "/", "~")) or "\\" in model
    if written_as_path or match is None:
        builtins = ", ".join(sorted(BUILTIN))
        close = difflib.get_close_matches(model, sorted(BUILTIN), n=1, cutoff=0.8)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        what = "model path" if written_as_path or model.count("/") > 1 else "model"
        raise ModelLoadError(
            f"{what} {model!r} does not exist. {hint}Pass a built-in name ({builtins}), a checkpoint "
            "directory, or a hub id such as deepseek-ai/DeepSeek-R1 (optionally @revision)"
        )
    pinned = match.group("revision")
    if pinned and revision and pinned != revision:
        raise ModelLoadError(
            f"{model!r} pins revision {pinned!r} but --revision says {revision!r}; give one of them"
        )
    return ModelRef("hub", match.group("repo"), pinned or revision)


def resolve_checkpoint(model: str, revision: str | None = None) -> tuple[Path, str | None, bool]:
    """Model name -> (local checkpoint dir, hub commit hash or None, is_builtin).

    A built-in name is materialised into the cache; a local directory is used as it is; a hub id is
    fetched (or found in the local Hugging Face cache, which is all there is offline) with
    `huggingface_hub.snapshot_download`, and its revision is reported as the snapshot's commit hash.
    """
    from atlas_build.models import BUILTIN, builtin_checkpoint

    ref = parse_model_ref(model, revision)
    if ref.kind == "builtin":
        return builtin_checkpoint(model), None, True
    if ref.kind == "local":
        return Path(ref.name), None, False

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"@{ref.revision}" if ref.revision else ""
    try:
        local = snapshot_download(ref.name, revision=ref.revision, allow_patterns=HUB_PATTERNS)
    except LocalEntryNotFoundError as error:
        builtins = ", ".join(sorted(BUILTIN))
        raise ModelLoadError(
            f"{ref.name}{at} is not in the local Hugging Face cache and the hub cannot be reached (offline or "
            f"no network). Download it first (`hf download {ref.name}"
            + (f" --revision {ref.revision}" if ref.revision else "")
            + f"`) with HF_HOME pointing at the cache, pass its directory, or use a built-in model ({builtins})"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelLoadError(f"{ref.name} has no revision {ref.revision!r} on the hub") from error
    except GatedRepoError as error:
        raise ModelLoadError(
            f"{ref.name} is gated: accept its terms on the hub and log in (`hf auth login`) first"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelLoadError(
            f"{ref.name} is not a model repository on the hub (or it is private: log in with `hf auth login`)"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"could not fetch {ref.name}{at} from the hub: {first}") from error
    local_path = Path(local)
    if not (local_path / "config.json").exists():
        raise ModelLoadError(
            f"{ref.name}{at} in the Hugging Face cache has no config.json: the download is incomplete; "
            f"run `hf download {ref.name}` again"
        )
    # snapshots/<commit>: the exact commit, whatever branch or tag was asked for.
    return local_path, local_path.name, False


def model_identity(model: str, revision: str | None = None, model_id: str | None = None) -> str:
    """The portable name an atlas records for `--model` (never a path of the build machine).

    `model_id` (`--model-id`) when given; else the repository id for a hub id (the revision is recorded
    apart), the checkpoint folder's name for a local directory (its `checkpoint_sha256` says which
    weights), the name itself for a built-in model.
    """
    if model_id is not None:
        return check_model_id(model_id)
    ref = parse_model_ref(model, revision)
    if ref.kind == "hub":
        return ref.name
    if ref.kind == "local":
        return Path(ref.name).resolve().name or "model"
    return model


def check_model_id(model_id: str) -> str:
    """A `--model-id` fit to publish: a name (`org/name` or `name`), not a path of this machine."""
    if not model_id or model_id != model_id.strip() or any(c.isspace() or ord(c) < 32 for c in model_id):
        raise ModelLoadError(f"--model-id {model_id!r} must be a name without spaces, e.g. my-org/my-moe")
    if model_id.startswith(("/", "~", ".")) or "\\" in model_id or ".." in model_id.split("/"):
        raise ModelLoadError(
            f"--model-id {model_id!r} looks like a path; give the name the atlas should publish, e.g. "
            "my-org/my-moe (the checkpoint's hash is recorded beside it)"
        )
    if "://" in model_id or not MODEL_ID.fullmatch(model_id):
        raise ModelLoadError(
            f"--model-id {model_id!r} is not a model id: give `name` or `org/name` (letters, digits, '-', '_', "
            "'.'; no empty part, URL or revision), e.g. my-org/my-moe"
        )
    return model_id
