"""The stages the system enforces after the agent says it is done, whatever the model
decided: scope, checks (proof), automated review, and the risk of the result.

Scope and risk are pure; checks run in the task's sandbox; the review is one model call with
a forced `submit_review` tool, so its verdict is structured on every OpenAI-compatible
server."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from executor.agents.llm import LLMClient, WaitListener
from executor.agents.loop import render
from executor.agents.tools import truncate
from executor.config.defaults import CHECK_OUTPUT_TAIL_CHARS, REVIEW_DIFF_CHARS
from executor.sandbox.container import Sandbox

# --- scope -------------------------------------------------------------------------------


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    """`src/**` matches everything below src/; `*` stays within one path segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def out_of_scope(
    files: list[str], allowed: list[str], task_allowed: list[str] | None = None
) -> list[str]:
    """The changed files no `allowed_paths` pattern covers: the repo's, and the task's own
    (a planned task's boundary) when it has one; a file must be inside both."""

    def inside(f: str, patterns: list[str]) -> bool:
        return any(_glob(p).fullmatch(f) for p in patterns)

    return [
        f for f in files if not inside(f, allowed) or (task_allowed and not inside(f, task_allowed))
    ]


# --- checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    command: str
    exit_code: int
    duration_s: float
    output_tail: str
    killed_reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


def run_checks(sandbox: Sandbox, commands: list[str]) -> list[CheckResult]:
    results = []
    for command in commands:
        r = sandbox.exec(command)
        results.append(
            CheckResult(
                command,
                r.exit_code,
                round(r.duration_s, 2),
                r.output[-CHECK_OUTPUT_TAIL_CHARS:],
                r.killed_reason,
            )
        )
    return results


def checks_feedback(results: list[CheckResult]) -> str:
    failed = [r for r in results if not r.passed]
    parts = [
        f"$ {r.command}\nexit code {r.exit_code}"
        + (f" ({r.killed_reason})" if r.killed_reason else "")
        + f"\n{truncate(r.output_tail, 2000, 2000)}"
        for r in failed
    ]
    return render("checks_failed", count=len(failed), failures="\n\n".join(parts))


# --- review ------------------------------------------------------------------------------


class Finding(BaseModel):
    file: str = ""
    line: int | None = None
    message: str


class Verdict(BaseModel):
    verdict: Literal["approve", "changes_requested", "needs_discussion"]
    summary: str = ""
    findings: list[Finding] = Field(default_factory=list)


REVIEW_TOOL = {
    "type": "function",
    "function": {
        "name": "submit_review",
        "description": "Submit the review verdict.",
        "parameters": {
            "type": "object",
            "properties": {
                "verdict": {
                    "type": "string",
                    "enum": ["approve", "changes_requested", "needs_discussion"],
                },
                "summary": {"type": "string"},
                "findings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string"},
                            "line": {"type": "integer"},
                            "message": {"type": "string"},
                        },
                        "required": ["message"],
                    },
                },
            },
            "required": ["verdict", "summary", "findings"],
        },
    },
}


