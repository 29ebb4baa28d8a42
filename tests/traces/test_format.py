"""Formatting traces with the model's chat template (R1's) or the plain template; reading JSONL."""

from __future__ import annotations

import pytest

from atlas_build.corpora.traces import (
    THINK_CLOSE,
    TraceFormatter,
    TracesInputError,
    read_traces,
    split_generation,
)


def check_segments(formatted, prompt, reasoning, answer):
    spans = {name: (start, end) for name, start, end in formatted.segments}
    assert [name for name, *_ in formatted.segments] == ["prompt", "think", "answer"]
    for name, value in (("prompt", prompt), ("think", reasoning), ("answer", answer)):
        start, end = spans[name]
        assert formatted.text[start:end] == value
    assert spans["prompt"][1] <= spans["think"][0] <= spans["think"][1] <= spans["answer"][0]


def test_r1_chat_template(tiny_tokenizer):
    formatter = TraceFormatter(tiny_tokenizer)
    assert formatter.template == "chat"
    f = formatter.format("Is 7 prime?", "Hmm. Wait, let me check.", "Yes.")
    # The tokenizer adds R1's BOS itself: the text has none, the tokens have exactly one.
    assert (
        f.text
        == "<｜User｜>Is 7 prime?<｜Assistant｜><think>\nHmm. Wait, let me check.\n</think>\n\nYes.<｜end▁of▁sentence｜>"
    )
    ids = tiny_tokenizer(f.text)["input_ids"]
    assert ids.count(tiny_tokenizer.bos_token_id) == 1 and ids[0] == tiny_tokenizer.bos_token_id
    check_segments(f, "Is 7 prime?", "Hmm. Wait, let me check.", "Yes.")
    assert [m for m, *_ in f.markers()] == ["hmm", "wait", "let me check"]
    # The generation prompt is the formatted trace's prefix, up to and including "<think>\n".
    head, (start, end) = formatter.generation_prompt("Is 7 prime?")
    assert f.text.startswith(head) and head.endswith("<｜Assistant｜><think>\n")
    assert head[start:end] == "Is 7 prime?"


def test_template_that_already_opens_think(tiny_tokenizer, monkeypatch):
    tokenizer = tiny_tokenizer
    monkeypatch.setattr(
        tokenizer,
        "chat_template",
        tokenizer.chat_template.replace(
            "{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\\n'}}{% endif %}"
        ),
    )
    f = TraceFormatter(tokenizer).format("Q", "r", "a")
    assert f.text.count("<think>") == 1
    check_segments(f, "Q", "r", "a")


def test_plain_template(tiny_tokenizer, monkeypatch):
    tokenizer = tiny_tokenizer
    monkeypatch.setattr(tokenizer, "chat_template", None)
    formatter = TraceFormatter(tokenizer)
    assert formatter.template == "plain"
    f = formatter.format("Q?", "So, r.", "A.")
    assert f.text == "User: Q?\n\nAssistant: <think>\nSo, r.\n</think>\n\nA."
    check_segments(f, "Q?", "So, r.", "A.")
    with pytest.raises(TracesInputError, match="no chat template"):
        TraceFormatter(tokenizer, template="chat")


def test_empty_reasoning_and_answer(tiny_tokenizer):
    f = TraceFormatter(tiny_tokenizer).format("Q", "", "")
    check_segments(f, "Q", "", "")


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("r1 r2\n</think>\n\nanswer", ("r1 r2", "answer", True)),
        ("r</think>a", ("r", "a", True)),
        ("r\n</think>\n\n\nx</think>y", ("r", "\nx</think>y", True)),
        ("cut off mid-thought", ("cut off mid-thought", "", False)),
    ],
)
def test_split_generation(generated, expected):
    assert split_generation(generated) == expected


def test_split_then_format_reproduces_the_generation(tiny_tokenizer):
    formatter = TraceFormatter(tiny_tokenizer)
    head, _ = formatter.generation_prompt("P")
    generated = "think hard\n</think>\n\n{}"
    reasoning, answer, _ = split_generation(generated)
    assert formatter.format("P", reasoning, answer).text == head + generated + tiny_tokenizer.eos_token
    assert THINK_CLOSE == "\n</think>\n\n"


def test_read_sample(sample_jsonl):
    traces = read_traces(sample_jsonl)
    assert [t.id for t in traces] == ["arith-1", "lamp-2", "capital-3"]
    assert traces[0].meta == {"topic": "arithmetic"} and traces[2].meta is None and traces[1].line == 2
