"""Security: no remote code without --trust-remote-code, no token in any file or log, no write outside the
atlas directory whatever the names in options or data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.schema import check_slug, routing_config_name, slugify

from ._support import FAKE_ARGS, FakeEngine
from .conftest import HF_TOKEN, cli
from .test_bad_inputs import build, refused

CUSTOM_CONFIG = {
    "model_type": "custom_moe",
    "architectures": ["CustomMoeForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_custom.CustomMoeConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomMoeForCausalLM",
    },
}


def test_checkpoint_code_never_runs_without_the_flag(tmp_path):
    ckpt = tmp_path / "custom"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(CUSTOM_CONFIG))
    sentinel = tmp_path / "code-ran"
    code = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (ckpt / name).write_text(code + "from transformers import PretrainedConfig as CustomMoeConfig\n")
    out = tmp_path / "out"
    refused(build(str(ckpt), out), out, "needs custom code from the checkpoint", "pass --trust-remote-code")
    assert not sentinel.exists()


def test_hf_engine_loads_without_remote_code_by_default(tiny_checkpoint, monkeypatch):
    import transformers

    from atlas_build.engines.hf import HFEngine

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "missing")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    HFEngine(str(tiny_checkpoint)).close()
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


def test_the_cli_passes_no_remote_code_unless_asked(tmp_path, fakes):
    assert cli(["build", "--out", str(tmp_path / "a"), *FAKE_ARGS]).exit_code == 0
    assert FakeEngine.last_options["trust_remote_code"] is False
    assert cli(["build", "--out", str(tmp_path / "b"), *FAKE_ARGS, "--trust-remote-code"]).exit_code == 0
    assert FakeEngine.last_options["trust_remote_code"] is True


def test_no_hf_token_in_any_file_or_log(real_cli_resumed):
    """A build with HF_TOKEN set (a subprocess killed midway, then resumed): the token is nowhere."""
    out, killed, resumed = real_cli_resumed
    assert HF_TOKEN not in killed.stdout + killed.stderr + resumed
    leaks = [p for p in out.rglob("*") if p.is_file() and HF_TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert (out / "manifest.json").exists() and (out / "README.md").exists()


@pytest.mark.parametrize(
    "config", ["../x", "..", "/abs", "a/b", "routing-../x", "routing-/abs", "routing-A", "routing-a/b", ""]
)
def test_config_names_cannot_leave_the_atlas(tmp_path, config):
    layout = AtlasLayout(tmp_path / "atlas")
    with pytest.raises(ValueError):
        layout.config_dir(config)
    with pytest.raises(ValueError):
        layout.shard_path(config, 0)
    with pytest.raises(ValueError):
        layout.marker_path(config, 0)


def test_a_symlinked_config_folder_pointing_outside_is_refused(tmp_path):
    root = tmp_path / "atlas"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "senses").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside the atlas directory"):
        AtlasLayout(root).shard_path("senses", 0)


@pytest.mark.parametrize("slug", ["../x", "/abs", "x/../../y", "..", ".hidden", "a\x00b", "a" * 97])
def test_slugs_with_path_parts_are_invalid(slug):
    with pytest.raises(ValueError, match="invalid model slug"):
        check_slug(slug)
    with pytest.raises(ValueError):
        routing_config_name(slug)


@pytest.mark.parametrize(
    "model_id",
    ["../../etc/passwd", "/abs/path/DeepSeek-R1/", "org/..", "~/models/Qwen3 MoE", "a/b/../../..", "é😀"],
)
def test_slugs_derived_from_model_ids_are_safe(model_id, tmp_path):
    slug = slugify(model_id)
    assert check_slug(slug) == slug
    path = AtlasLayout(tmp_path).shard_path(routing_config_name(slug), 0)
    assert Path(os.path.commonpath([path.resolve(), tmp_path.resolve()])) == tmp_path.resolve()
