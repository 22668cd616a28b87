"""The web front end: a read-only page per task (state, prompt and nudges, the conversation,
the whole diff highlighted by Pygments, checks with the commit they ran on, the review and
its findings linked to their lines, risk, approvals; live while the task runs) and the
review queue, riskiest first (bot/review.py). Server-rendered with Jinja2 (autoescape on;
agent text is only ever text), a few lines of JavaScript for live updates, no build step.
Every page is behind a signed, expiring link (bot/links.py); approving stays in Slack and
the CLI. Served from a thread of `nightcrew up` and `nightcrew bot` (`web_pages` in
bot/cli/ports.py)."""
