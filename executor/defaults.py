"""Executor tunables, each with the reason for its value."""

from __future__ import annotations

# What the model sees of a long tool output: the start and the end usually carry the
# command's purpose and its verdict (mini-swe-agent uses the same split).
OUTPUT_HEAD_CHARS = 5_000
OUTPUT_TAIL_CHARS = 5_000

# What one task event keeps of a tool output: the log is for people, the model sees more.
EVENT_OUTPUT_CHARS = 2_000

# write_file content travels base64 on a command line; well under the kernel's ARG_MAX.
MAX_FILE_WRITE_BYTES = 512 * 1024

# The same tool call this many times in a row is a loop: warn once, then stop.
LOOP_REPEATS = 3

# How often a worker renews its claim and looks for a cancel request; a cancel stops a
# running command within about this long.
WATCH_INTERVAL_S = 2.0

# Heartbeats are written at most this often (the watch runs more often, to see cancels).
HEARTBEAT_EVERY_S = 10.0

# An idle worker looks for work this often.
IDLE_POLL_S = 1.0
