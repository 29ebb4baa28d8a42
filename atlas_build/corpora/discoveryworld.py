"""DiscoveryWorld runs with the model under study as the agent; each step becomes one reasoning trace.

`discoveryworld` (PyPI, 0.0.2; `pip install 'routing-atlas[traces]'`) is run headless: no window (SDL's
dummy video driver), no PNG frames in the working directory (its frame folder is a temporary directory),
its prints swallowed, and observations taken from the UI's JSON (`ui.renderJSON()`, which renders no
image) rather than `getAgentObservation` (which renders and saves two PNGs per call).

One episode, `steps` steps at most, stopping early when the time budget is spent or every task is done:

1. the observation (the UI JSON, compact) goes into the user prompt together with the scenario's action
   list, the teleport locations and the last few actions with their outcome;
2. the prompt is formatted with the model's chat template up to `<think>\\n` (`TraceFormatter`) and the
   model continues greedily for at most `max_new_tokens` (`HFEngine.generate`);
3. the continuation is split at `</think>` into reasoning and answer; the action is the last JSON object
   in the answer that looks like an action (`{"action": ...}` or, in a dialog,
   `{"chosen_dialog_option_int": n}`);
4. the action is performed (`performAgentAction(0, action)`) and the world ticks, whether or not an
   action was found: an unparsable answer wastes the turn, as an invalid action does in the game;
5. the step is written as a trace in the import format; `meta` holds the scenario, difficulty, seed,
   step, the action, whether it was valid, the game's message about it (`lastActionMessage` of the next
   observation), the score after the step and how the generation ended.

NPCs move with Python's global `random`: it is seeded with `seed` for the run and restored afterwards, so
a run with a deterministic (greedy) model is reproducible.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from atlas_build.corpora.traces import DISCOVERYWORLD_SOURCE, TraceFormatter, split_generation
from atlas_build.errors import AtlasError

PIP_HINT = "pip install 'routing-atlas[traces]'  (or: pip install discoveryworld==0.0.2)"
# Actions shown to the model, with their outcomes, from the most recent steps.
HISTORY_STEPS = 5


class DiscoveryWorldError(AtlasError):
    """discoveryworld is missing, or a scenario/difficulty does not exist."""


@dataclass(frozen=True)
class Generation:
    """What an agent returns for one prompt."""

    text: str  # the continuation after `<think>\n`
    n_tokens: int  # generated tokens (the stopping EOS included)
    finished: bool  # stopped by an end-of-sequence token (False: by the token budget)
    ids_match: bool | None = None  # see `EngineAgent`


Agent = Callable[[str], Generation]


class EngineAgent:
    """The model under study as the agent: greedy generation with `HFEngine.generate`.

    `ids_match` tells whether the formatted trace (`TraceFormatter.format`) re-tokenizes to the very
    prompt + generated ids, i.e. whether the prefill routing that `atlas build` stores for the generated
    tokens is the routing captured during generation. It is False when the model did not close `</think>`
    (the formatting adds it) or when byte-level pieces decode to replacement characters.
    """

    def __init__(self, engine, max_new_tokens: int):
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.formatter: TraceFormatter | None = None
        self.last_routing = None

    def __call__(self, prompt_text: str) -> Generation:
        text, routing = self.engine.generate(prompt_text, self.max_new_tokens)
        self.last_routing = routing
        n_prompt = len(self.engine.encode([prompt_text])[0]["ids"])
        generated = routing.token_ids[n_prompt:].tolist()
        tokenizer = self.engine.tokenizer
        stops = {tokenizer.eos_token_id, getattr(self.engine.config, "eos_token_id", None)}
        return Generation(text, len(generated), bool(generated) and generated[-1] in stops)


@dataclass
class RunOptions:
    """Options of one DiscoveryWorld episode (see `atlas traces discoveryworld --help`)."""

    scenario: str
    difficulty: str = "Normal"
    steps: int = 10
    seed: int = 0
    max_seconds: float | None = None
    history: int = HISTORY_STEPS
    context: int | None = None  # model context in tokens: prompts are shortened to fit
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = None  # shorten prompts beyond this many tokens (None: context only)
    model: str = ""


@dataclass
class RunSummary:
    steps: int = 0
    valid_actions: int = 0
    score: float = 0.0
    stopped: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def require_discoveryworld():
    """Import discoveryworld headless and quietly, or explain how to install it."""
    os.environ["SDL_VIDEODRIVER"] = "dummy"  # no window, no display needed
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import discoveryworld
            from discoveryworld.DiscoveryWorldAPI import DiscoveryWorldAPI  # noqa: F401
    except ImportError as error:
        raise DiscoveryWorldError(
            f"DiscoveryWorld runs need the discoveryworld package: {PIP_HINT} ({error})"
        ) from None
    return discoveryworld


def scenarios() -> dict[str, list[str]]:
    """Scenario name -> its difficulties, as discoveryworld lists them."""
    require_discoveryworld()
    from discoveryworld.ScenarioMaker import SCENARIO_INFOS

    return {name: list(info["difficulty"]) for name, info in SCENARIO_INFOS.items()}


def resolve_scenario(name: str, difficulty: str) -> tuple[str, str]:
    """Case-insensitive scenario and difficulty -> discoveryworld's spelling, or a clear error."""
    known = scenarios()
    by_lower = {n.lower(): n for n in known}
    canonical = by_lower.get(name.strip().lower())
    if canonical is None:
        raise DiscoveryWorldError(
            f"unknown DiscoveryWorld scenario {name!r}; scenarios: {', '.join(repr(n) for n in known)}"
        )
    levels = {d.lower(): d for d in known[canonical]}
    level = levels.get(difficulty.strip().lower())
    if level is None:
        raise DiscoveryWorldError(
            f"scenario {canonical!r} has no difficulty {difficulty!r}; it has {', '.join(known[canonical])}"
        )
    return canonical, level


