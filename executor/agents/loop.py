"""The built-in agent: a loop of model turns whose tool calls run in the sandbox.

Stopping is an exception: `Finished`, `NeedsHuman` (a question, a limit, a loop) or
`Cancelled`, all `AgentStop`. The loop runs on the host; the API key never enters the
container. Limits are checked once, before each model call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

import yaml

from executor.agents.llm import LLMClient, WaitListener
from executor.agents.llm_reply import Reply, ToolCall, Usage
from executor.agents.tools import SCHEMAS, AskHuman, Environment, Finish, run_tool, truncate
from executor.config.defaults import EVENT_OUTPUT_CHARS, LOOP_REPEATS
from executor.config.schema import Limits
from executor.monitoring import metrics


class AgentStop(Exception):
    """The loop ended; the message says why, for the task's record."""


class Finished(AgentStop):
    pass


class NeedsHuman(AgentStop):
    """A question from the agent, or a limit hit: a person's reply can continue it."""


class Cancelled(AgentStop):
    pass


@cache
def prompts() -> dict[str, str]:
    return yaml.safe_load(files("executor.agents").joinpath("prompts.yaml").read_text())


def render(name: str, **values: Any) -> str:
    return Template(prompts()[name]).safe_substitute(values).strip()


@dataclass
class Turn:
    """What one model turn did; the worker turns it into a TaskEvent."""

    number: int
    content: str | None
    calls: list[dict[str, Any]]
    usage: Usage


@dataclass
class Agent:
    llm: LLMClient
    env: Environment
    limits: Limits
    messages: list[dict[str, Any]]
    # Hooks into the worker: new human messages (raises Cancelled), and per-turn reporting.
    between_turns: Callable[[], list[str]] = lambda: []
    on_turn: Callable[[Turn], None] = lambda turn: None
    cost: Callable[[Usage], float | None] = lambda usage: None
    over_budget: Callable[[], str | None] = lambda: None  # a daily budget reached, and how
    # Hears about waits for a failing model endpoint (the task's card) and may stop them.
    waiting: WaitListener | None = None
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    started: float = field(default_factory=time.monotonic)
    paused_s: float = 0.0  # waited out model outages: not the agent's time
    _last_call: str | None = None
    _repeats: int = 0
    _warned: bool = False

    def run(self) -> str:
        """Work until finished; returns the summary or raises another AgentStop."""
        while True:
            self.step()

    def step(self) -> None:
        self._check_limits()
        with metrics.TURN_SECONDS.time():
            self._turn()

    def _turn(self) -> None:
        for text in self.between_turns():
            self.messages.append({"role": "user", "content": text})
        reply = self.llm.complete(self.messages, SCHEMAS, "auto", waiting=self.waiting)
        self.paused_s += reply.waited_s
        self.turns += 1
        self.usage += reply.usage
        self.messages.append(reply.as_message())
        calls: list[dict[str, Any]] = []
        try:
            if not reply.tool_calls:
                self.messages.append({"role": "user", "content": render("no_tool_call")})
            for call in reply.tool_calls:
                record = {"tool": call.name, "arguments": call.raw_arguments[:500]}
                calls.append(record)  # logged even when the call stops the loop
                self._execute(call, record)
        finally:
            self.on_turn(Turn(self.turns, reply.content, calls, reply.usage))
        self._check_loop(reply)

    def _execute(self, call: ToolCall, record: dict[str, Any]) -> None:
        if call.error or call.arguments is None:
            output = f"error: {call.error or 'arguments must be a JSON object'}; try again"
        else:
            try:
                output = run_tool(self.env, call.name, call.arguments)
            except AskHuman as ask:
                record["output"] = ask.question
                raise NeedsHuman(f"the agent asks: {ask.question}") from None
            except Finish as done:
                record["output"] = done.summary
                # Answer the call: a revision round continues this conversation, and
                # OpenAI-style APIs reject a tool call left without its result.
                self.messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": "submitted for checks"}
                )
                raise Finished(done.summary) from None
            except (TypeError, ValueError) as exc:  # wrong or missing arguments
                output = f"error: {exc}; check the tool's parameters and try again"
        self.messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        record["output"] = truncate(output, EVENT_OUTPUT_CHARS // 2, EVENT_OUTPUT_CHARS // 2)

    def _check_loop(self, reply: Reply) -> None:
        signature = json.dumps([(c.name, c.raw_arguments) for c in reply.tool_calls])
        if not reply.tool_calls or signature != self._last_call:
            self._last_call, self._repeats = signature, 1
            return
        self._repeats += 1
        if self._repeats < LOOP_REPEATS:
            return
        what = ", ".join(f"{c.name} {c.raw_arguments[:80]}" for c in reply.tool_calls)
        if self._warned:
            raise NeedsHuman(f"stopped a loop: the agent repeated `{what}` {self._repeats} times")
        self._warned = True
        self.messages.append(
            {"role": "user", "content": render("loop_warning", count=self._repeats)}
        )

    def _check_limits(self) -> None:
        limits = self.limits
        if self.turns >= limits.max_turns:
            raise NeedsHuman(f"turn limit reached ({limits.max_turns} turns)")
        if self.usage.total_tokens >= limits.max_tokens:
            raise NeedsHuman(
                f"token limit reached ({self.usage.total_tokens:,} of {limits.max_tokens:,})"
            )
        cost = self.cost(self.usage)
        if cost is not None and cost >= limits.max_cost_usd:
            raise NeedsHuman(f"cost limit reached (${cost:.2f} of ${limits.max_cost_usd:.2f})")
        budget = self.over_budget()
        if budget is not None:
            raise NeedsHuman(budget)
        elapsed = time.monotonic() - self.started - self.paused_s
        if elapsed >= limits.max_wall_minutes * 60:
            raise NeedsHuman(f"time limit reached ({limits.max_wall_minutes:g} minutes)")
