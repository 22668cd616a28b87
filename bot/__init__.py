"""Front ends: the `nightcrew` command and composition root (cli), what every front end shares:
the user actions on tasks (actions) and on scheduled tasks (schedules), the scheduler that
fires digests and schedules in the bot process (scheduler); and the front ends themselves in
the subpackages `slack`, `web` and `terminal`. `bot` imports `executor` and `storage`, never
the reverse; nothing outside the `cli` package imports it, and `slack` never imports
`scheduler` (cli starts both)."""