def scenario_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---- actions --------------------------------------------------------------------------------------------
def parse_action(answer: str) -> tuple[dict[str, Any] | None, str | None]:
    """The last JSON object in `answer` that is an action -> `(action, None)`, else `(None, reason)`."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    for match in re.finditer(r"\{", answer):
        try:
            value, _ = decoder.raw_decode(answer, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and ("action" in value or "chosen_dialog_option_int" in value):
            found = value
    if found is None:
        what = (
            "no answer after the reasoning" if not answer.strip() else "no JSON action object in the answer"
        )
        return None, what
    return found, None


# ---- the environment ------------------------------------------------------------------------------------
class DiscoveryWorldEnv:
    """One headless, quiet episode of DiscoveryWorld for one agent (use as a context manager)."""

    def __init__(self, scenario: str, difficulty: str, seed: int = 0):
        require_discoveryworld()
        self.scenario, self.difficulty = resolve_scenario(scenario, difficulty)
        self.seed = seed
        self._frames = tempfile.TemporaryDirectory(prefix="atlas-discoveryworld-")
        self._random_state = random.getstate()
        self.api = None

    def __enter__(self) -> DiscoveryWorldEnv:
        from discoveryworld.DiscoveryWorldAPI import DiscoveryWorldAPI

        random.seed(self.seed)  # NPCs move with the global `random`
        with self._quiet():
            api = DiscoveryWorldAPI()
            # Its frame folder defaults to ./video/...; a temporary one keeps the working directory clean.
            api.FRAME_DIR = os.path.join(self._frames.name, "frames") + os.sep
            try:
                ok = api.loadScenario(self.scenario, self.difficulty, randomSeed=self.seed)
            except SystemExit as error:  # it calls exit(1) when a scenario fails to set up
                raise DiscoveryWorldError(
                    f"discoveryworld could not set up {self.scenario!r} ({self.difficulty}): exit {error.code}"
                ) from None
        if not ok:
            raise DiscoveryWorldError(f"discoveryworld could not load {self.scenario!r} ({self.difficulty})")
        self.api = api
        return self

    def __exit__(self, *exc) -> None:
        self.api = None  # drops the world and its in-memory history
        random.setstate(self._random_state)
        self._frames.cleanup()

    @staticmethod
    def _quiet():
        return contextlib.redirect_stdout(io.StringIO())  # it prints on every tick

    def observe(self) -> dict[str, Any]:
        """The agent's observation (UI JSON), without rendering images."""
        with self._quiet():
            observation = self.api.ui[0].renderJSON()
        # getAgentObservation would update these; renderJSON does not.
        self.api.taskProgress = observation.get("taskProgress", [])
        self.api.steps = observation.get("world_steps", self.api.steps)
        return observation

    def act(self, action: dict[str, Any] | None) -> tuple[bool, list[str]]:
        """Perform `action` (None: no action, the turn is lost) and tick. Returns (valid, errors)."""
        valid, errors = False, []
        with self._quiet():
            if action is not None:
                try:
                    response = self.api.performAgentAction(0, action)
                    valid = response.get("success") is True
                    raw = response.get("errors") or []
                    errors = [str(e) for e in raw] if isinstance(raw, list) else [str(raw)]
                except Exception as error:  # its action parser raises on some malformed arguments
                    errors = [f"{type(error).__name__}: {error}"]
            self.api.tick()
        return valid, errors

    def in_dialog(self) -> bool:
        return bool(self.api.isAgentInDialog(0))

    def known_actions(self) -> dict[str, Any]:
        return self.api.listKnownActions(limited=False)

    def action_help(self) -> str:
        return self.api.additionalActionDescriptionString()

    def teleport_locations(self) -> list[str]:
        return sorted(self.api.listTeleportLocationsDict())

    def score(self) -> dict[str, Any]:
        """Score over all tasks (from `getTaskScorecard`): raw, maximum, normalised, completion."""
        cards = self.api.getTaskScorecard() or []
        raw = sum(float(c.get("score", 0)) for c in cards)
        maximum = sum(float(c.get("maxScore", 0)) for c in cards)
        return {
            "score": round(raw / maximum, 6) if maximum else 0.0,
            "score_raw": raw,
            "max_score": maximum,
            "tasks_completed": sum(bool(c.get("completed")) for c in cards),
            "tasks_succeeded": sum(bool(c.get("completedSuccessfully")) for c in cards),
            "tasks": len(cards),
        }

    def done(self) -> bool:
        return bool(self.api.areTasksComplete())


