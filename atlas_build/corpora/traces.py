"""The `traces` corpus: reasoning traces (imported JSONL or DiscoveryWorld runs), formatted for one model.

Input, one JSON object per line (blank lines are skipped)::

    {"id": "t1", "prompt": "...", "reasoning": "...", "answer": "...", "meta": {...}}

`id` is a non-empty string (an integer is taken as its decimal string); `prompt` a non-empty string;
`reasoning` and `answer` strings (possibly empty); `meta` optional, a JSON object or null. Any other
field is refused (put it in `meta`). The whole file is checked before anything is written: a line that is
not JSON, a missing or mistyped field, a duplicate id, an empty file, a reasoning that contains `</think>`
(it would end the think segment early) or a trace longer than the model's context each stop the build
with the file, line and id in the message (`TracesInputError`). Too-long traces are refused, not split:
a split would cut the reasoning the segments and markers describe.

Formatting (what is stored in `traces.text` and routed by one prefill):

- chat template (`template = "chat"`, when the tokenizer has one)::

      {generation prompt for [user: prompt]}<think>\\n{reasoning}\\n</think>\\n\\n{answer}{end of turn}

  The generation prompt is `apply_chat_template([{"role": "user", "content": prompt}],
  add_generation_prompt=True)`; for DeepSeek-R1 that is `<｜User｜>{prompt}<｜Assistant｜>`. R1 starts
  its answer with `<think>\\n`: templates whose generation prompt already ends in `<think>\\n` (R1's
  later revisions, QwQ) keep theirs, others get it appended. The reasoning is written between the tags
  rather than passed as assistant content, because R1's template deletes everything before `</think>` from
  assistant messages (it only keeps final answers in the history). The end of turn is what the template
  puts after an assistant message (R1: `<｜end▁of▁sentence｜>`).
- plain (`template = "plain"`, tokenizers without a chat template)::

      User: {prompt}\\n\\nAssistant: <think>\\n{reasoning}\\n</think>\\n\\n{answer}

A leading BOS that the template writes is dropped when the tokenizer adds one itself (R1's does), so the
routed tokens start with exactly one BOS; that token has no characters (char span -1).

Segments are the exact character spans of the three fields in the formatted text, `prompt`, `think`,
`answer` (end exclusive; `text[start:end]` is the field as given). Template markup (role tags, `<think>`,
`</think>`, the newlines around them, the end of turn) lies outside every segment, so its tokens have a
null `segment`; a token that straddles an edge (e.g. R1's ".\\n" before `</think>`) takes the segment
it overlaps. Reasoning markers (`markers.find_markers`) are matched inside the segments only.

Trace ids are `"{model_slug}:{id}"`: an atlas can hold the same traces formatted for several models.
Building traces for a model replaces that model's rows of `traces` and keeps every other model's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from atlas_build.atlas.schema import TRACES, TRACES_SCHEMA
from atlas_build.corpora.custom import unique_keys
from atlas_build.corpora.markers import find_markers
from atlas_build.errors import AtlasError

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"
PLAIN_USER = "User: "
PLAIN_ASSISTANT = "\n\nAssistant: "
SEGMENT_NAMES = ("prompt", "think", "answer")
FIELDS = ("id", "prompt", "reasoning", "answer", "meta")
DISCOVERYWORLD_SOURCE = "discoveryworld"
# Messages name at most this many offending traces.
MAX_LISTED = 5


class TracesInputError(AtlasError):
    """The traces file is missing, malformed, empty, has duplicate ids, or a trace is too long."""


@dataclass(frozen=True)
class Trace:
    """One line of a traces file."""

    id: str
    prompt: str
    reasoning: str
    answer: str
    meta: dict[str, Any] | None
    line: int


@dataclass(frozen=True)
class FormattedTrace:
    """A trace formatted for one model: the text to route, its template and its segment spans."""

    text: str
    template: str  # "chat" | "plain"
    segments: tuple[tuple[str, int, int], ...]

    def markers(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(find_markers(self.text, [(start, end) for _, start, end in self.segments]))


# ---- reading ----------------------------------------------------------------------------------------
def read_traces(path: str | Path) -> list[Trace]:
    """Read and check a whole traces file; raise `TracesInputError` naming the file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise TracesInputError(f"traces file {path} does not exist (or is not a file)")
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TracesInputError(f"{path}: not UTF-8 text ({error})") from None
    except OSError as error:
        raise TracesInputError(f"could not read {path}: {error.strerror or error}") from None
    traces: list[Trace] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line, object_pairs_hook=unique_keys, parse_constant=_no_constant)
            # A lone UTF-16 surrogate escape ("\ud800") parses, but is no text and cannot be stored.
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except json.JSONDecodeError as error:
            raise TracesInputError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise TracesInputError(f"{where}: nested too deeply to be a trace record") from None
        except UnicodeEncodeError:
            raise TracesInputError(
                f"{where}: a string holds a lone UTF-16 surrogate escape, which is not text; write the "
                "character itself or a valid surrogate pair"
            ) from None
        except ValueError as error:  # a key given twice (unique_keys), NaN/Infinity
            raise TracesInputError(f"{where}: {error}") from None
        trace = _trace_from_record(record, number, where)
        if trace.id in first_line:
            raise TracesInputError(
                f"{where}: duplicate id {trace.id!r} (first on line {first_line[trace.id]}); ids must be unique"
            )
        first_line[trace.id] = number
        traces.append(trace)
    if not traces:
        raise TracesInputError(f"{path} is empty: expected one JSON trace per line ({', '.join(FIELDS)})")
    return traces


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value (meta is stored as JSON)")


