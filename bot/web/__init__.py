"""The web front end (task pages, the review queue): read-only pages behind signed, expiring
links, served beside the Slack front end over the same actions in `bot.actions`. Empty so far:
the review-from-the-phone work fills it."""
