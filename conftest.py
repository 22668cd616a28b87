"""Shared test fixtures, registered once here so pytest imports (and assert-rewrites) them
before any test module: Docker and the sandbox image, workers on a scripted model, the
Slack emulator, the `nightcrew` command in-process, and the forge emulators."""

pytest_plugins = [
    "tests.docker_fixtures",
    "tests.worker_fixtures",
    "tests.slack_fixtures",
    "tests.cli_fixtures",
    "tests.web_fixtures",
    "tests.forge_emulator.fixtures",
    "tests.agent_fixtures",
    "tests.outage_fixtures",
]
