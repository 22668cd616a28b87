"""Limits cannot be configured away by accident: a value in `limits:` that would mean
"unlimited", "nothing can run" or "not what you meant" is a config error naming the file, the
key and the reason, never a silent default of the engine (Docker reads a CPU quota of 0 or a
PID limit of 0 as "no limit")."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.config.schema import ConfigError, Limits, load_config


def config_with(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "nightcrew.yaml"
    path.write_text(f"repos:\n  app:\n    url: https://example.com/app.git\n    limits: {limits}\n")
    return path


@pytest.mark.parametrize(
    ("limits", "key", "why"),
    [
        ("{memory: 0}", "memory", "at least"),
        ("{memory: '0g'}", "memory", "at least"),
        ("{memory: 1k}", "memory", "at least"),
        ("{memory: 5000t}", "memory", "at most"),
        ("{memory: 100000g}", "memory", "at most"),
        ("{memory: 2gb}", "memory", "unit"),
        ("{memory: 2 GiB}", "memory", "unit"),
        ("{memory: 2048}", "memory", "unit"),
        ("{memory: -1g}", "memory", "unit"),
        ("{cpus: 0.000001}", "cpus", "at least"),
        ("{cpus: 0}", "cpus", "at least"),
        ("{cpus: -2}", "cpus", "at least"),
        ("{cpus: .inf}", "cpus", "finite"),
        ("{cpus: .nan}", "cpus", "finite"),
        ("{cpus: 100000}", "cpus", "at most"),
        ("{pids: 0}", "pids", "at least"),
        ("{pids: -1}", "pids", "at least"),
        ("{pids: 1}", "pids", "at least"),
        ("{pids: 100000000000}", "pids", "at most"),
        ("{pids: 2.5}", "pids", "integer"),
        ("{disk: 0}", "disk", "at least"),
        ("{disk: 1m}", "disk", "at least"),
        ("{disk: 10gb}", "disk", "unit"),
        ("{disk: 1000000t}", "disk", "at most"),
        ("{command_timeout_s: 0}", "command_timeout_s", "at least"),
        ("{command_timeout_s: 0.0001}", "command_timeout_s", "at least"),
        ("{command_timeout_s: .inf}", "command_timeout_s", "finite"),
        ("{command_timeout_s: 100000000}", "command_timeout_s", "at most"),
        ("{max_wall_minutes: .inf}", "max_wall_minutes", "finite"),
        ("{max_wall_minutes: 0}", "max_wall_minutes", "greater than 0"),
        ("{max_wall_minutes: 100000000}", "max_wall_minutes", "at most"),
        ("{max_cost_usd: .inf}", "max_cost_usd", "finite"),
        ("{max_cost_usd: -5}", "max_cost_usd", "greater than 0"),
        ("{max_turns: 0}", "max_turns", "greater than 0"),
        ("{max_tokens: 100000000000000}", "max_tokens", "at most"),
    ],
)
def test_a_limit_that_would_not_limit_is_a_config_error(
    tmp_path: Path, limits: str, key: str, why: str
) -> None:
    path = config_with(tmp_path, limits)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: repos.app.limits.{key}: " in message, message
    assert why in message, message


def test_sane_limits_load_normalised(tmp_path: Path) -> None:
    limits = "{memory: 512M, cpus: 0.5, pids: 64, disk: 20G, command_timeout_s: 30}"
    loaded = load_config(config_with(tmp_path, limits)).repos["app"].limits
    assert (loaded.memory, loaded.cpus, loaded.pids, loaded.disk) == ("512m", 0.5, 64, "20g")
    assert Limits().disk == "10g"  # the default quota
    assert Limits().memory_bytes == 2 * 1024**3
