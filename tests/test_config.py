"""nightcrew.yaml: a full config loads; every kind of mistake names file, key and reason."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from executor.config.schema import ConfigError, ConfigWatch, load_config
from executor.config.template import render_config

FULL = """\
repos:
  app:
    path: app
    base_branch: main
    setup: ["pip install -e ."]
    checks: ["pytest -q"]
    review: {enabled: true, max_rounds: 3}
    allowed_paths: ["src/**"]
    limits: {max_turns: 10, max_cost_usd: 1.5, memory: 512m}
    merge: {policy: squash}
    approvers: [U222]
  lib:
    url: https://example.com/lib.git
    base_branch: trunk
default_repo: app
channels: {C111: lib}
digest: {cron: "30 7 * * 1-5", timezone: Europe/Berlin, channels: [C111]}
budgets: {daily_usd: 20, repo_daily_usd: {app: 5}}
prices: {local-llama: {prompt: 0.1, completion: 0.3}}
"""


def write(dir_: Path, text: str) -> Path:
    path = dir_ / "nightcrew.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_full_config_loads_with_paths_resolved(git_repo: Path) -> None:
    config = load_config(write(git_repo.parent, FULL))
    app = config.repos["app"]
    assert app.path == git_repo.resolve()
    assert (app.limits.max_turns, app.limits.memory, app.merge.policy) == (10, "512m", "squash")
    assert app.limits.pids == 512  # untouched defaults stay
    assert config.prices["local-llama"].completion == Decimal("0.3")
    assert config.budgets.repo_daily_usd == {"app": Decimal(5)}
    assert config.repo_for(channel="C111") == "lib"
    assert config.repo_for() == "app"
    assert config.repo_for("lib") == "lib"
    with pytest.raises(ConfigError, match="unknown repo 'nope'; known repos: app, lib"):
        config.repo_for("nope")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("repos:\n  app:\n    path: app\n    chekcs: [x]\n", "repos.app.chekcs: unknown key"),
        (
            "repos:\n  app:\n    path: app\n    limits: {max_turns: -1}\n",
            "repos.app.limits.max_turns: Input should be greater than 0 (got -1)",
        ),
        (
            "repos:\n  app:\n    path: app\n    merge: {policy: rebase}\n",
            "repos.app.merge.policy: Input should be 'merge', 'squash', 'ff' or 'pull_request'"
            " (got 'rebase')",
        ),
        (
            "repos:\n  app: {base_branch: main}\n",
            "repos.app: give exactly one of path (a local git repo) or url (to clone)",
        ),
        ("repos: {}\n", "repos: no repos; add at least one (a name with a path or url)"),
        ("channels: {C1: app}\n", "repos: required key is missing"),
        (
            "repos:\n  app: {path: app}\ndigest: {timezone: Mars/Olympus}\n",
            "digest: unknown timezone 'Mars/Olympus'",
        ),
        (
            "repos:\n  app: {path: app}\ndigest: {cron: '61 * * * *'}\n",
            "digest: bad cron expression '61 * * * *'",
        ),
        (
            "repos:\n  app: {path: app}\nchannels: {C1: other}\n",
            "channels.C1: 'other' is not one of the repos",
        ),
        (
            "repos:\n  app: {path: app, limits: {memory: lots}}\n",
            "repos.app.limits.memory: memory must look like 512m or 2g: a whole number and a "
            "unit k, m, g or t (got 'lots')",
        ),
        ("repos:\n  app: {path: nowhere}\n", "repos.app.path:"),
        (
            "repos:\n  app: {path: app}\nbudgets: {daily_usd: -5}\n",
            "budgets.daily_usd: Input should be greater than 0 (got -5)",
        ),
        (
            "repos:\n  app: {path: app}\nbudgets: {repo_daily_usd: {app: lots}}\n",
            "budgets.repo_daily_usd.app: Input should be a valid decimal (got 'lots')",
        ),
        (
            "repos:\n  app: {path: app}\nbudgets: {repo_daily_usd: {web: 5}}\n",
            "(top level): budgets.repo_daily_usd: 'web' is not one of the repos",
        ),
        (
            "repos:\n  app: {path: app}\nbudgets: {weekly_usd: 5}\n",
            "budgets.weekly_usd: unknown key",
        ),
        (
            "repos:\n  app: {path: app}\nprices: {my-model: {prompt: 1}}\n",
            "prices.my-model.completion: required key is missing",
        ),
        (
            "repos:\n  app: {path: app}\nprices: {my-model: {prompt: -1, completion: 2}}\n",
            "prices.my-model.prompt: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            "repos:\n  app: {path: app}\nprices: {m: {prompt: 1, completion: 2, cached: 1}}\n",
            "prices.m.cached: unknown key",
        ),
        (
            "repos:\n  app: {path: app}\nmodel_outage_minutes: -1\n",
            "model_outage_minutes: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            "repos:\n  app: {path: app}\nmodel_idle_timeout_s: 0\n",
            "model_idle_timeout_s: must be at least 1: a stream needs a moment (got 0)",
        ),
        (
            "repos:\n  app: {path: app}\nmodel_timeout_s: .inf\n",
            "model_timeout_s: must be a finite number (got inf)",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("repos:\n  app: {path: app\n", "not valid YAML"),
    ],
)
def test_errors_name_file_key_and_reason(git_repo: Path, yaml_text: str, expected: str) -> None:
    path = write(git_repo.parent, yaml_text)
    message = error_of(path)
    assert message.startswith(str(path)), message
    assert f": {expected}" in message, message


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "repos:\n  app:\n    path: [x\n  other: 1\n"))
    expected = "nightcrew.yaml: line 4, column 8: not valid YAML: expected ',' or ']', but got ':'"
    assert message.endswith(expected), message


def test_a_path_that_is_not_a_git_repo_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    message = error_of(write(tmp_path, "repos:\n  app: {path: plain}\n"))
    plain = (tmp_path / "plain").resolve()
    assert message.endswith(f"repos.app.path: {plain} is not a git repository"), message


def test_no_file_inside_a_git_repo_means_that_repo(git_repo: Path) -> None:
    (git_repo / "sub").mkdir()
    config = load_config(git_repo / "missing.yaml", cwd=git_repo / "sub")
    assert list(config.repos) == ["app"]
    assert config.repos["app"].path == git_repo
    assert config.repos["app"].base_branch == "main"
    assert config.source is None


def test_no_file_outside_a_git_repo_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not inside a git repository; run `nightcrew init`"):
        load_config(tmp_path / "nightcrew.yaml", cwd=tmp_path)


def test_the_init_template_is_a_valid_config(git_repo: Path) -> None:
    text = render_config(name="app", path=".", base="main")
    config = load_config(write(git_repo, text))
    assert config.repos["app"].path == git_repo.resolve()


def test_the_cli_exits_2_on_a_broken_config(git_repo: Path, tmp_path: Path) -> None:
    write(git_repo, "repos:\n  app:\n    path: .\n    limits: {max_turns: zero}\n")
    env = {**os.environ, "NIGHTCREW_HOME": str(tmp_path / "home")}
    env.pop("NIGHTCREW_CONFIG", None)
    nightcrew = str(Path(sys.executable).with_name("nightcrew"))
    result = subprocess.run(
        [nightcrew, "add", "do something"], cwd=git_repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "nightcrew.yaml: repos.app.limits.max_turns:" in result.stderr
    assert "valid integer" in result.stderr


def test_the_models_waits_come_from_the_file_and_the_environment_wins(
    git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.cli.composition import model_waits
    from executor.config.settings import Settings

    path = write(
        git_repo.parent,
        "repos:\n  app: {path: app}\nmodel_outage_minutes: 5\nmodel_idle_timeout_s: 20\n",
    )
    config = load_config(path)
    for name in ("MODEL_OUTAGE_MINUTES", "MODEL_IDLE_TIMEOUT_S", "MODEL_TIMEOUT_S"):
        monkeypatch.delenv(f"NIGHTCREW_{name}", raising=False)
    assert model_waits(config, Settings()) == {
        "outage_window": 300,
        "idle_timeout": 20,
        "timeout": 180,  # the default
    }
    monkeypatch.setenv("NIGHTCREW_MODEL_OUTAGE_MINUTES", "0")  # park at the first failure
    monkeypatch.setenv("NIGHTCREW_MODEL_TIMEOUT_S", "90")
    assert model_waits(config, Settings()) == {
        "outage_window": 0,
        "idle_timeout": 20,
        "timeout": 90,
    }


def test_a_watched_config_says_when_a_broken_edit_is_mended(
    tmp_path: Path, git_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nightcrew.yaml"
    path.write_text(f"repos:\n  app:\n    path: {git_repo}\n")
    watch = ConfigWatch(path, load_config(path))
    path.write_text("repos: [oops\n")
    assert list(watch().repos) == ["app"]  # the last good one
    assert "is not valid; keeping the previous config" in caplog.text
    path.write_text(f"repos:\n  web:\n    path: {git_repo}\n")
    assert list(watch().repos) == ["web"]
    assert f"{path} is valid again; using it" in caplog.text