def review(
    llm: LLMClient,
    *,
    prompt: str,
    diff: str,
    checks: list[CheckResult],
    waiting: WaitListener | None = None,
) -> tuple[Verdict, Any]:
    """Ask the model for a verdict on the diff; returns it and the call's usage. A reply that
    is not a usable verdict is sent back once; a second failure is a `needs_discussion`."""
    check_lines = "\n".join(
        f"- `{c.command}`: {'passed' if c.passed else f'FAILED (exit {c.exit_code})'}"
        for c in checks
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": render("review_system")},
        {
            "role": "user",
            "content": render(
                "review_request",
                prompt=prompt,
                checks=check_lines or "(no checks configured)",
                diff=truncate(diff, REVIEW_DIFF_CHARS // 2, REVIEW_DIFF_CHARS // 2),
            ),
        },
    ]
    choice = {"type": "function", "function": {"name": "submit_review"}}
    usage = None
    problem = ""
    for _ in range(2):
        reply = llm.complete(messages, [REVIEW_TOOL], choice, waiting=waiting)
        usage = reply.usage if usage is None else usage + reply.usage
        call = next((c for c in reply.tool_calls if c.name == "submit_review"), None)
        try:
            if call is None or call.arguments is None:
                raise ValueError(
                    call.error if call and call.error else "no submit_review call in the reply"
                )
            return Verdict.model_validate(call.arguments), usage
        except (ValidationError, ValueError) as exc:
            problem = str(exc).splitlines()[0]
            messages.append(reply.as_message())
            if call is not None:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": problem})
            messages.append(
                {"role": "user", "content": f"That verdict was unusable ({problem}). Try again."}
            )
    unusable = Finding(message=f"the review model returned an unusable verdict: {problem}")
    return Verdict(verdict="needs_discussion", findings=[unusable]), usage


def review_feedback(verdict: Verdict) -> str:
    findings = "\n".join(
        f"{n}. {f.file}{f':{f.line}' if f.line else ''}: {f.message}"
        for n, f in enumerate(verdict.findings, 1)
    )
    return render("review_changes", summary=verdict.summary, findings=findings or "(none)")


# --- risk and the proof pack -------------------------------------------------------------

SENSITIVE = re.compile(
    r"(^|/)(\.github/|\.gitlab-ci|Dockerfile|docker-compose|.*\.lock$|requirements.*\.txt$|"
    r"pyproject\.toml$|package\.json$|setup\.py$|migrations?/|.*secret.*|.*\.pem$)"
)


@dataclass(frozen=True)
class Risk:
    level: Literal["low", "medium", "high"]
    reasons: list[str] = field(default_factory=list)


def assess_risk(
    *, files: list[str], lines_changed: int, checks: list[CheckResult], verdict: Verdict | None
) -> Risk:
    """Owners review the risky ones first: big diffs, many files, sensitive files, no proof,
    and reviewer doubts all raise it."""
    score, reasons = 0, []
    if lines_changed > 400:
        score, reasons = score + 2, [*reasons, f"{lines_changed} lines changed"]
    elif lines_changed > 100:
        score, reasons = score + 1, [*reasons, f"{lines_changed} lines changed"]
    if len(files) > 10:
        score, reasons = score + 1, [*reasons, f"{len(files)} files touched"]
    sensitive = [f for f in files if SENSITIVE.search(f)]
    if sensitive:
        score, reasons = score + 1, [*reasons, "touches " + ", ".join(sensitive[:3])]
    if not checks:
        score, reasons = score + 1, [*reasons, "no checks configured"]
    elif not all(c.passed for c in checks):
        score, reasons = score + 3, [*reasons, "checks failing"]
    if verdict is None:
        score, reasons = score + 1, [*reasons, "not reviewed"]
    elif verdict.verdict != "approve":
        score, reasons = score + 2, [*reasons, f"review: {verdict.verdict.replace('_', ' ')}"]
    level: Literal["low", "medium", "high"] = (
        "high" if score >= 3 else "medium" if score >= 1 else "low"
    )
    return Risk(level, reasons)


def proof_pack(
    *,
    diff_stat: str,
    files: list[str],
    insertions: int,
    deletions: int,
    checks: list[CheckResult],
    verdict: Verdict | None,
    rounds: int,
) -> dict[str, Any]:
    risk = assess_risk(
        files=files, lines_changed=insertions + deletions, checks=checks, verdict=verdict
    )
    return {
        "diff_stat": diff_stat,
        "files": files,
        "insertions": insertions,
        "deletions": deletions,
        "checks": [asdict(c) | {"passed": c.passed} for c in checks],
        "review": verdict.model_dump() if verdict else None,
        "rounds": rounds,
        "risk": asdict(risk),
    }


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
