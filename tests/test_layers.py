"""The import rules (tests/layers.py) hold for the repo, and each rule catches its breach."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.layers import outside_references, violations

ROOT = Path(__file__).parent.parent


def test_the_house_keeps_its_import_rules() -> None:
    assert violations(ROOT) == []


def test_tests_benches_and_ci_stay_inside_the_repository() -> None:
    assert outside_references(ROOT, ["tests", "bench", ".ci"]) == []


# The composition root as a package whose modules import each other (as bot/cli/ is) ...
CLI_PACKAGE = {
    "bot/cli/__init__.py": "from bot.cli import tasks\n",
    "bot/cli/console.py": "",
    "bot/cli/tasks.py": "from bot.slack.app import SlackEnv\nfrom bot.cli.console import out\n",
}
# ... or as one module.
CLI_MODULE = {"bot/cli.py": "from bot.slack.app import SlackEnv\n"}


def _tree(tmp_path: Path, files: dict[str, str], cli: dict[str, str] = CLI_PACKAGE) -> Path:
    base = {
        "storage/__init__.py": "",
        "storage/db.py": "",
        "executor/__init__.py": "",
        "executor/config/__init__.py": "",
        "executor/config/schema.py": "from storage.db import x\n",
        "executor/sandbox/__init__.py": "",
        "executor/sandbox/container.py": "from executor.config.schema import Config\n",
        "bot/__init__.py": "",
        **cli,
        "bot/review.py": "",
        "bot/slack/__init__.py": "",
        "bot/slack/app.py": "from executor.sandbox import container\n",
    }
    for name, text in {**base, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("cli", [CLI_PACKAGE, CLI_MODULE], ids=["package", "module"])
def test_a_clean_tree_passes(tmp_path: Path, cli: dict[str, str]) -> None:
    assert violations(_tree(tmp_path, {}, cli)) == []


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"storage/db.py": "import executor.config.schema\n"}, "storage.db:1 imports executor"),
        ({"storage/db.py": "def f():\n    from bot import cli\n"}, "storage.db:2 imports bot.cli"),
        (
            {"executor/sandbox/container.py": "from bot.slack.app import SlackEnv\n"},
            "executor.sandbox.container:1 imports bot.slack.app (layers point down)",
        ),
        (
            {"bot/slack/app.py": "def f():\n    from bot.cli import config\n"},
            "imports bot.cli (nothing imports the root)",
        ),
        (
            {"bot/review.py": "from bot.cli.tasks import add\n"},
            "bot.review:1 imports bot.cli.tasks (nothing imports the root)",
        ),
        (
            {"bot/review.py": "def f():\n    from bot.cli import console\n"},
            "bot.review:2 imports bot.cli.console (nothing imports the root)",
        ),
        (
            {"executor/config/schema.py": "from executor.sandbox.container import LABEL\n"},
            "import circle between modules: executor.config.schema <-> executor.sandbox.container",
        ),
        (
            {
                "executor/config/other.py": "from executor.sandbox.container import LABEL\n",
            },
            "import circle between packages: executor.config <-> executor.sandbox",
        ),
    ],
)
def test_each_rule_catches_its_breach(tmp_path: Path, files: dict[str, str], says: str) -> None:
    found = violations(_tree(tmp_path, files))
    assert any(says in line for line in found), found


def test_a_reach_outside_the_repository_is_found(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    outside = "/".join(["..", "shared", "x"])
    (tmp_path / "tests" / "conftest.py").write_text(f'SAMPLES = ROOT / "x"\nP = "{outside}"\n')
    assert outside_references(tmp_path, ["tests"]) == [f'tests/conftest.py:2: P = "{outside}"']
