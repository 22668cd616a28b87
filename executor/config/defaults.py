"""Executor tunables, each with the reason for its value."""

from __future__ import annotations

# What the model sees of a long tool output: the start and the end usually carry the
# command's purpose and its verdict (mini-swe-agent uses the same split).
OUTPUT_HEAD_CHARS = 5_000
OUTPUT_TAIL_CHARS = 5_000

# What one task event keeps of a tool output: the log is for people, the model sees more.
EVENT_OUTPUT_CHARS = 2_000

# write_file content travels base64 in command-line chunks: one argument may hold at most
# 128 KiB (MAX_ARG_STRLEN), so chunks stay well below it; the whole file is capped.
MAX_FILE_WRITE_BYTES = 2 * 1024 * 1024
WRITE_CHUNK_BYTES = 64 * 1024

# The same tool call this many times in a row is a loop: warn once, then stop.
LOOP_REPEATS = 3

# How often a worker renews its claim (one small UPDATE) and looks for a cancel request; a
# cancel stops a running command within about this long.
WATCH_INTERVAL_S = 2.0

# An idle worker looks for work this often.
IDLE_POLL_S = 1.0

# What a check's proof keeps of its output: the tail carries the verdict and the failures.
CHECK_OUTPUT_TAIL_CHARS = 4_000

# How much of a diff the reviewer reads; a bigger diff is cut in the middle with a note.
REVIEW_DIFF_CHARS = 60_000
# The whole diff kept for people (the thread's diff file, the task page), per proof pack: a
# phone reads far less; beyond this the page and the file say what was cut.
PEOPLE_DIFF_CHARS = 2_000_000

# Scope and check failures send the agent back at most this many times before a human decides.
MAX_REVISION_ROUNDS = 3

# A working task's Slack card shows its turns, tokens and cost; refreshing it at most this
# often keeps a long run visible without spending Slack's rate limits on every turn.
CARD_REFRESH_S = 60.0

# The planner explores a little, then answers; a planner that has not produced a usable plan
# in this many model turns is not going to (each turn is one model call, paid for).
PLANNER_MAX_TURNS = 12

# How many answers that fail validation (bad JSON, a cycle, too many tasks) the planner gets
# told about before its answer counts as unusable.
PLANNER_MAX_BAD_ANSWERS = 3

# A plan whose planner has not answered in this long is planned again by another worker (its
# executor died): planning writes nothing but its answer, so a second run is harmless.
PLANNER_STALE_S = 15 * 60

# --- the model endpoint (executor/agents/llm.py); nightcrew.yaml and the environment may
# set the first three (model_outage_minutes, model_idle_timeout_s, model_timeout_s).

# How long a task waits for a model endpoint that keeps failing (5xx, 429, timeouts, refused
# connections) before it parks for a person: providers' outages last minutes, and twenty
# tasks in flight should not all die in one.
MODEL_OUTAGE_WINDOW_S = 30 * 60.0
# A streamed reply that sends no byte for this long is hung (a live stream sends tokens or
# keep-alive comments every few seconds).
MODEL_IDLE_TIMEOUT_S = 60.0
# A reply that is not streamed arrives only when generation ends; slow local models need
# minutes, so only this long in all counts as hung.
MODEL_REQUEST_TIMEOUT_S = 180.0
# A wait shorter than this (one failure, retried at once) is not news: no event, no card edit.
MODEL_WAIT_NOTICE_S = 2.0
# How often a call waiting for the model looks for a cancel or a shutdown.
MODEL_WAIT_TICK_S = 1.0
# Replies that are not usable completions (garbage, the wrong shape) from an endpoint that is
# up: retried this many times, then the task parks. Not an outage: it says nothing of others.
MODEL_BAD_REPLY_ATTEMPTS = 5
