"""Storage tunables, each with the reason for its value."""

from __future__ import annotations

# Writers wait this long for SQLite's lock instead of failing with "database is locked";
# long enough for a burst of workers and a CLI, short enough to surface a stuck writer.
SQLITE_BUSY_TIMEOUT_S = 15.0

# A worker heartbeats about every 10 s; three missed beats mean it is gone.
HEARTBEAT_TIMEOUT_S = 30.0

# A task re-queued this many times after its worker died is failed instead: something in the
# task itself (a memory hog, a fork bomb) is likely killing workers.
MAX_ATTEMPTS = 3

# Longest prompt accepted from any front end; Slack's own message limit is 40,000 chars.
MAX_PROMPT_CHARS = 20_000

# A plan is a handful of small tasks; more than this is a spec that needs cutting by a person
# (and a model answer asking for hundreds of tasks is garbage, not a plan).
MAX_PLAN_TASKS = 12

# Paths one planned task may list; a longer list is no boundary at all.
MAX_PLAN_TASK_PATHS = 20

# Prerequisites one task may name (`--after`).
MAX_PREREQUISITES = 20

# A reply's files are fetched within seconds of its ack; a nudge still waiting for them after
# this lost its fetcher (the bot died and is not back): its agent gets the reply without the
# files, and a note saying so, rather than waiting on Slack for ever.
NUDGE_FILES_WAIT_S = 120.0
