"""Shared ground for every process: the `nightcrew.yaml` schema and loader (schema), the
environment settings (settings), the project a command works in (project), cron in a time
zone (crontime), the commented template that `nightcrew init` writes (template) and the
executor's tunables (defaults). `bot` reads its configuration from here too. Imports only
`storage` (for the database URL and its defaults); nothing else in `executor`."""
