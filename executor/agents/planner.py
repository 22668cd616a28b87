"""The planner: an agent run that cuts a spec into a `PlanDraft` of small dependent tasks.

It may look at the repository (bash and read_file through the sandbox's `exec`; the sandbox
mounts the checkout read-only, so "read-only commands" is enforced by the mount, not by
trusting the model) and must answer with `submit_plan`, or with the plan as JSON text for
models that cannot call tools. Its answer is untrusted model text: it becomes a plan only
through `PlanDraft` (storage/plan_draft.py: unknown keys, too many tasks, unknown indexes and
cycles refused). Anything else ends in `PlanUnusable` with a message for a person: never a
crash, never half a plan."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from executor.agents import untrusted_json
from executor.agents.llm import LLMClient, LLMError
from executor.agents.llm_reply import ToolCall, Usage
from executor.agents.loop import render
from executor.agents.tools import SCHEMAS, Environment, run_tool
from executor.config.defaults import PLANNER_MAX_BAD_ANSWERS, PLANNER_MAX_TURNS
from storage.defaults import MAX_PLAN_TASKS
from storage.plan_draft import PlanDraft, problem

READ_TOOLS = frozenset({"bash", "read_file"})

SUBMIT_PLAN: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit_plan",
        "description": "Submit the plan: a title and the tasks, in order.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "tasks": {
                    "type": "array",
                    "maxItems": MAX_PLAN_TASKS,
                    "items": {
                        "type": "object",
                        "properties": {
                            "prompt": {"type": "string"},
                            "allowed_paths": {"type": "array", "items": {"type": "string"}},
                            "after": {"type": "array", "items": {"type": "integer"}},
                            "size": {"type": "string", "enum": ["S", "M", "L"]},
                        },
                        "required": ["prompt", "allowed_paths"],
                    },
                },
            },
            "required": ["title", "tasks"],
        },
    },
}
TOOLS = [s for s in SCHEMAS if s["function"]["name"] in READ_TOOLS] + [SUBMIT_PLAN]


class PlanUnusable(Exception):
    """The planner gave no usable plan; the message says why, for the person who asked
    (what its model calls used is on the caller's `Meter`: they are charged all the same)."""


@dataclass
class Planned:
    draft: PlanDraft
    turns: int


@dataclass
class Meter:
    """What a planner run's model calls used so far, added to as each answer arrives. The
    caller holds it, so it knows what to charge however the run ends: a plan, an unusable
    answer, or a crash nobody foresaw."""

    usage: Usage = field(default_factory=Usage)


@dataclass
class Planner:
    llm: LLMClient
    env: Environment
    max_turns: int = PLANNER_MAX_TURNS
    max_bad_answers: int = PLANNER_MAX_BAD_ANSWERS
    options: dict[str, Any] = field(default_factory=dict)  # e.g. max_tokens for small models
    meter: Meter = field(default_factory=Meter)  # what its model calls used, as they answer

    def propose(
        self,
        spec: str,
        *,
        repo: str,
        previous: PlanDraft | None = None,
        feedback: str | None = None,
        author: str = "the requester",
    ) -> Planned:
        """A validated plan, or PlanUnusable (the model unreachable included)."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": render("planner_system", max_tasks=MAX_PLAN_TASKS)},
            {"role": "user", "content": render("planner_request", repo=repo, spec=spec)},
        ]
        if feedback:  # a re-plan: the last plan (if there was a usable one) and the note
            shown = previous.model_dump_json(indent=1) if previous else "(none was usable)"
            messages.append(
                {
                    "role": "user",
                    "content": render(
                        "planner_feedback", previous=shown, feedback=feedback, author=author
                    ),
                }
            )
        bad: list[str] = []
        for turn in range(1, self.max_turns + 1):
            try:
                reply = self.llm.complete(messages, TOOLS, "auto", options=self.options)
            except LLMError as exc:
                raise PlanUnusable(f"the planner's model failed: {exc}") from None
            self.meter.usage += reply.usage
            messages.append(reply.as_message())
            if not reply.tool_calls:
                answer = _json_in(reply.content or "")
                if answer is None:
                    error = "the answer was neither a submit_plan call nor a JSON plan"
                else:
                    draft, error = _validate(answer)
                    if draft is not None:
                        return Planned(draft, turn)
                bad.append(error)
                if len(bad) >= self.max_bad_answers:
                    break
                messages.append({"role": "user", "content": render("planner_retry", error=error)})
                continue
            for call in reply.tool_calls:
                output, draft = self._call(call, bad)
                if draft is not None:
                    return Planned(draft, turn)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
            if len(bad) >= self.max_bad_answers:
                break
        why = bad[-1] if bad else f"no plan after {self.max_turns} turns"
        raise PlanUnusable(f"the planner's answer was unusable: {why}")

    def _call(self, call: ToolCall, bad: list[str]) -> tuple[str, PlanDraft | None]:
        if call.error or call.arguments is None:
            return f"error: {call.error or 'arguments must be a JSON object'}; try again", None
        if call.name == "submit_plan":
            draft, error = _validate(call.arguments)
            if draft is None:
                bad.append(error)
                return render("planner_retry", error=error), None
            return "", draft
        if call.name not in READ_TOOLS:  # write_file, edit_file, finish...: not the planner's
            return (
                f"error: {call.name!r} is not a planner tool; use bash, read_file or submit_plan",
                None,
            )
        try:
            return run_tool(self.env, call.name, call.arguments), None
        except (TypeError, ValueError) as exc:
            return f"error: {exc}; check the tool's parameters and try again", None


def _validate(answer: Any) -> tuple[PlanDraft | None, str]:
    try:
        return PlanDraft.model_validate(answer), ""
    except ValidationError as exc:
        return None, problem(exc)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_in(text: str) -> Any:
    """The JSON object in a text answer (bare or in a ``` fence), or None."""
    for candidate in [*_FENCE.findall(text), text]:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            continue
        try:
            return untrusted_json.loads(candidate[start : end + 1])
        except ValueError:
            continue
    return None