def _trace_from_record(record: Any, number: int, where: str) -> Trace:
    if not isinstance(record, dict):
        raise TracesInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise TracesInputError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"a trace has {', '.join(FIELDS)} (put anything else in 'meta')"
        )
    for name in ("id", "prompt", "reasoning", "answer"):
        if name not in record:
            raise TracesInputError(f"{where}: missing field {name!r}")
    trace_id = record["id"]
    if isinstance(trace_id, int) and not isinstance(trace_id, bool):
        trace_id = str(trace_id)
    if not isinstance(trace_id, str) or not trace_id.strip():
        raise TracesInputError(
            f"{where}: field 'id' must be a non-empty string or an integer, got {record['id']!r}"
        )
    for name in ("prompt", "reasoning", "answer"):
        if not isinstance(record[name], str):
            raise TracesInputError(
                f"{where}: field {name!r} must be a string, got {type(record[name]).__name__}"
            )
    if not record["prompt"].strip():
        raise TracesInputError(f"{where}: field 'prompt' is empty")
    if "</think>" in record["reasoning"]:
        raise TracesInputError(
            f"{where}: field 'reasoning' contains '</think>'; give the reasoning without its think tags "
            "(the formatting adds them)"
        )
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise TracesInputError(
            f"{where}: field 'meta' must be a JSON object or null, got {type(meta).__name__}"
        )
    return Trace(trace_id, record["prompt"], record["reasoning"], record["answer"], meta, number)


# ---- formatting ---------------------------------------------------------------------------------------
class TraceFormatter:
    """Formats traces with a tokenizer's chat template (or the plain template); see the module docstring.

    Args:
        tokenizer: the model's transformers tokenizer.
        template: "auto" (chat when the tokenizer has a chat template), "chat" or "plain".
    """

    _SENTINEL = "\u2063ROUTING_ATLAS_PROMPT\u2063"
    _ASSISTANT_SENTINEL = "\u2063ROUTING_ATLAS_ANSWER\u2063"

    def __init__(self, tokenizer, template: str = "auto"):
        if template not in ("auto", "chat", "plain"):
            raise ValueError(f"template must be auto, chat or plain, got {template!r}")
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise TracesInputError("the tokenizer has no chat template; use the plain template")
        self.tokenizer = tokenizer
        self.template = "chat" if (template == "auto" and has_chat) or template == "chat" else "plain"
        bos = getattr(tokenizer, "bos_token", None)
        bos_id = getattr(tokenizer, "bos_token_id", None)
        ids = tokenizer("a")["input_ids"]
        # The template's own BOS is dropped when tokenizing adds one anyway (no double BOS).
        self._strip_bos = bos if bos and bos_id is not None and ids and ids[0] == bos_id else None
        if self.template == "chat":
            self._end_of_turn = self._chat_end_of_turn()

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as error:  # jinja errors of arbitrary templates
            raise TracesInputError(f"the model's chat template failed: {error}") from error
        if self._strip_bos and text.startswith(self._strip_bos):
            text = text[len(self._strip_bos) :]
        return text

    def _chat_end_of_turn(self) -> str:
        full = self._render(
            [
                {"role": "user", "content": self._SENTINEL},
                {"role": "assistant", "content": self._ASSISTANT_SENTINEL},
            ],
            add_generation_prompt=False,
        )
        at = full.rfind(self._ASSISTANT_SENTINEL)
        return full[at + len(self._ASSISTANT_SENTINEL) :] if at >= 0 else ""

    def generation_prompt(self, prompt: str) -> tuple[str, tuple[int, int]]:
        """What the model continues from: the prompt, the assistant header and `<think>\\n`.

        Returns the text and the span of `prompt` in it.
        """
        if self.template == "plain":
            head = PLAIN_USER + prompt + PLAIN_ASSISTANT
            return head + THINK_OPEN, (len(PLAIN_USER), len(PLAIN_USER) + len(prompt))
        # A sentinel locates the prompt in the rendered template without searching for the prompt's text
        # (which may also occur in a system prompt).
        probe = self._render([{"role": "user", "content": self._SENTINEL}], add_generation_prompt=True)
        at = probe.find(self._SENTINEL)
        head = self._render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        if at < 0 or head != probe[:at] + prompt + probe[at + len(self._SENTINEL) :]:
            raise TracesInputError(
                "the model's chat template rewrites the user's message (e.g. strips it), so the prompt "
                "segment cannot be located exactly; use the plain template"
            )
        if head.endswith(THINK_OPEN):
            opener = ""
        elif head.endswith(THINK_OPEN.rstrip("\n")):
            opener = "\n"
        else:
            opener = THINK_OPEN
        return head + opener, (at, at + len(prompt))

    def format(self, prompt: str, reasoning: str, answer: str) -> FormattedTrace:
        """The full trace: generation prompt, reasoning, `</think>`, answer, end of turn."""
        head, (p_start, p_end) = self.generation_prompt(prompt)
        think_start = len(head)
        think_end = think_start + len(reasoning)
        answer_start = think_end + len(THINK_CLOSE)
        answer_end = answer_start + len(answer)
        end = self._end_of_turn if self.template == "chat" else ""
        text = head + reasoning + THINK_CLOSE + answer + end
        segments = (
            ("prompt", p_start, p_end),
            ("think", think_start, think_end),
            ("answer", answer_start, answer_end),
        )
        return FormattedTrace(text, self.template, segments)


