"""The forge client against the emulators (real HTTP): conditional GETs, rate limits waited
out, bounded retries on 5xx, the token scrubbed from every error; the doctor's token check;
config and issue-URL validation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot import actions
from bot.slack.blocks import card
from bot.slack.handle import run_command
from bot.terminal.doctor import check_forge
from executor.config.schema import Config, ConfigError, RepoConfig, load_config
from executor.forge.connect import forge_for
from executor.forge.http import SERVER_RETRIES, ForgeError
from storage.db import transaction
from storage.models import Task
from storage.tasks import get_task, list_tasks
from tests.conftest import git
from tests.forge_emulator.fixtures import ForgeSetup
from tests.slack_emulator import slash_command
from tests.test_cli import run_process


def repo_of(forge: ForgeSetup, project: Path, **merge: object) -> RepoConfig:
    return RepoConfig(path=project, **forge.options(**merge))


def open_one(forge: ForgeSetup, project: Path) -> int:
    git(project, "branch", "nightcrew/1-x")
    git(project, "push", "-q", "origin", "nightcrew/1-x")
    with forge_for(repo_of(forge, project)) as client:
        return client.open_pr(branch="nightcrew/1-x", base="main", title="t", body="b").number


def test_an_unchanged_pr_is_read_with_a_conditional_request(
    forge: ForgeSetup, project: Path
) -> None:
    number = open_one(forge, project)
    with forge_for(repo_of(forge, project)) as client:
        first = client.get_pr(number)
        again = client.get_pr(number)
    assert first == again and first.state == "open" and first.draft
    last = [r for r in forge.emulator.requests if r.method == "GET"][-1]
    assert last.status == 304 and last.headers.get("If-None-Match")


@pytest.mark.parametrize("kind", ["reset", "retry-after"])
def test_a_rate_limit_storm_delays_but_loses_nothing(
    forge: ForgeSetup, project: Path, kind: str
) -> None:
    number = open_one(forge, project)
    forge.emulator.rate_limit_storm(3, kind)
    started = time.monotonic()
    with forge_for(repo_of(forge, project)) as client:
        pr = client.get_pr(number)
    assert pr.number == number  # the answer came, after the storm
    assert time.monotonic() - started >= 2.0  # it waited as told, not hammering the forge
    refused = [r for r in forge.emulator.requests if r.status in (403, 429)]
    assert len(refused) == 3


def test_5xx_is_retried_a_bounded_number_of_times(forge: ForgeSetup, project: Path) -> None:
    number = open_one(forge, project)
    with forge_for(repo_of(forge, project)) as client:
        client.http.sleep = lambda s: None  # the backoff's wait, not its count
        forge.emulator.server_errors(SERVER_RETRIES - 1)
        assert client.get_pr(number).number == number
        forge.emulator.server_errors(100)
        before = len(forge.emulator.requests)
        with pytest.raises(ForgeError, match="502"):
            client.close_pr(number)
    assert len(forge.emulator.requests) - before == SERVER_RETRIES


def test_the_token_is_scrubbed_from_errors_even_when_the_forge_quotes_it(
    forge: ForgeSetup, project: Path
) -> None:
    forge.emulator.echo_token = True
    with forge_for(repo_of(forge, project)) as client, pytest.raises(ForgeError) as caught:
        client.get_pr(999)  # 404, whose message quotes the request's token
    assert forge.token not in str(caught.value) and "***" in str(caught.value)


def test_doctor_checks_the_token_and_names_the_missing_scope(
    forge: ForgeSetup, project: Path
) -> None:
    repo = repo_of(forge, project)
    assert check_forge("app", repo).status == "ok"
    emu = forge.emulator
    if forge.kind == "github":
        emu.scopes = "read:org"  # type: ignore[union-attr]
        missing = "repo"
    else:
        emu.scopes = ["read_api"]  # type: ignore[union-attr]
        missing = "api"
    result = check_forge("app", repo)
    assert result.status == "fail" and f"missing scope: {missing}" in result.detail
    assert forge.token not in f"{result.detail} {result.fix}"
    env = "GITHUB_TOKEN" if forge.kind == "github" else "GITLAB_TOKEN"
    unset = check_forge("app", repo, environ={})
    assert unset.status == "fail" and env in unset.detail


def test_doctor_says_a_fine_grained_github_token_cannot_push(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.forge_emulator.github import GitHubEmulator

    monkeypatch.setenv("GITHUB_TOKEN", "github_pat_0123456789")
    with GitHubEmulator(tmp_path, token="github_pat_0123456789") as gh:
        gh.scopes, gh.can_push = None, False
        repo = RepoConfig(
            path=project,
            merge={
                "policy": "pull_request",
                "forge": "github",
                "project": gh.project,
                "api_url": gh.api_url,
            },
        )
        result = check_forge("app", repo)
    assert result.status == "fail" and "contents: write" in result.detail


def test_config_keeps_the_forge_token_out_of_the_sandbox(tmp_path: Path, project: Path) -> None:
    path = tmp_path / "nightcrew.yaml"
    path.write_text(
        f"repos:\n  app:\n    path: {project}\n    agent: command\n    agent_command: x\n"
        "    agent_env: [GITHUB_TOKEN]\n"
        "    merge: {policy: pull_request, forge: github, project: acme/app}\n"
    )
    with pytest.raises(ConfigError, match="forge token: it stays on the host"):
        load_config(path)


@pytest.mark.parametrize(
    ("merge", "says"),
    [
        ({"policy": "pull_request"}, "needs forge"),
        ({"policy": "pull_request", "forge": "github", "project": "no-slash"}, "owner/repo"),
        ({"policy": "merge", "forge": "github"}, "need policy: pull_request"),
        ({"policy": "pull_request", "forge": "bitbucket", "project": "a/b"}, "forge"),
    ],
)
def test_config_refuses_a_half_configured_forge(
    tmp_path: Path, project: Path, merge: dict, says: str
) -> None:
    import yaml

    path = tmp_path / "nightcrew.yaml"
    path.write_text(yaml.safe_dump({"repos": {"app": {"path": str(project), "merge": merge}}}))
    with pytest.raises(ConfigError, match=says):
        load_config(path)


def test_issue_urls_of_no_configured_repo_are_refused(project: Path) -> None:
    config = Config.model_validate(
        {
            "repos": {
                "app": RepoConfig(
                    path=project,
                    merge={"policy": "pull_request", "forge": "github", "project": "acme/app"},
                ),
                "lab": RepoConfig(
                    path=project,
                    merge={"policy": "pull_request", "forge": "gitlab", "project": "g/sub/p"},
                ),
            }
        }
    )
    assert actions.from_issue(config, "https://github.com/acme/app/issues/3", None) == (
        "app",
        "https://github.com/acme/app/issues/3",
    )
    lab = "https://gitlab.com/g/sub/p/-/issues/4"
    assert actions.from_issue(config, f"<{lab}|#4>", None) == ("lab", lab)
    assert actions.from_issue(config, "fix the issue in calc.py", None) is None
    for url in ("https://github.com/evil/app/issues/3", "https://evil.example/acme/app/issues/3"):
        with pytest.raises(actions.ActionError, match="issue of no repo"):
            actions.from_issue(config, url, None)
    with pytest.raises(actions.ActionError, match="issue of repo app"):
        actions.from_issue(config, "https://github.com/acme/app/issues/3", "lab")


def test_a_pr_url_that_is_not_a_plain_link_is_shown_as_text() -> None:
    task = Task(id=1, repo="app", prompt="p", requester="U1", pr_number=2, pr_state="open")
    task.pr_url = "https://x.example/a|<!channel>"
    text = "\n".join(b["text"]["text"] for b in card(task)[1] if b.get("type") == "section")
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text


def pr_config(project: Path) -> Config:
    return Config.model_validate(
        {
            "repos": {
                "app": RepoConfig(
                    path=project,
                    merge={"policy": "pull_request", "forge": "github", "project": "acme/app"},
                ),
                "web": {"path": str(project)},
            },
            "default_repo": "web",
        }
    )


def test_slash_agent_add_with_an_issue_url_queues_it_on_the_issues_repo(
    engine: Engine, project: Path
) -> None:
    url = "https://github.com/acme/app/issues/12"
    answer = run_command(engine, pr_config(project), slash_command(f"add {url}"))
    assert "queued task 1 on app" in answer["text"]
    with transaction(engine) as s:
        queued = get_task(s, 1)
    assert (queued.repo, queued.issue_url) == ("app", url)
    with pytest.raises(actions.ActionError, match="issue of no repo"):  # and nothing written
        run_command(
            engine, pr_config(project), slash_command("add https://github.com/x/y/issues/1")
        )
    with transaction(engine) as s:
        assert [t.id for t in list_tasks(s)] == [1]


def test_nightcrew_add_with_an_issue_url(git_repo: Path, tmp_path: Path) -> None:
    (git_repo / "nightcrew.yaml").write_text(
        "repos:\n  app:\n    path: .\n"
        "    merge: {policy: pull_request, forge: gitlab, project: grp/app}\n"
    )
    url = "https://gitlab.com/grp/app/-/issues/7"
    added = run_process(git_repo, tmp_path / "home", "add", url)
    assert added.returncode == 0, added.stderr
    shown = run_process(git_repo, tmp_path / "home", "show", "1")
    assert url in shown.stdout and "app" in shown.stdout
    refused = run_process(git_repo, tmp_path / "home", "add", "https://gitlab.com/x/y/-/issues/1")
    assert refused.returncode == 1 and "issue of no repo" in refused.stderr


def test_nightcrew_doctor_names_the_forge_tokens_missing_scope(
    forge: ForgeSetup, project: Path, tmp_path: Path
) -> None:
    import yaml

    merge = forge.options()["merge"]
    (project / "nightcrew.yaml").write_text(
        yaml.safe_dump({"repos": {"app": {"path": ".", "merge": merge}}})
    )
    ok = run_process(project, tmp_path / "home", "doctor")
    said = " ".join(ok.stdout.split())
    assert f"forge app ({forge.kind} {forge.emulator.project})" in said and "may push" in said
    if forge.kind == "github":
        forge.emulator.scopes = "gist"  # type: ignore[union-attr]
    else:
        forge.emulator.scopes = ["read_user"]  # type: ignore[union-attr]
    missing = run_process(project, tmp_path / "home", "doctor")
    assert missing.returncode == 1
    said = " ".join(missing.stdout.split())  # rich wraps long lines
    assert "missing scope: " + ("repo" if forge.kind == "github" else "api") in said
    assert forge.token not in missing.stdout + missing.stderr
