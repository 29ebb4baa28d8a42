"""DiscoveryWorld runs: headless and quiet, actions parsed and played, invalid ones recorded, then routed."""

from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip(
    "discoveryworld", reason="discoveryworld is not installed: pip install 'routing-atlas[traces]'"
)

from atlas_build.corpora.discoveryworld import (  # noqa: E402
    DiscoveryWorldError,
    Generation,
    RunOptions,
    RunSummary,
    parse_action,
    resolve_scenario,
    run_episode,
)
from atlas_build.corpora.traces import TraceFormatter  # noqa: E402

from .conftest import MODEL  # noqa: E402

SCRIPT = [
    'The path east is open. So I move east.\n</think>\n\n{"action": "MOVE_DIRECTION", "arg1": "east"}',
    'Wait, let me try up.\n</think>\n\n{"action": "MOVE_DIRECTION", "arg1": "up"}',
    "Hmm.\n</think>\n\nI will not say.",
    "I keep thinking and never stop",
]


class ScriptedAgent:
    def __init__(self):
        self.prompts = []

    def __call__(self, prompt_text):
        self.prompts.append(prompt_text)
        text = SCRIPT[(len(self.prompts) - 1) % len(SCRIPT)]
        return Generation(text, n_tokens=10, finished="</think>" in text)


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        ('{"action": "OPEN", "arg1": 12}', {"action": "OPEN", "arg1": 12}),
        ('first {"action": "A"} then {"action": "B", "arg1": "x"}.', {"action": "B", "arg1": "x"}),
        ('Option: {"chosen_dialog_option_int": 2}', {"chosen_dialog_option_int": 2}),
        ('{"not": "an action"}', None),
        ("{broken", None),
        ("", None),
    ],
)
def test_parse_action(answer, action):
    parsed, error = parse_action(answer)
    assert parsed == action and (error is None) == (action is not None)


def test_unknown_scenario_or_difficulty():
    assert resolve_scenario("tutorial", "NORMAL") == ("Tutorial", "Normal")
    with pytest.raises(DiscoveryWorldError, match="unknown DiscoveryWorld scenario 'Nope'"):
        resolve_scenario("Nope", "Normal")
    with pytest.raises(DiscoveryWorldError, match="has no difficulty 'Easy'; it has Normal"):
        resolve_scenario("Tutorial", "Easy")


def test_scripted_run(tmp_path, monkeypatch, capfd, tiny_tokenizer):
    monkeypatch.chdir(tmp_path)
    state = random.getstate()
    agent, summary = ScriptedAgent(), RunSummary()
    options = RunOptions(scenario="Tutorial", difficulty="Normal", steps=5, seed=3, model="scripted")
    records = list(run_episode(agent, TraceFormatter(tiny_tokenizer), options, summary=summary))
    # Headless and tidy: no frames in the working directory, nothing printed, global random restored.
    assert os.listdir(tmp_path) == []
    assert capfd.readouterr().out == ""
    assert random.getstate() == state
    assert [r["id"] for r in records] == [f"tutorial-normal-seed3-step{i:04d}" for i in range(5)]
    metas = [r["meta"] for r in records]
    assert [m["valid"] for m in metas[:4]] == [True, False, False, False]
    assert metas[0]["action"] == {"action": "MOVE_DIRECTION", "arg1": "east"}
    assert "up" in metas[1]["action_message"] and metas[1]["action"]["arg1"] == "up"
    assert metas[2]["action"] is None and metas[2]["action_error"] == "no JSON action object in the answer"
    assert metas[3]["action"] is None and "no </think>" in metas[3]["action_error"]
    assert metas[3]["generation"]["finish"] == "length" and not metas[3]["generation"]["think_closed"]
    assert records[0]["reasoning"] == "The path east is open. So I move east."
    assert records[3]["reasoning"] == SCRIPT[3] and records[3]["answer"] == ""
    for meta in metas:
        assert meta["source"] == "discoveryworld" and meta["scenario"] == "Tutorial" and meta["seed"] == 3
        assert meta["max_score"] == 3 and 0 <= meta["score"] <= 1
    assert [m["step"] for m in metas] == list(range(5))
    assert (
        summary.steps == 5
        and summary.valid_actions == sum(m["valid"] for m in metas)
        and "--steps 5" in summary.stopped
    )
    # The prompt carries the observation and, from step 1 on, the outcome of earlier actions.
    assert '"agentLocation"' in records[0]["prompt"] and "step 1:" in records[2]["prompt"]
    assert agent.prompts[0].endswith("<｜Assistant｜><think>\n")
    # The same seed replays the same episode.
    again = list(run_episode(ScriptedAgent(), TraceFormatter(tiny_tokenizer), options))
    assert [r["prompt"] for r in again] == [r["prompt"] for r in records]


def test_time_budget(tiny_tokenizer):
    summary = RunSummary()
    options = RunOptions(scenario="Tutorial", steps=5, max_seconds=0)
    assert list(run_episode(ScriptedAgent(), TraceFormatter(tiny_tokenizer), options, summary=summary)) == []
    assert "--max-seconds" in summary.stopped


def test_tiny_model_run_is_routed(tmp_path, monkeypatch, one_thread):
    """The CLI end to end: the tiny model plays 2 steps (gibberish, all invalid), then the run is routed."""
    import datasets
    from click.testing import CliRunner

    from atlas_build.builder import BuildConfig, run_build
    from atlas_build.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run.jsonl"
    args = ["traces", "discoveryworld", "--model", MODEL, "--scenario", "Tutorial", "--steps", "2"]
    # A short prompt (nearby objects dropped) keeps the prefills of the test cheap.
    args += ["--max-new-tokens", "4", "--max-prompt-tokens", "1500"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "done: 2 steps" in result.output and sorted(os.listdir(tmp_path)) == ["run.jsonl"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        meta = record["meta"]
        assert meta["valid"] is False and meta["generation"]["tokens"] == 4 and meta["prompt_reduced"] == 1
        assert meta["generation"]["prefill_ids_match"] in (True, False)
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output

    atlas = tmp_path / "atlas"
    run_build(
        BuildConfig(model=MODEL, out=atlas, corpus="traces", traces=str(out), progress=False),
        log=lambda *_: None,
    )
    traces = datasets.load_dataset(str(atlas), "traces", split="train")
    assert traces["source"] == ["discoveryworld"] * 2
    assert json.loads(traces[0]["meta"])["scenario"] == "Tutorial"
    routing = datasets.load_dataset(str(atlas), f"routing-{MODEL}", split="train").to_pandas()
    assert set(routing.source_id) == set(traces["trace_id"])
    assert set(routing.segment.dropna()) >= {"prompt", "think"}