def split_generation(generated: str) -> tuple[str, str, bool]:
    """Generated continuation of a generation prompt -> `(reasoning, answer, think_closed)`.

    The reasoning is everything before the first `</think>` (one newline before the tag removed), the
    answer everything after (up to two newlines after the tag removed): `format` puts them back, so a
    model that writes `...\\n</think>\\n\\n...` gets exactly its own text. Without `</think>` (generation
    cut by the token budget) all of it is reasoning and the answer is empty.
    """
    reasoning, tag, answer = generated.partition("</think>")
    if not tag:
        return generated, "", False
    reasoning = reasoning.removesuffix("\n")
    if answer.startswith("\n\n"):
        answer = answer[2:]
    elif answer.startswith("\n"):
        answer = answer[1:]
    return reasoning, answer, True


# ---- the corpus step of `atlas build --corpus traces` --------------------------------------------------
def load_tokenizer(checkpoint: Path, trust_remote_code: bool = False):
    """The model's tokenizer, loaded as `HFEngine` loads it (the routed tokens must be the same)."""
    from transformers import AutoTokenizer

    from atlas_build.engines.base import ModelLoadError

    try:
        return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the tokenizer from {checkpoint}: {error}") from error


def context_limit(checkpoint: Path, trust_remote_code: bool = False) -> int | None:
    """The model's context in tokens (`max_position_embeddings`, as `HFEngine.max_length`)."""
    from atlas_build.engines.hf import load_config
    from atlas_build.routers.base import decoder_config

    # A multimodal wrapper (Llama 4, Qwen3.5-MoE) keeps its context in the text decoder's config.
    config = decoder_config(load_config(checkpoint, trust_remote_code))
    return getattr(config, "max_position_embeddings", None)


def trace_source(trace: Trace, path: Path) -> str:
    meta = trace.meta or {}
    return DISCOVERYWORLD_SOURCE if meta.get("source") == DISCOVERYWORLD_SOURCE else f"import:{path.name}"


def format_traces(
    traces: list[Trace], tokenizer, limit: int | None, path: Path
) -> tuple[list[FormattedTrace], list[int]]:
    """Format every trace and count its tokens; refuse (naming them) traces longer than `limit`."""
    formatter = TraceFormatter(tokenizer)
    formatted = [formatter.format(t.prompt, t.reasoning, t.answer) for t in traces]
    counts = [
        len(ids) for ids in tokenizer([f.text for f in formatted], add_special_tokens=True)["input_ids"]
    ]
    if limit is not None:
        over = [(t, n) for t, n in zip(traces, counts, strict=True) if n > limit]
        if over:
            listed = "; ".join(f"id {t.id!r} (line {t.line}) has {n} tokens" for t, n in over[:MAX_LISTED])
            more = f" and {len(over) - MAX_LISTED} more" if len(over) > MAX_LISTED else ""
            raise TracesInputError(
                f"{path}: {len(over)} trace(s) longer than the model's context of {limit} tokens: "
                f"{listed}{more}. Traces are not split (a split would cut the reasoning): shorten them "
                "or leave them out"
            )
    return formatted, counts


