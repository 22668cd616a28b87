"""The notifier's retry policy and diff file, as pure logic: which Slack answers are waited
out, retried (and whether the post must be looked for first), or final; when a row is tried
again or given up; what a shared diff file holds."""

from __future__ import annotations

import pytest

from bot.slack.file_share import diff_file
from bot.slack.notifier_tunables import Tunables
from bot.slack.retry_policy import (
    GiveUp,
    Permanent,
    Retry,
    TryAgain,
    after_failure,
    card_gone,
    classify,
    edit_refused,
    retry_after,
)

T = Tunables(backoff_base_s=1.0, backoff_max_s=300.0, max_attempts=10, max_age_s=3600.0)


def _classify(status: int, error: str, headers: dict[str, str] | None = None) -> Retry | Permanent:
    return classify(status, error, headers or {}, rate_limit_default_s=5.0)


def test_a_429_waits_what_retry_after_says_and_is_no_failed_attempt() -> None:
    limited = _classify(429, "ratelimited", {"Retry-After": "30"})
    assert isinstance(limited, Retry) and limited.rate_limited and limited.answered
    assert limited.after_s == 30.0
    # Slack also answers ratelimited with HTTP 200; without Retry-After, the default wait.
    quiet = _classify(200, "ratelimited")
    assert isinstance(quiet, Retry) and quiet.rate_limited and quiet.after_s == 5.0
    # However many 429s: still waited out while the row is young, never counted.
    assert after_failure(limited, attempts=50, age_s=10, t=T) == TryAgain(30.0, rate_limited=True)


def test_an_unanswered_or_half_done_call_is_retried_and_looked_for_before_posting_again() -> None:
    for status, error in [(500, "HTTP 500"), (503, "service_unavailable")]:
        failed = _classify(status, error)
        assert isinstance(failed, Retry) and not failed.answered and not failed.rate_limited
    # Slack: with these "some aspect of the operation" may have succeeded.
    for error in ("internal_error", "fatal_error"):
        maybe = _classify(200, error)
        assert isinstance(maybe, Retry) and not maybe.answered
    # These say Slack did not do it: the next attempt need not look first.
    for error in ("service_unavailable", "request_timeout"):
        said = _classify(200, error)
        assert isinstance(said, Retry) and said.answered


@pytest.mark.parametrize(
    "error", ["channel_not_found", "not_in_channel", "invalid_blocks", "cant_update_message"]
)
def test_a_refusal_is_final(error: str) -> None:
    refused = _classify(200, error)
    assert isinstance(refused, Permanent) and str(refused) == error


def test_a_card_slack_will_not_edit_is_posted_again_in_its_thread_or_as_a_new_one() -> None:
    for error in ("cant_update_message", "edit_window_closed", "message_not_found"):
        assert edit_refused(error)
    assert not edit_refused("invalid_blocks") and not edit_refused("ratelimited")
    assert card_gone("message_not_found", in_thread=False)  # the root is gone: a new thread
    assert not card_gone("message_not_found", in_thread=True)  # a fresh card inside it was
    assert not card_gone("cant_update_message", in_thread=False)  # still there: its thread


def test_backoff_doubles_up_to_its_cap_then_the_attempts_run_out() -> None:
    failed = Retry("internal_error", answered=False)
    delays = [after_failure(failed, attempts=n, age_s=1, t=T) for n in range(9)]
    assert [d.after_s for d in delays if isinstance(d, TryAgain)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        64.0,
        128.0,
        256.0,
    ]
    assert after_failure(failed, attempts=8, age_s=1, t=Tunables(backoff_max_s=100.0)) == (
        TryAgain(100.0, rate_limited=False)
    )
    last = after_failure(failed, attempts=9, age_s=1, t=T)
    assert last == GiveUp("internal_error (gave up after 10 attempts)", "attempts")


def test_a_row_rate_limited_past_the_maximum_age_is_given_up_saying_how_long() -> None:
    limited = Retry("ratelimited", 30.0, answered=True, rate_limited=True)
    step = after_failure(limited, attempts=0, age_s=3600.0, t=T)
    assert step == GiveUp("still rate limited 60 min after it was written", "too_old")
    assert after_failure(limited, attempts=0, age_s=3599.0, t=T) == TryAgain(
        30.0, rate_limited=True
    )


def test_retry_after_is_read_in_either_spelling_and_nonsense_is_ignored() -> None:
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"Retry-After": "-3"}) == 0.0
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({}) is None


def test_a_diff_too_big_for_the_file_is_cut_at_a_line_and_says_so_with_a_link() -> None:
    diff = "".join(f"+line {n}\n" for n in range(100))
    name, data, comment = diff_file(
        7, "diff", {"diff": diff, "cut": 10}, cap=50, page="https://x/t/7"
    ) or ("", b"", "")
    assert name == "task-7.diff" and len(data) <= 50 and data.endswith(b"\n")
    assert diff.encode().startswith(data)
    cut = len(diff.encode()) - len(data) + 10  # what the job cut already counts too
    assert f"(cut: {cut:,} more bytes not in this file)" in comment
    assert "<https://x/t/7|the task's page>" in comment
    whole = diff_file(7, "diff", {"diff": "+a\n"}, cap=50, page=None)
    assert whole == ("task-7.diff", b"+a\n", "The whole diff of task 7")
    assert diff_file(7, "diff", {"diff": "  \n"}, cap=50, page=None) is None


def test_the_interdiff_file_names_the_approved_commit() -> None:
    since = {"since_approval": {"diff": "+b\n", "approved": "0123456789abcdef"}}
    name, data, comment = diff_file(3, "interdiff", since, cap=50, page="https://x") or (
        "",
        b"",
        "",
    )
    assert name == "task-3-since-approval.diff" and data == b"+b\n"
    assert comment == "What changed in task 3 since the approved `0123456789ab` · <https://x|Open>"
