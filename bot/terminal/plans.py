"""Plans in the terminal (pure): the proposal as a numbered list with dependencies and
paths, and a queued plan's tasks with their states."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.text import Text

from bot.terminal.render import plain, state_text
from storage.lifecycle import State
from storage.models import Plan, Task
from storage.plan_draft import PlanDraft


def proposal(plan: Plan, draft: PlanDraft) -> Group:
    lines = [Text.assemble(("Plan ", "bold"), (str(plan.id), "bold"), ": ", plain(draft.title))]
    for number, item in enumerate(draft.tasks, 1):
        after = f" after {', '.join(map(str, item.after))}" if item.after else ""
        lines.append(Text.assemble(f"{number:>3}. [{item.size}]{after} ", plain(item.prompt)))
        lines.append(Text.assemble("     paths: ", plain(", ".join(item.allowed_paths))))
    return Group(*lines)


def progress(plan: Plan, tasks: Sequence[Task]) -> Group:
    head = Text.assemble(
        ("Plan ", "bold"), (str(plan.id), "bold"), f" ({plan.status}): ", plain(plan.title)
    )
    lines = [head]
    for task in tasks:
        lines.append(
            Text.assemble(
                f"  #{task.id} ", state_text(State(task.state)), " ", plain(task.prompt[:80])
            )
        )
    if tasks and all(t.state is State.MERGED for t in tasks):
        lines.append(Text("all merged", style="green"))
    return Group(*lines)
