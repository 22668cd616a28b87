"""Presets for external agents (`agent: aider | codex | claude-code`): how each is run headless
in the sandbox, which variables it reads, how it is told the task (and, on later runs, the
nudges and feedback), and how its output becomes turns, tokens and cost.

Each preset reads its prompt from PROMPT_FILE (written by the host, never interpolated into a
shell line), talks to its model through the egress proxy when `network:` is an allowlist,
and prints what it used: aider a `Tokens: ... Cost: ...` line per message, Codex a JSON event
stream (`turn.completed` with usage, `thread.started` with the session to resume), Claude Code
one JSON result (`num_turns`, `total_cost_usd`, `usage`, `session_id`). Versions are pinned in
sandbox/agents/install-agents.sh; the flags below are those versions'."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from executor.agents import untrusted_json

PROMPT_FILE = "/tmp/nightcrew-prompt.txt"
NO_KEY = "nightcrew-no-key"  # some clients refuse to start without one; local models need none


@dataclass(frozen=True)
class Used:
    """What one line of an agent's output reports: turns, tokens, cost (None: not said)."""

    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Decimal | None = None
    session: str | None = None  # an id to resume the agent's conversation with


@dataclass(frozen=True)
class Launch:
    model: str  # the configured model name
    model_url: str  # its OpenAI-compatible base URL (…/v1)
    session: str | None = None  # resume this conversation (codex, claude-code)


@dataclass(frozen=True)
class Preset:
    name: str
    binary: str  # what `doctor` looks for in the image
    build: Callable[[Launch], str]
    parse: Callable[[str], Used | None]
    env: Callable[[Launch], dict[str, str]] = field(default=lambda _: {})
    resumes: bool = False  # a later run continues the conversation (only the news is sent)


_PROMPT = f'"$(cat {PROMPT_FILE})"'

# --- aider -----------------------------------------------------------------------------------

AIDER_FLAGS = (
    "--yes-always --no-auto-commits --no-dirty-commits --no-gitignore --no-check-update "
    "--no-show-release-notes --analytics-disable --no-pretty --no-stream --no-fancy-input "
    "--no-show-model-warnings --map-tokens 0 --no-detect-urls --no-suggest-shell-commands "
    "--no-auto-lint --edit-format whole --chat-history-file /tmp/aider.chat.md "
    "--input-history-file /tmp/aider.input --no-restore-chat-history"
)
_AIDER_TOKENS = re.compile(
    r"Tokens: ([\d.,]+)(k?) sent(?:, [\d.,]+k? cache \w+)*, ([\d.,]+)(k?) received\."
    r"(?: Cost: \$([\d.]+) message)?"
)


def _aider(launch: Launch) -> str:
    model = shlex.quote(f"openai/{launch.model}")
    # .aider* files it may leave would be swept into the branch: they go with the run.
    return (
        f"aider {AIDER_FLAGS} --model {model} --message-file {PROMPT_FILE}; "
        "code=$?; rm -rf .aider.tags.cache.* .aider.chat.history.md .aider.input.history; "
        "exit $code"
    )


def _aider_env(launch: Launch) -> dict[str, str]:
    # LiteLLM would fetch its price list from the internet at start-up: use the bundled one.
    return {
        "OPENAI_API_BASE": launch.model_url,
        "OPENAI_API_KEY": NO_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def _count(number: str, kilo: str) -> int:
    value = Decimal(number.replace(",", ""))
    return int(value * 1000) if kilo else int(value)


def parse_aider(line: str) -> Used | None:
    found = _AIDER_TOKENS.search(line)
    if not found:
        return None
    sent, sent_k, received, received_k, cost = found.groups()
    return Used(
        turns=1,
        tokens_in=_count(sent, sent_k),
        tokens_out=_count(received, received_k),
        cost_usd=Decimal(cost) if cost else None,
    )


# --- Codex CLI ---------------------------------------------------------------------------------


# No update check, no analytics: a sandbox reaches its model and nothing else, and every other
# attempt would be a refusal on the card.
CODEX_QUIET = "-c check_for_update_on_startup=false -c analytics.enabled=false"


def _codex(launch: Launch) -> str:
    provider = (
        'model_providers.nightcrew={name="nightcrew", '
        f'base_url="{launch.model_url}", env_key="OPENAI_API_KEY", wire_api="responses"}}'
    )
    options = (
        f"--json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox "
        f"-c model_provider=nightcrew -c {shlex.quote(provider)} {CODEX_QUIET} "
        f"-m {shlex.quote(launch.model)}"
    )
    if launch.session:
        return f"codex exec resume {options} {shlex.quote(launch.session)} {_PROMPT}"
    return f"codex exec {options} {_PROMPT}"


def _codex_env(launch: Launch) -> dict[str, str]:
    return {"OPENAI_API_KEY": NO_KEY}


def parse_codex(line: str) -> Used | None:
    event = _json(line)
    if event is None:
        return None
    if event.get("type") == "thread.started" and isinstance(event.get("thread_id"), str):
        return Used(session=event["thread_id"])
    if event.get("type") == "turn.completed":
        usage = _mapping(event.get("usage"))
        return Used(
            turns=1,
            tokens_in=_int(usage.get("input_tokens")),
            tokens_out=_int(usage.get("output_tokens")),
        )
    return None


# --- Claude Code -------------------------------------------------------------------------------


def _claude(launch: Launch) -> str:
    # Its model is Claude Code's own choice (ANTHROPIC_MODEL in agent_env to pick one), at
    # ANTHROPIC_BASE_URL (agent_env) or Anthropic's API: not the OpenAI-compatible model.
    resume = f"--resume {shlex.quote(launch.session)} " if launch.session else ""
    return f"claude -p {_PROMPT} {resume}--output-format json --dangerously-skip-permissions"


def _claude_env(launch: Launch) -> dict[str, str]:
    # No update check, telemetry or error reports: only the model is on the allowlist.
    return {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


def parse_claude(line: str) -> Used | None:
    result = _json(line)
    if result is None or result.get("type") != "result":
        return None
    usage = _mapping(result.get("usage"))
    tokens_in = sum(
        _int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    cost = result.get("total_cost_usd")
    session = result.get("session_id")
    return Used(
        turns=max(1, _int(result.get("num_turns"))),
        tokens_in=tokens_in,
        tokens_out=_int(usage.get("output_tokens")),
        cost_usd=_decimal(cost),
        session=session if isinstance(session, str) else None,
    )


def _json(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = untrusted_json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    # An agent's output is the agent's: a negative, fractional or absurd count is not trusted.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**12:
        return 0
    return value


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and 0 <= amount < 100_000 else None


PRESETS: dict[str, Preset] = {
    "aider": Preset("aider", "aider", _aider, parse_aider, _aider_env),
    "codex": Preset("codex", "codex", _codex, parse_codex, _codex_env, resumes=True),
    "claude-code": Preset("claude-code", "claude", _claude, parse_claude, _claude_env, True),
}
