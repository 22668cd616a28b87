"""Shared test fixtures, registered once here so pytest imports (and assert-rewrites) them
before any test module: Docker and the sandbox image, workers on a scripted model, and the
Slack emulator."""

pytest_plugins = [
    "tests.docker_fixtures",
    "tests.worker_fixtures",
    "tests.slack_fixtures",
    "tests.agent_fixtures",
]