# ---- prompts --------------------------------------------------------------------------------------------
def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def build_prompt(
    env: DiscoveryWorldEnv, observation: dict[str, Any], history: list[dict[str, Any]], reduced: int = 0
) -> str:
    """The user message of one step. `reduced` > 0 drops detail to fit the context (1: nearby objects,
    2: also the history)."""
    observation = dict(observation)
    if reduced >= 1 and "nearbyObjects" in observation:
        observation["nearbyObjects"] = {"note": "omitted to fit the model's context"}
    lines = [
        "You are the agent in DiscoveryWorld, a text-based scientific discovery game. Each turn you get "
        "the game's observation as JSON and choose one action.",
        "",
        f"Known actions: {_compact(env.known_actions())}",
        env.action_help(),
        f"Teleport locations (arg1 of TELEPORT_TO_LOCATION): {_compact(env.teleport_locations())}",
        'In a dialog, answer with {"chosen_dialog_option_int": N} to pick option N.',
    ]
    if history and reduced < 2:
        lines += ["", "Your last actions:"]
        for past in history:
            outcome = "valid" if past["valid"] else "INVALID"
            lines.append(f"step {past['step']}: {_compact(past['action'])} -> {outcome}: {past['message']}")
    lines += [
        "",
        f"Observation: {_compact(observation)}",
        "",
        "Think about what to do. After your reasoning, answer with exactly one action as a JSON object, "
        'e.g. {"action": "MOVE_DIRECTION", "arg1": "north"}.',
    ]
    return "\n".join(lines)


