"""Reading what external agents report: aider's token lines, Codex's JSON events, Claude
Code's JSON result (recorded from the pinned versions), and what a hostile agent might print
instead."""

from __future__ import annotations

import json
import shlex
from decimal import Decimal
from pathlib import Path

import pytest

from executor.agents.presets import PRESETS, Launch, Used, parse_aider, parse_claude, parse_codex
from executor.config.schema import RepoConfig

# Claude Code 2.0.77's `--output-format json` result, as printed in the sandbox.
CLAUDE_RESULT = (
    '{"type":"result","subtype":"success","is_error":false,"duration_ms":1343,'
    '"num_turns":2,"result":"done","session_id":"41e573ff-b48e-4629-943d-ef35c127e8dc",'
    '"total_cost_usd":0.00615,"usage":{"input_tokens":700,"cache_creation_input_tokens":5,'
    '"cache_read_input_tokens":7,"output_tokens":30}}'
)
CODEX_EVENTS = [
    '{"type":"thread.started","thread_id":"01a247dc-0540-7330-95f8-2d8d5cad30e1"}',
    '{"type":"turn.started"}',
    '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"hello"}}',
    '{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":0,'
    '"output_tokens":5,"reasoning_output_tokens":0}}',
]


def test_aider_token_lines_with_and_without_cost() -> None:
    assert parse_aider("Tokens: 1.2k sent, 80 received.") == Used(1, 1200, 80)
    assert parse_aider(
        "Tokens: 12k sent, 2.5k cache write, 1,024 received. Cost: $0.05 message, $0.10 session."
    ) == Used(1, 12000, 1024, Decimal("0.05"))
    assert parse_aider("Applied edit to calc.py") is None


def test_codex_events() -> None:
    parsed = [parse_codex(line) for line in CODEX_EVENTS]
    assert parsed[0] == Used(session="01a247dc-0540-7330-95f8-2d8d5cad30e1")
    assert parsed[1] is None and parsed[2] is None
    assert parsed[3] == Used(1, 10, 5)


def test_claude_code_result() -> None:
    assert parse_claude(CLAUDE_RESULT) == Used(
        2, 712, 30, Decimal("0.00615"), "41e573ff-b48e-4629-943d-ef35c127e8dc"
    )


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"turn.completed","usage":{"input_tokens":-5000,"output_tokens":1e30}}',
        '{"type":"turn.completed","usage":{"input_tokens":"9","output_tokens":true}}',
        '{"type":"turn.completed","usage":"lots"}',
        '{"type":"result","num_turns":-3,"total_cost_usd":"NaN","usage":{"input_tokens":null}}',
        '{"type":"result","total_cost_usd":-1}',
        "{not json",
        "[1, 2]",
        "Tokens: lots sent, none received.",
    ],
)
def test_garbage_from_an_agent_never_counts_negative_or_absurd(line: str) -> None:
    for parse in (parse_aider, parse_codex, parse_claude):
        used = parse(line)
        if used is not None:
            assert used.tokens_in >= 0 and used.tokens_out >= 0 and used.turns >= 0
            assert used.cost_usd is None or used.cost_usd >= 0
            assert used.tokens_in < 10**12 and used.tokens_out < 10**12


def test_prompts_never_reach_a_shell_line() -> None:
    launch = Launch(model="m'; rm -rf / #", model_url="http://h:1/v1", session="s'; id #")
    for preset in PRESETS.values():
        command = preset.build(launch)
        assert '"$(cat /tmp/nightcrew-prompt.txt)"' in command or "--message-file" in command
        words = shlex.split(command)  # each hostile value stays one word of the command
        assert preset.name == "claude-code" or any(w.endswith("m'; rm -rf / #") for w in words)
        assert preset.name == "aider" or "s'; id #" in words


def test_a_preset_needs_no_agent_command_and_command_still_does() -> None:
    for name in ("aider", "codex", "claude-code"):
        assert RepoConfig(path=Path("/x"), agent=name).agent == name
    with pytest.raises(ValueError, match="agent_command"):
        RepoConfig(path=Path("/x"), agent="command")
    with pytest.raises(ValueError):
        RepoConfig(path=Path("/x"), agent="cursor")


def test_the_claude_result_is_valid_json_of_the_documented_shape() -> None:
    result = json.loads(CLAUDE_RESULT)
    assert {"type", "num_turns", "total_cost_usd", "usage", "session_id"} <= set(result)
