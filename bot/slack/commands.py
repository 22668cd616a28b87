"""`/agent` text -> a `Command`, or a `CommandError` saying what to type instead. Pure: no I/O,
so any text a person can type is property-tested to give one or the other, never a crash."""

from __future__ import annotations

from dataclasses import dataclass

from bot.actions import ActionError, parse_task_id
from storage.models import Priority

USAGE = (
    "`/agent add [--repo R] [--priority high|normal|low] <what to do>` (or just "
    "`/agent <what to do>`), `/agent list [mine|all]`, `/agent show ID`, `/agent cancel ID`, "
    "`/agent retry ID`, `/agent repos`, `/agent budget`, `/agent help`"
)
# Words that would be mistaken for a subcommand if a prompt began with them by accident are
# still prompts: only these exact words are subcommands.
_WITH_ID = ("show", "cancel", "retry")
_BARE = ("repos", "budget", "help")
_LIST_SCOPES = ("mine", "channel", "all")
# Things people try to type that live on the card's buttons instead.
_ELSEWHERE = ("approve", "reject", "nudge", "merge", "digest")


class CommandError(Exception):
    """The text is not a command we understand; the message says what to type instead."""


@dataclass(frozen=True)
class Command:
    verb: str  # add, list, show, cancel, retry, repos, budget, help
    prompt: str = ""
    repo: str | None = None
    priority: Priority = Priority.NORMAL
    task_id: int | None = None
    scope: str = "channel"  # for list: mine, channel, all


def parse(text: str) -> Command:
    """Parse the text after `/agent`."""
    stripped = text.strip()
    if not stripped:
        return Command("help")
    head, rest = _split(stripped)
    verb = head.lower()
    if verb == "add":
        return _parse_add(rest)
    if verb in _WITH_ID:
        if not rest or len(rest.split()) != 1:
            raise CommandError(f"`/agent {verb}` needs one task id, like `/agent {verb} 7`")
        try:
            return Command(verb, task_id=parse_task_id(rest))
        except ActionError as exc:
            raise CommandError(str(exc)) from None
    if verb == "list" or verb == "ls":
        scope = rest.lower() or "channel"
        if scope not in _LIST_SCOPES:
            raise CommandError(f"`/agent list` takes mine, channel or all (got {rest!r})")
        return Command("list", scope=scope)
    if verb in _BARE:
        return Command(verb)  # `/agent help me` is a plea for help, not a task
    if verb.startswith("-"):
        return _parse_add(stripped)  # `/agent --repo api fix it`: options of an implicit add
    if verb in _ELSEWHERE and (not rest or _looks_like_id(rest)):
        raise CommandError(f"`{verb}` is a button on the task's card in its thread; {USAGE}")
    if not rest:  # one word is a mistyped subcommand far more often than a whole task
        raise CommandError(
            f"unknown subcommand {head!r}; to queue it as a task write `/agent add {head}`. "
            f"Commands: {USAGE}"
        )
    return Command("add", prompt=stripped)


def _looks_like_id(text: str) -> bool:
    try:
        parse_task_id(text.split()[0])
    except ActionError:
        return False
    return True


def _parse_add(rest: str) -> Command:
    repo: str | None = None
    priority = Priority.NORMAL
    while rest.startswith("-"):
        option, value, rest = _take_option(rest)
        if option in ("--repo", "-r"):
            repo = value
        elif option in ("--priority", "-p"):
            try:
                priority = Priority[value.upper()]
            except KeyError:
                raise CommandError(f"priority {value!r} is not one of high, normal, low") from None
        else:
            raise CommandError(f"unknown option {option!r}; {USAGE}")
    if not rest:
        raise CommandError("the prompt is empty; say what the agent should do: " + USAGE)
    return Command("add", prompt=rest, repo=repo, priority=priority)


def _take_option(text: str) -> tuple[str, str, str]:
    """`--repo api fix it` -> ("--repo", "api", "fix it"); `--repo=api fix` works too."""
    head, rest = _split(text)
    if "=" in head:
        option, _, value = head.partition("=")
    else:
        option = head
        value, rest = _split(rest)
    option = option.lower()
    value = value.strip("\"'")  # people quote names out of habit: --repo "api"
    if not value:
        raise CommandError(f"{option} needs a value, like `{option} api`")
    return option, value, rest


def _split(text: str) -> tuple[str, str]:
    """The first word and the rest, split on any whitespace (phones insert odd spaces)."""
    parts = text.split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")