# ---- the run --------------------------------------------------------------------------------------------
def run_episode(
    agent: Agent,
    formatter: TraceFormatter,
    options: RunOptions,
    count_tokens: Callable[[str], int] | None = None,
    log: Callable[[str], None] = lambda _: None,
    summary: RunSummary | None = None,
) -> Iterator[dict[str, Any]]:
    """Play one episode; yield one trace record (import format) per step.

    Args:
        agent: prompt text (formatted, up to `<think>\\n`) -> `Generation`.
        formatter: the model's `TraceFormatter` (chat template of the agent's tokenizer).
        options: scenario, difficulty, steps, seed, time budget, context.
        count_tokens: formatted text -> its token count, to keep prompt + generation within
            `options.context` and the prompt within `options.max_prompt_tokens` (by dropping nearby
            objects, then the history, from the prompt; `meta.prompt_reduced` says how far).
        log: progress lines.
        summary: filled in as the run goes (steps, valid actions, final score, why it stopped).
    """
    summary = summary if summary is not None else RunSummary()
    started = time.monotonic()
    require_discoveryworld()
    version = _dw_version()
    with DiscoveryWorldEnv(options.scenario, options.difficulty, options.seed) as env:
        slug = scenario_slug(env.scenario)
        history: list[dict[str, Any]] = []
        observation = env.observe()
        summary.stopped = f"--steps {options.steps} reached"
        for step in range(options.steps):
            if options.max_seconds is not None and time.monotonic() - started >= options.max_seconds:
                summary.stopped = f"--max-seconds {options.max_seconds:g} reached"
                break
            if env.done():
                summary.stopped = "all tasks completed"
                break
            prompt, reduced = _fitting_prompt(
                env,
                observation,
                history[max(0, len(history) - options.history) :] if options.history else [],
                formatter,
                options,
                count_tokens,
            )
            generation_prompt, _ = formatter.generation_prompt(prompt)
            generation = agent(generation_prompt)
            reasoning, answer, closed = split_generation(generation.text)
            action, parse_error = (
                parse_action(answer) if closed else (None, "the reasoning did not end (no </think>)")
            )
            valid, errors = env.act(action)
            observation = env.observe()
            message = str(observation.get("lastActionMessage") or "")
            score = env.score()
            ids_match = generation.ids_match
            if ids_match is None and isinstance(agent, EngineAgent) and agent.last_routing is not None:
                ids_match = _ids_match(agent, formatter, prompt, reasoning, answer, generation)
            meta = {
                "source": DISCOVERYWORLD_SOURCE,
                "discoveryworld_version": version,
                "model": options.model,
                "scenario": env.scenario,
                "difficulty": env.difficulty,
                "seed": options.seed,
                "step": step,
                "world_step": observation.get("world_steps"),
                "in_dialog": env.in_dialog(),
                "action": action,
                "valid": valid,
                "action_error": parse_error or ("; ".join(errors) if errors and not valid else None),
                "action_message": message,
                **score,
                "prompt_reduced": reduced,
                "generation": {
                    "tokens": generation.n_tokens,
                    "finish": "eos" if generation.finished else "length",
                    "think_closed": closed,
                    "prefill_ids_match": ids_match,
                },
            }
            summary.steps = step + 1
            summary.valid_actions += int(valid)
            summary.score = score["score"]
            history.append(
                {"step": step, "action": action, "valid": valid, "message": message or parse_error}
            )
            log(
                f"step {step}: {'valid' if valid else 'invalid'} action {_compact(action)}"
                f" ({message or parse_error}); score {score['score_raw']:g}/{score['max_score']:g}"
            )
            yield {
                "id": f"{slug}-{env.difficulty.lower()}-seed{options.seed}-step{step:04d}",
                "prompt": prompt,
                "reasoning": reasoning,
                "answer": answer,
                "meta": meta,
            }
        else:
            if env.done():
                summary.stopped = "all tasks completed"
    summary.seconds = time.monotonic() - started


def _dw_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("discoveryworld")
    except Exception:
        return None


def _fitting_prompt(env, observation, history, formatter, options, count_tokens) -> tuple[str, int]:
    """The step prompt, shortened (nearby objects, then history dropped) until it fits the budget."""
    budgets = [b for b in (options.max_prompt_tokens,) if b is not None]
    if options.context is not None:
        budgets.append(options.context - options.max_new_tokens)
    for reduced in range(3):
        prompt = build_prompt(env, observation, history, reduced)
        if count_tokens is None or not budgets:
            return prompt, reduced
        n = count_tokens(formatter.generation_prompt(prompt)[0])
        if n <= min(budgets):
            return prompt, reduced
    if options.context is not None and n + options.max_new_tokens > options.context:
        raise DiscoveryWorldError(
            f"the step prompt has {n} tokens even without nearby objects and history; with --max-new-tokens "
            f"{options.max_new_tokens} it does not fit the model's context of {options.context} tokens"
        )
    return prompt, reduced  # over --max-prompt-tokens but within the context: played as it is


def _ids_match(agent: EngineAgent, formatter, prompt, reasoning, answer, generation) -> bool:
    """Does the stored trace re-tokenize to the generated ids (so its prefill routing is the generation's)?"""
    from atlas_build.engines.hf import TextTooLongError

    ids = agent.last_routing.token_ids.tolist()
    text = formatter.format(prompt, reasoning, answer).text
    try:
        again = agent.engine.encode([text])[0]["ids"].tolist()
    except TextTooLongError:
        return False
    return again[: len(ids)] == ids


__all__ = [
    "DiscoveryWorldEnv",
    "DiscoveryWorldError",
    "EngineAgent",
    "Generation",
    "RunOptions",
    "RunSummary",
    "build_prompt",
    "parse_action",
    "require_discoveryworld",
    "resolve_scenario",
    "run_episode",
    "scenarios",
]
