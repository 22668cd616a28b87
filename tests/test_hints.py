"""Hints name what the user has, and the console carries nightcrew's words, not the
libraries': real processes, the Slack emulator for the bot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from bot.terminal.doctor import MANIFEST, manifest_scopes
from tests.slack_emulator import SlackEmulator
from tests.slack_fixtures import start_bot
from tests.test_cli import NIGHTCREW


def test_slack_manifest_prints_the_shipped_manifest_anywhere(tmp_path: Path) -> None:
    """Outside nightcrew's checkout (the user's own folder) the hint still works."""
    result = subprocess.run(
        [NIGHTCREW, "slack-manifest"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == MANIFEST.read_text(encoding="utf-8")
    manifest = yaml.safe_load(result.stdout)
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/agent"]
    assert manifest["oauth_config"]["scopes"]["bot"] == manifest_scopes()
    assert "bot/" in MANIFEST.as_posix() and "site-packages" not in result.stderr


def test_the_bot_without_a_token_points_at_the_command_not_a_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    result = subprocess.run(
        [NIGHTCREW, "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "`nightcrew slack-manifest`" in result.stderr and "manifest.yml" not in result.stderr


def test_library_warnings_stay_off_the_console_unless_verbose(
    tmp_path: Path, git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bolt warns "As you gave `client` as well, `token` will be unused" at every start."""
    config = tmp_path / "nightcrew.yaml"
    config.write_text(f"repos:\n  api:\n    path: {git_repo}\n")
    said: dict[bool, str] = {}
    for verbose in (False, True):
        with SlackEmulator() as slack:
            monkeypatch.setenv("NIGHTCREW_VERBOSE", "1" if verbose else "0")
            proc = start_bot(slack, tmp_path / f"home{verbose}", config)
            try:
                slack.wait_connected(timeout=60)
            finally:
                proc.terminate()
                said[verbose] = proc.communicate(timeout=30)[0]
    assert "will be unused" in said[True], said[True]  # the library did say it
    assert "will be unused" not in said[False], said[False]
    assert "WARNING" not in said[False]
