"""Who may do what from Slack. Pure: a task as the database has it, a Slack user, the config.

Slack signs what its user sent, so the user id of a request is trusted; the task ids in it
(a button's value, a modal's private_metadata, the text of a command) are not: a client can
send any. So every check here takes the task read from the database, never what a payload
says about it. The terminal acts as the local user (the host is trusted) and does not come
through here."""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlmodel import col

from bot.actions import ActionError, check_may_decide
from executor.config.schema import Config
from storage.models import Task


def check_member(config: Config, user: str, what: str = "use nightcrew") -> None:
    """With `users:` configured, nobody outside it does anything (not even a repo's
    approver): the list is who the installation trusts at all."""
    if config.users and user not in config.users:
        raise ActionError(
            f"you are not one of the users who may {what}; ask an admin to add your Slack "
            "id to `users:` in nightcrew.yaml"
        )


def approvers(config: Config, task: Task) -> list[str]:
    repo = config.repos.get(task.repo)
    return list(repo.approvers) if repo else []


def check_may_act(config: Config, task: Task, user: str, verb: str) -> None:
    """Nudge, retry, request changes, cancel, approve, reject: the task's requester or one of
    its repo's approvers, and (with `users:`) one of the users."""
    check_member(config, user, f"{verb} tasks")
    check_may_decide(task, user, approvers(config, task), verb)


def is_dm(channel: str | None) -> bool:
    """A direct message with the app (its id starts with D), or no channel at all (a click in
    the App Home, which is the user's own space)."""
    return not channel or channel.startswith("D")


def check_may_see(task: Task, user: str, channel: str | None) -> None:
    """In a channel, the tasks of that channel; in a DM or the App Home, your own."""
    if is_dm(channel):
        if task.requester != user:
            raise ActionError(f"task {task.id} is not yours; here you see only your own tasks")
    elif task.channel != channel:
        raise ActionError(f"task {task.id} is not in this channel; ask in its own channel")


def visible(user: str, channel: str | None) -> ColumnElement[bool]:
    """`check_may_see` as a query condition, for lists."""
    if is_dm(channel):
        return col(Task.requester) == user
    return col(Task.channel) == channel


def check_may_see_proof(config: Config, task: Task, user: str, channel: str | None) -> None:
    """The diff stat: whoever may see the task here, and whoever may decide on it anywhere
    (the digest puts a task's buttons in a channel of its own)."""
    try:
        check_may_see(task, user, channel)
    except ActionError as cannot_see:
        try:
            check_may_act(config, task, user, "review")
        except ActionError:
            raise cannot_see from None