def traces_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["trace_id"]), schema=TRACES_SCHEMA)


def ensure_traces(config, manifest, engine=None) -> list:
    """Read `config.traces`, format it for `config.model`, write the `traces` config, return the texts.

    The whole file is checked (and every trace formatted and measured in tokens) before anything is
    written. This model's rows of `traces` are replaced; other models' rows are kept. The manifest is
    saved, so the atlas is consistent before routing starts.

    Args:
        config: the build's `BuildConfig` (`traces`, `model`, `revision`, `slug`, `random_init`, `out`).
        manifest: the atlas's manifest (updated and saved).
        engine: the build's engine, when already loaded: its tokenizer and context are used. Without
            one, the tokenizer and context are read from the checkpoint (no weights are loaded).

    Returns:
        `TextItem`s of this model's traces, sorted by trace id, with segment and marker spans.
    """
    from atlas_build.atlas.schema import default_model_slug

    path = Path(config.traces)
    traces = read_traces(path)
    slug = default_model_slug(config.model, config.random_init, config.slug)
    if engine is not None:
        tokenizer, limit = engine.tokenizer, engine.max_length
    else:
        from atlas_build.engines.hf import resolve_checkpoint

        checkpoint, _, _ = resolve_checkpoint(config.model, config.revision)
        tokenizer = load_tokenizer(checkpoint, config.trust_remote_code)
        limit = context_limit(checkpoint, config.trust_remote_code)
    formatted, counts = format_traces(traces, tokenizer, limit, path)

    rows = []
    for trace, f in zip(traces, formatted, strict=True):
        rows.append(
            {
                "trace_id": f"{slug}:{trace.id}",
                "model_slug": slug,
                "text": f.text,
                "template": f.template,
                "segments": [{"name": n, "start": s, "end": e} for n, s, e in f.segments],
                "source": trace_source(trace, path),
                "meta": json.dumps(trace.meta, ensure_ascii=False, sort_keys=True)
                if trace.meta is not None
                else None,
            }
        )
    table = merge_traces(config.out, manifest, slug, rows)

    from atlas_build.atlas.store import write_config

    write_config(config.out, manifest, TRACES, table, TRACES_SCHEMA)
    markers = [f.markers() for f in formatted]
    manifest.corpus_counts[TRACES] = {
        **manifest.corpus_counts.get(TRACES, {}),
        slug: {
            "traces": len(traces),
            "tokens": int(sum(counts)),
            "markers": int(sum(len(m) for m in markers)),
            "template": formatted[0].template,
            "file": path.name,
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
    }
    manifest.save(config.out)
    return trace_items(config.out, manifest, slug)


def merge_traces(root: Path, manifest, slug: str, rows: list[dict[str, Any]]) -> pa.Table:
    """The `traces` table with this model's rows replaced by `rows`, other models' rows kept."""
    from atlas_build.atlas.store import read_config

    kept = [r for r in read_config(Path(root), manifest, TRACES).to_pylist() if r["model_slug"] != slug]
    return traces_table(kept + rows)


def trace_items(root: Path, manifest, slug: str) -> list:
    """`TextItem`s of the model's traces in the atlas (sorted by id), segments and markers included.

    Markers are recomputed from the text with the current lexicon; the traces config stores none.
    """
    from atlas_build.atlas.store import read_config
    from atlas_build.atlas.texts import TextItem

    table = read_config(Path(root), manifest, TRACES)
    items = []
    for row in sorted(table.to_pylist(), key=lambda r: r["trace_id"]):
        if row["model_slug"] != slug:
            continue
        segments = tuple(
            (s["name"], s["start"], s["end"]) for s in row["segments"] or [] if s["end"] > s["start"]
        )
        markers = tuple(find_markers(row["text"], [(s, e) for _, s, e in segments]))
        items.append(TextItem(row["trace_id"], TRACES, row["text"], segments=segments, markers=markers))
    return items


__all__ = [
    "FormattedTrace",
    "Trace",
    "TraceFormatter",
    "TracesInputError",
    "ensure_traces",
    "format_traces",
    "read_traces",
    "split_generation",
    "trace_items",
]
