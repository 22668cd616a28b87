"""The notifier's tunables, each with its reason: leases, pacing, retries and their backoff,
how long a rate-limited row is waited out, polls, the diff file's cap."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tunables:
    lease_s: float = 60.0  # longer than any one Web API call (timeout 30 s) can take
    card_edit_interval_s: float = 3.0  # "at most one edit per task every few seconds"
    channel_interval_s: float = 1.0  # Slack allows about one post per second per channel
    backoff_base_s: float = 1.0  # doubled per failed attempt
    backoff_max_s: float = 300.0
    max_attempts: int = 10  # then the row is given up and the failure recorded
    # A rate-limited row is waited out this long (from when it was written), then given up:
    # a day covers any storm Slack has had; NIGHTCREW_SLACK_MAX_AGE_H sets it.
    max_age_s: float = 24 * 3600.0
    rate_limit_default_s: float = 5.0  # a 429 without Retry-After (Slack always sends one)
    idle_poll_s: float = 0.5  # how soon a new outbox row is noticed
    reaction_poll_s: float = 2.0  # how soon ✅ follows the agent taking a nudge
    # The diff file in a thread: Slack takes up to 1 GB, but its viewer (and a phone) chokes
    # long before; beyond this the file is cut at a line and its comment links the page.
    file_max_bytes: int = 1_000_000
