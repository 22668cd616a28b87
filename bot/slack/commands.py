"""`/agent` text -> a `Command`, or a `CommandError` saying what to type instead. Pure: no I/O,
so any text a person can type is property-tested to give one or the other, never a crash."""

from __future__ import annotations

from dataclasses import dataclass

from bot.actions import ActionError, parse_task_id
from storage.models import Priority

USAGE = (
    "`/agent add [--repo R] [--priority high|normal|low] [--after ID,ID] <what to do>` (or just "
    "`/agent <what to do>`), `/agent list [mine|all]`, `/agent show ID`, `/agent cancel ID`, "
    "`/agent retry ID`, `/agent review`, `/agent repos`, `/agent budget`, "
    "`/agent digest [mine|subscribe|unsubscribe]`, "
    '`/agent schedule "<cron>" [--repo R] <what to do>`, `/agent schedule list|pause ID|'
    "resume ID|delete ID`, `/agent help`"
)
SCHEDULE_USAGE = (
    '`/agent schedule "<cron>" [--repo R] [--tz Europe/Berlin] <what to do>` (cron: minute '
    'hour day month weekday, e.g. "0 9 * * 1" for Mondays at 9:00, or @daily/@weekly), '
    "`/agent schedule list`, `/agent schedule pause|resume|delete ID`"
)
_DIGEST_ACTIONS = ("show", "mine", "subscribe", "unsubscribe")
_SCHEDULE_WITH_ID = ("pause", "resume", "delete")
# Quotes people type around a cron expression; phones turn " into “ ”.
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "\u201d": "\u201d"}
# Words that would be mistaken for a subcommand if a prompt began with them by accident are
# still prompts: only these exact words are subcommands.
_WITH_ID = ("show", "cancel", "retry")
_BARE = ("repos", "budget", "help", "review")
_LIST_SCOPES = ("mine", "channel", "all")
# Things people try to type that live on the card's buttons instead.
_ELSEWHERE = ("approve", "reject", "nudge", "merge")


class CommandError(Exception):
    """The text is not a command we understand; the message says what to type instead."""


@dataclass(frozen=True)
class Command:
    verb: str  # add, list, show, cancel, retry, repos, budget, help, review
    prompt: str = ""
    repo: str | None = None
    priority: Priority = Priority.NORMAL
    task_id: int | None = None
    scope: str = "channel"  # for list: mine, channel, all
    action: str = ""  # digest: show, mine, subscribe, unsubscribe; schedule: add, list, ...
    cron: str = ""  # schedule add
    timezone: str | None = None  # schedule add
    schedule_id: int | None = None  # schedule pause, resume, delete
    after: tuple[int, ...] = ()  # add --after: tasks that must merge first


def parse(text: str) -> Command:
    """Parse the text after `/agent`."""
    stripped = text.strip()
    if not stripped:
        return Command("help")
    head, rest = _split(stripped)
    verb = head.lower()
    if verb == "add":
        return _parse_add(rest)
    if verb == "plan":
        add = _parse_add(rest)  # the same options; the "prompt" is the spec
        if add.after or add.priority is not Priority.NORMAL:
            raise CommandError("`/agent plan [--repo R] <spec>` takes only --repo")
        return Command("plan", prompt=add.prompt, repo=add.repo)
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
    if verb == "digest":
        action = rest.lower() or "show"
        if action not in _DIGEST_ACTIONS:
            raise CommandError(
                f"`/agent digest` takes mine, subscribe or unsubscribe (got {rest!r}); to queue "
                f"a task write `/agent add {stripped}`"
            )
        return Command("digest", action=action)
    if verb == "schedule":
        return _parse_schedule(rest)
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


def _parse_schedule(rest: str) -> Command:
    head, tail = _split(rest)
    action = head.lower()
    if not rest:
        raise CommandError(f"`/agent schedule` needs more: {SCHEDULE_USAGE}")
    if action == "list":
        return Command("schedule", action="list")
    if action in _SCHEDULE_WITH_ID:
        if not tail.isdigit() or int(tail) < 1:
            raise CommandError(f"`/agent schedule {action}` needs a schedule id, like 3")
        return Command("schedule", action=action, schedule_id=int(tail))
    cron, rest = _take_cron(rest)
    repo, tz = None, None
    while rest.startswith("-"):
        option, value, rest = _take_option(rest)
        if option in ("--repo", "-r"):
            repo = value
        elif option in ("--tz", "--timezone"):
            tz = value
        else:
            raise CommandError(f"unknown option {option!r}; {SCHEDULE_USAGE}")
    if not rest:
        raise CommandError("the prompt is empty; say what the agent should do: " + SCHEDULE_USAGE)
    return Command("schedule", action="add", cron=cron, prompt=rest, repo=repo, timezone=tz)


def _take_cron(text: str) -> tuple[str, str]:
    """`"0 9 * * 1" update deps` -> ("0 9 * * 1", "update deps"); `@weekly update deps` too.
    The cron is checked when the schedule is added (it needs the time zone)."""
    if text.startswith("@"):
        return _split(text)
    close = _QUOTES.get(text[:1])
    end = text.find(close, 1) if close else -1
    if end < 0:
        raise CommandError(f"put the cron expression in quotes: {SCHEDULE_USAGE}")
    cron = text[1:end].strip()
    if not cron:
        raise CommandError(f"the cron expression is empty: {SCHEDULE_USAGE}")
    return cron, text[end + 1 :].strip()


def _looks_like_id(text: str) -> bool:
    try:
        parse_task_id(text.split()[0])
    except ActionError:
        return False
    return True


def _parse_add(rest: str) -> Command:
    repo: str | None = None
    priority = Priority.NORMAL
    after: tuple[int, ...] = ()
    while rest.startswith("-"):
        option, value, rest = _take_option(rest)
        if option in ("--repo", "-r"):
            repo = value
        elif option == "--after":
            try:
                after = tuple(parse_task_id(i) for i in value.split(",") if i.strip())
            except ActionError as exc:
                raise CommandError(f"--after {value}: {exc}") from None
        elif option in ("--priority", "-p"):
            try:
                priority = Priority[value.upper()]
            except KeyError:
                raise CommandError(f"priority {value!r} is not one of high, normal, low") from None
        else:
            raise CommandError(f"unknown option {option!r}; {USAGE}")
    if not rest:
        raise CommandError("the prompt is empty; say what the agent should do: " + USAGE)
    return Command("add", prompt=rest, repo=repo, priority=priority, after=after)


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
