"""`nightcrew doctor` against a working setup (real Docker, SQLite and PostgreSQL, the scripted
model server, the Slack emulator) and against each part broken in turn."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from alembic import command
from sqlalchemy import text

from bot.terminal import doctor
from storage import migrate
from storage.db import make_engine
from storage.migrate import BASELINE, alembic_config
from tests.conftest import git
from tests.llm_server import Fault, ScriptedLLM, error, reply
from tests.slack_emulator import SlackEmulator

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
NOWHERE_PG = "postgresql://postgres:postgres@127.0.0.1:1/nightcrew"
MISSING_IMAGE = "nightcrew-doctor-missing:nope"


# --- each check on its own -------------------------------------------------------------


def test_config_valid_and_invalid(tmp_path: Path, git_repo: Path) -> None:
    result, config = doctor.check_config(tmp_path / "absent.yaml", cwd=git_repo)
    assert result.status == "ok" and config is not None and list(config.repos) == ["app"]

    bad = tmp_path / "nightcrew.yaml"
    bad.write_text("repos:\n  app:\n    path: .\n    limits: {max_turns: -1}\n")
    result, config = doctor.check_config(bad)
    assert result.failed and config is None
    assert "repos.app.limits.max_turns" in result.detail
    assert result.fix and "nightcrew init" in result.fix


def test_database_reachable_behind_and_unreachable(db_url: str, tmp_path: Path) -> None:
    make_engine(db_url).dispose()  # the schema as a start creates it
    assert doctor.check_database(db_url).status == "ok"

    result = doctor.check_database(NOWHERE_PG)
    assert result.failed and "OperationalError" in result.detail
    assert "postgres:***@" in result.detail  # no password in the output
    assert result.fix and "NIGHTCREW_DATABASE_URL" in result.fix

    old = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(old)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE nudge"))
    engine.dispose()
    result = doctor.check_database(old)
    assert result.failed and "missing nudge" in result.detail

    fresh = doctor.check_database(f"sqlite:///{tmp_path / 'new' / 'n.db'}")
    assert fresh.status == "ok" and "created at first start" in fresh.detail
    assert not (tmp_path / "new").exists()  # the doctor looked, it made nothing

    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # an empty database (a new PostgreSQL one)
    make_engine(empty, create=False).connect().close()
    result = doctor.check_database(empty)
    assert result.status == "ok" and "created at first start" in result.detail

    bad = doctor.check_database("mysql://u:secret@h/db")  # no driver for it here
    assert bad.failed and "secret" not in bad.detail and "NIGHTCREW_DATABASE_URL" in bad.fix


def test_without_manifest_yml_the_scopes_still_come_from_the_manifest_list(
    tmp_path: Path,
) -> None:
    """An install without the source tree checks the same scopes manifest.yml asks for."""
    assert doctor.manifest_scopes(tmp_path / "absent.yml") == doctor.manifest_scopes()


def test_docker_engine_present_and_nowhere(
    docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, client = doctor.check_docker()
    assert result.status == "ok" and client is not None
    client.close()

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    result, client = doctor.check_docker()
    assert result.failed and client is None
    assert "tcp://127.0.0.1:1" in result.detail
    assert result.fix and "DOCKER_HOST" in result.fix and "docker.sock" in result.fix


def test_sandbox_image_present_missing_and_not_pullable(
    docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    assert doctor.check_image(docker_client, sandbox_image).status == "ok"
    missing = doctor.check_image(docker_client, MISSING_IMAGE)
    assert missing.failed and missing.detail == "not on the engine"
    assert missing.fix and "--fix" in missing.fix
    tried = doctor.provide_image(docker_client, MISSING_IMAGE)  # no such image to pull
    assert tried.failed and "cannot pull" in tried.detail


def test_model_endpoint_answers_is_down_or_talks_garbage() -> None:
    with ScriptedLLM([reply(content="OK")]) as llm:
        result = doctor.check_llm(llm.base_url, "sk-test", "some-model")
        assert result.status == "ok", result.detail
        (request,) = llm.requests
        assert request["model"] == "some-model" and request["max_tokens"] == 5
        assert llm.headers[0]["authorization"] == "Bearer sk-test"

    down = doctor.check_llm("http://127.0.0.1:9/v1", None, "m")
    assert down.failed and "connection error" in down.detail
    assert down.fix and "OPENAI_BASE_URL" in down.fix

    with ScriptedLLM([Fault(200, body="<html>a login page</html>")]) as llm:
        garbage = doctor.check_llm(llm.base_url, None, "m")
    assert garbage.failed and "not JSON" in garbage.detail

    with ScriptedLLM([error(401, "Incorrect API key provided")]) as llm:
        refused = doctor.check_llm(llm.base_url, "sk-wrong", "m")
    assert refused.failed and "Incorrect API key" in refused.detail
    assert refused.fix == "check OPENAI_API_KEY"

    unset = doctor.check_llm("http://127.0.0.1:9/v1", None, None)
    assert unset.failed and unset.fix and "NIGHTCREW_MODEL" in unset.fix


def test_slack_token_and_scopes(slack: SlackEmulator) -> None:
    wanted = doctor.manifest_scopes()
    assert "chat:write" in wanted and "commands" in wanted

    def check(token: str | None, **options: str | None) -> doctor.Result:
        options = {"app_token": slack.app_token, "signing_secret": None} | options
        return doctor.check_slack(token, api_url=slack.api_url, wanted=wanted, **options)

    good = check(slack.bot_token)
    assert good.status == "ok", good.detail
    assert f"all {len(wanted)} scopes" in good.detail

    bad = check("xoxb-revoked")
    assert bad.failed and "invalid_auth" in bad.detail
    assert bad.fix and "Bot User OAuth Token" in bad.fix

    assert check(None).status == "skip"
    no_mode = check(slack.bot_token, app_token=None)
    assert no_mode.failed and no_mode.fix and "SLACK_APP_TOKEN" in no_mode.fix


def test_a_missing_scope_is_named() -> None:
    with SlackEmulator(scopes="chat:write,commands,app_mentions:read") as slack:
        result = doctor.check_slack(
            slack.bot_token,
            api_url=slack.api_url,
            app_token=slack.app_token,
            signing_secret=None,
            wanted=doctor.manifest_scopes(),
        )
    assert result.failed
    assert "reactions:write" in result.detail and "users:read" in result.detail
    assert "chat:write" not in result.detail
    assert result.fix and "reinstall" in result.fix


# --- the command -----------------------------------------------------------------------


def run_doctor(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NIGHTCREW_", "SLACK_", "OPENAI_", "DOCKER_HOST"))
    }
    return subprocess.run(
        [NIGHTCREW, "doctor", *args],
        cwd=cwd,
        env=base | {"COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_doctor_passes_on_a_working_setup(
    git_repo: Path, pg_database: str, sandbox_image: str, slack: SlackEmulator
) -> None:
    with ScriptedLLM([reply(content="OK")]) as llm:
        env = {
            "NIGHTCREW_DATABASE_URL": pg_database,
            "NIGHTCREW_MODEL": "scripted-model",
            "OPENAI_BASE_URL": llm.base_url,
            **slack.env(),
            "SLACK_APP_TOKEN": slack.app_token,
        }
        make_engine(pg_database).dispose()
        done = run_doctor(git_repo, env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    names = ("config", "database", "docker", "disk quota", f"image {sandbox_image}", "model")
    for name in (*names, "slack"):
        assert any(line.startswith(f"✓ {name}:") for line in lines), (name, done.stdout)
    assert "all checks passed" in done.stdout and "fix:" not in done.stdout


def test_doctor_names_every_broken_part_with_a_fix(git_repo: Path, tmp_path: Path) -> None:
    (git_repo / "nightcrew.yaml").write_text("repos:\n  app:\n    path: .\n    colour: red\n")
    env = {
        "NIGHTCREW_DATABASE_URL": NOWHERE_PG,
        "DOCKER_HOST": "tcp://127.0.0.1:1",
        "NIGHTCREW_MODEL": "m",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "SLACK_BOT_TOKEN": "xoxb-nope",
        "SLACK_APP_TOKEN": "xapp-nope",
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
    }
    done = run_doctor(git_repo, env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    for name in ("config", "database", "docker", "model", "slack"):
        assert f"✗ {name}:" in out, (name, out)
    assert "repos.app.colour: unknown key" in out
    assert out.count("fix:") == 5
    assert "5 problem(s) found" in out
    assert "Traceback" not in done.stderr


def test_doctor_fix_tries_to_provide_a_missing_image(
    git_repo: Path, tmp_path: Path, sandbox_image: str
) -> None:
    (git_repo / "nightcrew.yaml").write_text(
        f"repos:\n  app:\n    path: .\n    image: {MISSING_IMAGE}\n"
    )
    git(git_repo, "status")  # still a repo
    env = {"NIGHTCREW_HOME": str(tmp_path / "home"), "NIGHTCREW_MODEL": "m"}
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    asked = run_doctor(git_repo, env)  # no terminal: no question, the fix is printed
    assert asked.returncode == 1
    assert f"✗ image {MISSING_IMAGE}: not on the engine" in asked.stdout
    assert "providing" not in asked.stdout

    fixed = run_doctor(git_repo, env, "--fix")
    assert fixed.returncode == 1
    assert f"providing {MISSING_IMAGE}" in fixed.stdout
    assert "cannot pull sandbox image" in fixed.stdout


@pytest.mark.parametrize("answer", ["n", "y"])
def test_doctor_asks_at_a_terminal_before_providing_an_image(
    answer: str, git_repo: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    (git_repo / "nightcrew.yaml").write_text(
        f"repos:\n  app:\n    path: .\n    image: {MISSING_IMAGE}\n"
    )
    primary, secondary = pty.openpty()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NIGHTCREW_", "SLACK_", "OPENAI_", "DOCKER_HOST"))
    }
    proc = subprocess.Popen(
        [NIGHTCREW, "doctor"],
        cwd=git_repo,
        env=env | {"NIGHTCREW_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    os.close(secondary)
    os.write(primary, f"{answer}\n".encode())
    output, _ = proc.communicate(timeout=120)
    os.close(primary)
    assert proc.returncode == 1
    assert f"{MISSING_IMAGE} is missing or out of date; build or pull it now?" in output
    if answer == "n":
        assert "providing" not in output and "not on the engine" in output
    else:
        assert f"providing {MISSING_IMAGE}" in output and "cannot pull" in output


def test_database_behind_is_migrated_at_start_and_newer_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nightcrew.db'}"
    engine = make_engine(url, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    result = doctor.check_database(url)
    assert result.status == "ok"
    assert f"schema at migration {BASELINE}, migrated to {migrate.head()} at the next start" in (
        result.detail
    )

    make_engine(url).dispose()  # a start
    assert f"schema complete (migration {migrate.head()})" in doctor.check_database(url).detail

    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = doctor.check_database(url)
    assert result.failed and "migration 9999" in result.detail
    assert "a newer nightcrew migrated it" in result.detail
