"""The shape of a plan before it is queued: a title and a few tasks, each with its prompt,
the paths it may touch, the tasks of the plan it comes after (by index) and a size.

The planner's answer is model text, and the Edit modal is people's text: both are untrusted.
`PlanDraft.model_validate` is the one gate: unknown keys, a task count over the cap, an index
that names no task, a task after itself and any cycle are refused with a message a person can
act on. Pure (pydantic only), so the bot, the executor and storage share it."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from storage.defaults import MAX_PLAN_TASK_PATHS, MAX_PLAN_TASKS, MAX_PROMPT_CHARS

_Path = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00]+$"),
]


class Size(StrEnum):
    S = "S"
    M = "M"
    L = "L"


class DraftTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)
    ]
    allowed_paths: list[_Path] = Field(min_length=1, max_length=MAX_PLAN_TASK_PATHS)
    # 1-based numbers of the tasks of this plan that must merge first (as people count).
    after: list[int] = Field(default_factory=list, max_length=MAX_PLAN_TASKS)
    size: Size = Size.M


class PlanDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
    tasks: list[DraftTask] = Field(min_length=1, max_length=MAX_PLAN_TASKS)

    @model_validator(mode="after")
    def _dependencies_form_no_cycle(self) -> PlanDraft:
        count = len(self.tasks)
        for number, task in enumerate(self.tasks, 1):
            for dep in task.after:
                if dep == number:
                    raise ValueError(f"task {number} comes after itself")
                if not 1 <= dep <= count:
                    raise ValueError(
                        f"task {number} comes after task {dep}, but the plan has tasks 1 to {count}"
                    )
        cycle = find_cycle({n: self.tasks[n - 1].after for n in range(1, count + 1)})
        if cycle:
            raise ValueError("the tasks wait for each other in a circle: " + " -> ".join(cycle))
        return self

    def prerequisites(self, number: int) -> set[int]:
        """Every task `number` waits for, directly or through others."""
        seen: set[int] = set()
        todo = list(self.tasks[number - 1].after)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.tasks[n - 1].after)
        return seen


def problem(exc: ValidationError) -> str:
    """A validation failure in one line a person (or the planner) can act on."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the plan"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"


def find_cycle(after: dict[int, list[int]]) -> list[str]:
    """A dependency circle as `["1", "3", "1"]`, or [] (depth-first, three colours)."""
    colour: dict[int, int] = {}  # 1: on the current path, 2: done
    path: list[int] = []

    def visit(n: int) -> list[str]:
        colour[n] = 1
        path.append(n)
        for m in after.get(n, []):
            if colour.get(m) == 1:
                loop = [*path[path.index(m) :], m]
                return [str(x) for x in loop]
            if colour.get(m) is None and (found := visit(m)):
                return found
        path.pop()
        colour[n] = 2
        return []

    for n in after:
        if colour.get(n) is None and (found := visit(n)):
            return found
    return []


def paths_overlap(a: list[str] | None, b: list[str] | None) -> bool:
    """Whether two tasks' allowed paths may touch a common file. Conservative: patterns are
    compared by their literal part (up to the first wildcard), and a prefix of the other's
    counts as an overlap; None (the whole repo) overlaps everything."""
    if not a or not b:
        return True
    return any(_prefix_overlap(p, q) for p in a for q in b)


def _prefix_overlap(p: str, q: str) -> bool:
    lp, lq = _literal(p), _literal(q)
    if lp == p and lq == q:  # two exact files
        return p == q
    return lp.startswith(lq) or lq.startswith(lp)


def _literal(pattern: str) -> str:
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[:cut]
