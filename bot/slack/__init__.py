"""The Slack front end: `/agent` parsing (commands), Block Kit rendering (blocks, digest), the
digest's due times and queueing (digest_send), the
Bolt app and its clients (app), its listeners and their database side (listeners, handle), how
it runs: Socket Mode, HTTP workers, notifier thread (run, http_server), and outbox delivery to
Slack (notifier). Imports `bot.actions`, `bot.schedules`, `executor` and `storage`."""
