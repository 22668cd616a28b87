"""The executor: runs queued tasks. It claims a task from the database, gives it a git
workspace and a locked-down Docker sandbox, runs an agent, enforces the pipeline (scope,
checks, review, approval, merge) and records every step back in the database.

Subpackages, lowest first (each imports only those before it, and `storage`): `config`
(shared settings), `monitoring`, `git`, `sandbox`, `agents`, `costs`, `pipeline`, `runner`.
`executor` never imports `bot`; `tests/test_layers.py` holds these rules."""
