"""The commented files `nightcrew init` writes."""

from __future__ import annotations

from string import Template

_CONFIG = Template("""\
# nightcrew.yaml: what nightcrew works on and how. Every key is optional unless marked.
# Reference: README.md, "Configuration". Invalid keys stop nightcrew at start with a message.

repos:                          # required: at least one repo
  $name:
    path: $path                 # a local git repo (relative to this file) ...
    # url: git@github.com:you/$name.git   # ... or a clone URL instead of path
    base_branch: $base          # tasks branch off this and merge back into it
    # image: nightcrew-sandbox:latest     # sandbox image the agent's commands run in
    # setup: ["make deps"]                # run in the sandbox before the agent (network: true
    #                                     # if it downloads; the image has python3, git, gcc)
    checks: []                  # commands that must pass before approval, e.g. ["pytest -q"]
    # review: {enabled: true, max_rounds: 2}   # automated review of each diff
    # allowed_paths: ["src/**", "tests/**"]    # changes elsewhere are sent back, never merged
    # limits: {max_turns: 60, max_cost_usd: 5.0, max_wall_minutes: 60, memory: 2g, pids: 512}
    #   more limits: cpus: 2.0, disk: 10g (the workspace's size), command_timeout_s: 600
    # merge: {policy: merge, delete_branch: true, push: true}   # policy: merge | squash | ff
    #   or through pull requests (token in GITHUB_TOKEN / GITLAB_TOKEN, on the host only):
    #   merge: {policy: pull_request, forge: github, project: owner/repo, method: squash}
    # approvers: []             # Slack user ids who may approve besides the requester
    # network: false            # true: open; [model, "pypi.org:443"]: only those, via a proxy
    # agent: builtin            # or aider | codex | claude-code (`nightcrew image build
    #                           # --agents ...` for the image) | command (with agent_command)
    # agent_env: []             # host variables for an external agent only (its API key)

# default_repo: $name           # where tasks go when none is named (needed with several repos)
# channels:                     # Slack channel id -> repo, for tasks added in that channel
#   C0123456789: $name
# users: []                     # Slack user ids who may add tasks (empty: anyone in the channels)
# model: gpt-4.1-mini           # the agent's model (or NIGHTCREW_MODEL)
# digest:                       # the daily digest, posted to these channels (people can also
#   cron: "0 8 * * *"           # get theirs by DM: /agent digest subscribe); scheduled tasks
#   timezone: UTC               # use this time zone unless given their own
#   channels: []
# budgets: {daily_usd: 20, repo_daily_usd: {$name: 10}}   # per day in digest.timezone
# prices: {my-model: {prompt: 0.5, completion: 1.5}}     # USD per million tokens
""")

ENV_EXAMPLE = """\
# Copy to .env (never commit it) or export these in the environment.

# The model: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM).
OPENAI_BASE_URL=https://api.openai.com/v1
OPENAI_API_KEY=
NIGHTCREW_MODEL=gpt-4.1-mini

# Slack: the bot token, plus the app token for Socket Mode (no public URL needed)
# or the signing secret for HTTP mode.
SLACK_BOT_TOKEN=
SLACK_APP_TOKEN=
# SLACK_SIGNING_SECRET=

# Where state lives: SQLite under NIGHTCREW_HOME unless a database URL is given.
# NIGHTCREW_HOME=./.nightcrew
# NIGHTCREW_DATABASE_URL=postgresql://nightcrew:secret@db.example:5432/nightcrew
# NIGHTCREW_CONFIG=./nightcrew.yaml

# The task pages and review queue (Open buttons): served here, reached by people at the
# public URL (your HTTPS reverse proxy or tunnel); links expire after this many days.
# NIGHTCREW_WEB_HOST=127.0.0.1
# NIGHTCREW_WEB_PORT=8780
# NIGHTCREW_PUBLIC_URL=https://nightcrew.example.com
# NIGHTCREW_LINK_TTL_DAYS=7

# A Slack message Slack keeps rate limiting is retried this many hours, then given up
# (logged, counted in /metrics, reported by `nightcrew doctor`).
# NIGHTCREW_SLACK_MAX_AGE_H=24
"""


def render_config(*, name: str, path: str, base: str) -> str:
    return _CONFIG.substitute(name=name, path=path, base=base)
