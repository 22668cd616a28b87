"""The Slack front end: `/agent` parsing (commands), Block Kit rendering (blocks), the Bolt app
and its listeners (app, listeners), and outbox delivery to Slack (notifier)."""
