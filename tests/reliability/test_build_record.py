"""What a build records and keys its shards on: batch size in the shard key, torch's thread count chosen
and recorded, engine provenance in `builds[]`, and Ctrl-C saying how to resume."""

from __future__ import annotations

import json

from ._support import FAKE_ARGS, FakeEngine
from .conftest import cli, copy_of


def test_a_resume_with_another_batch_size_redoes_the_shards(tmp_path, fakes, fake_reference):
    """Padding changes float rounding (fp16 weights differ by one ulp between batch 1 and 16): a shard
    routed at another batch size is not the same shard."""
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    same = cli(["build", "--out", str(atlas), *FAKE_ARGS, "--batch-size", "16"])
    assert same.exit_code == 0 and "0 shards written, 10 resumed" in same.output, same.output
    other = cli(["build", "--out", str(atlas), *FAKE_ARGS, "--batch-size", "1"])
    assert other.exit_code == 0 and "10 shards written, 0 resumed" in other.output, other.output
    record = json.loads((atlas / "manifest.json").read_text())["builds"][-1]
    assert record["engine"]["batch_size"] == 1


def test_the_thread_count_is_chosen_and_recorded(real_reference):
    record = json.loads((real_reference / "manifest.json").read_text())["builds"][-1]
    provenance = record["engine"]["provenance"]
    assert provenance["threads"] == 1 and "small model" in provenance["threads_reason"]
    from importlib.metadata import version

    assert provenance["torch"] == version("torch") and provenance["transformers"] == version("transformers")
    assert provenance["device"] == "cpu" and provenance["dtype"] == "float32"
    assert provenance["cuda_graphs"] is False and provenance["batch_size"] == 16
    assert {"accelerate", "cuda", "device_count", "attention", "experts"} <= set(provenance)


def test_threads_option_overrides_the_choice(tiny_checkpoint):
    import torch

    from atlas_build.engines.hf import HFEngine

    before = torch.get_num_threads()
    try:
        engine = HFEngine(str(tiny_checkpoint), threads=2)
        assert engine.threads == 2 and torch.get_num_threads() == 2
        assert engine.provenance()["threads_reason"] == "--threads"
        engine.close()
        engine = HFEngine(str(tiny_checkpoint))
        assert engine.threads == 1 and torch.get_num_threads() == 1  # 0.2 M parameters: one thread
        engine.close()
    finally:
        torch.set_num_threads(before)


def test_large_models_get_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    from atlas_build.engines import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "Path", lambda _path: quota)
    quota.write_text("max 100000\n")
    assert threads.available_cpus() == 3
    quota.write_text("200000 100000\n")  # a container allowed 2 CPUs
    assert threads.available_cpus() == 2
    assert threads.choose_threads(None, 10**9, "cpu")[0] == 2
    assert threads.choose_threads(None, 10**6, "cpu") == (1, "small model (< 100M parameters) on the CPU")
    assert threads.choose_threads(4, 10**6, "cpu") == (4, "--threads")


class InterruptedEngine(FakeEngine):
    """The fake engine, interrupted (Ctrl-C) at its fourth shard."""

    calls = 0

    def route(self, texts):
        InterruptedEngine.calls += 1
        if InterruptedEngine.calls == 4:
            raise KeyboardInterrupt
        return super().route(texts)


def test_ctrl_c_says_how_to_resume_and_the_rerun_keeps_the_finished_shards(tmp_path, fakes, monkeypatch):
    from atlas_build.engines import ENGINES

    monkeypatch.setitem(ENGINES._entries, "interrupted", f"{__name__}:InterruptedEngine")
    InterruptedEngine.calls = 0
    out = tmp_path / "atlas"
    args = ["build", "--out", str(out), *FAKE_ARGS]
    interrupted = cli([*args, "--engine", "interrupted"])
    assert interrupted.exit_code == 130, interrupted.output
    assert "interrupted: nothing is half-written. Run the same command again to resume" in interrupted.output
    assert "Traceback" not in interrupted.output
    resumed = cli(args)
    assert resumed.exit_code == 0 and "7 shards written, 3 resumed" in resumed.output, resumed.output


def test_an_unknown_engine_is_refused_before_anything_is_written(tmp_path, fakes):
    out = tmp_path / "atlas"
    result = cli(["build", "--out", str(out), *FAKE_ARGS, "--engine", "fakee"])
    assert result.exit_code == 2 and "unknown engine 'fakee'. Did you mean 'fake'?" in result.output
    assert not out.exists()


def test_the_thread_count_is_part_of_the_shard_key():
    """A reduction's order (its rounding) can follow torch's CPU thread count: another count, another key."""
    import pyarrow as pa

    from atlas_build.builder.shards import run_fingerprint

    row = {"model_id": "m", "engine": "hf", "dtype": "float32", "random_init": False, "seed": 0}
    schema = pa.schema([pa.field("x", pa.int32())])
    one, two = ({"torch": "2.13.0", "threads": n} for n in (1, 2))
    assert run_fingerprint(row, schema, provenance=one) != run_fingerprint(row, schema, provenance=two)
    assert run_fingerprint(row, schema, provenance=one) == run_fingerprint(row, schema, provenance=dict(one))
