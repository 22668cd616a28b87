"""The planner, run for real: a read-only sandbox on a checkout of the base branch and a
scripted model. A good planner's plan parses; a hostile one (writes, shells out to write,
circular or oversized plans, garbage) gets nothing written and ends in a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from executor.agents.llm import LLMClient
from executor.agents.planner import Planned, PlanUnusable
from executor.config.schema import RepoConfig
from executor.pipeline.planning import plan_spec
from tests.conftest import git
from tests.llm_server import ScriptedLLM, error, reply, tool_call

FOUR: dict[str, Any] = {
    "title": "add subtraction",
    "tasks": [
        {"prompt": "add sub() to calc.py", "allowed_paths": ["calc.py"], "size": "S"},
        {"prompt": "document calc", "allowed_paths": ["docs/**"], "size": "S"},
        {"prompt": "test sub()", "allowed_paths": ["test_sub.py"], "after": [1]},
        {"prompt": "use sub() in cli", "allowed_paths": ["cli.py"], "after": [1], "size": "M"},
    ],
}


@pytest.fixture
def run_planner(
    project: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_executor: str,
) -> Iterator[Any]:
    clients: list[LLMClient] = []

    def run(llm: ScriptedLLM | str, **kw: Any) -> Planned:
        base = llm if isinstance(llm, str) else llm.base_url
        client = LLMClient(
            base_url=base, api_key=None, model="m", backoff=0.01, max_attempts=2, timeout=120
        )
        clients.append(client)
        repo = RepoConfig(path=project, base_branch="main", image=sandbox_image)
        return plan_spec(
            client=docker_client,
            llm=client,
            home=tmp_path / "home",
            repo_name="app",
            repo=repo,
            spec="add subtraction to calc",
            executor_id=test_executor,
            **kw,
        )

    yield run
    for client in clients:
        client.close()


def test_a_planner_looks_at_the_repo_and_its_plan_parses(run_planner: Any) -> None:
    with ScriptedLLM(
        [
            reply(tool_call("bash", {"command": "ls && git log --oneline | head -3"})),
            reply(tool_call("read_file", {"path": "calc.py"})),
            reply(tool_call("submit_plan", FOUR)),
        ]
    ) as llm:
        planned = run_planner(llm)
        tool_outputs = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "tool"]
    assert planned.draft.tasks[0].prompt == "add sub() to calc.py"
    assert [t.after for t in planned.draft.tasks] == [[], [], [1], [1]]
    assert "calc.py" in tool_outputs[0] and "calc with a bug" in tool_outputs[0]
    assert "def add" in tool_outputs[1]
    assert planned.turns == 3


def test_a_plan_as_json_text_parses_for_models_without_tools(run_planner: Any) -> None:
    text = "Here is the plan:\n```json\n" + json.dumps(FOUR) + "\n```"
    with ScriptedLLM([reply(content=text)]) as llm:
        assert len(run_planner(llm).draft.tasks) == 4


def test_a_hostile_planner_cannot_write_and_its_bad_plans_end_in_a_clear_error(
    run_planner: Any, project: Path
) -> None:
    before = git(project, "rev-parse", "HEAD")
    circle = {
        "title": "t",
        "tasks": [
            {"prompt": "a", "allowed_paths": ["a"], "after": [2]},
            {"prompt": "b", "allowed_paths": ["b"], "after": [1]},
        ],
    }
    huge = {"title": "t", "tasks": [{"prompt": "x", "allowed_paths": ["x"]}] * 500}
    with ScriptedLLM(
        [
            reply(tool_call("write_file", {"path": "calc.py", "content": "pwned"})),
            reply(
                tool_call("bash", {"command": "echo pwned > calc.py; touch new; git commit -am x"})
            ),
            reply(tool_call("submit_plan", circle)),
            reply(tool_call("submit_plan", huge)),
            reply(content="I think you should just do it yourself."),
        ]
    ) as llm:
        with pytest.raises(PlanUnusable) as caught:
            run_planner(llm)
        told = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] in ("tool", "user")]
    assert "the planner's answer was unusable" in str(caught.value)
    assert "neither a submit_plan call nor a JSON plan" in str(caught.value)
    assert any("'write_file' is not a planner tool" in t for t in told)
    assert any("Read-only file system" in t for t in told)
    assert any("circle: 1 -> 2 -> 1" in t for t in told)
    assert any("at most 12 items" in t for t in told)
    assert git(project, "rev-parse", "HEAD") == before
    assert git(project, "status", "--porcelain") == ""
    assert "pwned" not in (project / "calc.py").read_text()


def test_an_unreachable_model_is_a_clear_error(run_planner: Any) -> None:
    with (
        ScriptedLLM([error(400, "model not found")]) as llm,
        pytest.raises(PlanUnusable, match=r"the planner's model failed: .*model not found"),
    ):
        run_planner(llm)


def test_a_re_plan_shows_the_planner_its_last_plan_and_the_feedback(run_planner: Any) -> None:
    from storage.plan_draft import PlanDraft

    smaller = {"title": "smaller", "tasks": FOUR["tasks"][:1]}
    with ScriptedLLM([reply(tool_call("submit_plan", smaller))]) as llm:
        planned = run_planner(
            llm, previous=PlanDraft.model_validate(FOUR), feedback="one task only", author="U1"
        )
        asked = llm.requests[0]["messages"][-1]["content"]
    assert (
        "add sub() to calc.py" in asked
        and "Change it according to this feedback from U1: one task only" in asked
    )
    assert planned.draft.title == "smaller"
