"""One planner run: a read-only look at the repo's base branch in a sandbox, then the plan.

The checkout is made on the host from the canonical repo (as the clean room's is), mounted
read-only in a sandbox without network; the planner's commands run there, never on the host.
The sandbox and the checkout are removed whatever happens. What the planner's model calls
cost is charged to the spend ledger (`charge`), whether it made a plan or not: the caller
passes a `Meter` and charges what it holds, however the run ended."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError
from sqlmodel import Session

from executor.agents.llm import LLMClient
from executor.agents.llm_reply import Usage
from executor.agents.planner import Meter, Planned, Planner, PlanUnusable
from executor.config.defaults import PLANNER_MAX_TURNS
from executor.config.schema import RepoConfig
from executor.costs.budget import Books
from executor.costs.pricing import NANOS_PER_USD, cost_nanos, price_of
from executor.git import merge, workspace
from executor.git.safe import GitError
from executor.monitoring import metrics
from executor.sandbox.container import Sandbox, SandboxError
from executor.sandbox.warm import SANDBOX_ENV
from storage import spend
from storage.plan_draft import PlanDraft


def plan_spec(
    *,
    client: docker.DockerClient,
    llm: LLMClient,
    home: Path,
    repo_name: str,
    repo: RepoConfig,
    spec: str,
    executor_id: str,
    previous: PlanDraft | None = None,
    feedback: str | None = None,
    author: str = "the requester",
    max_turns: int = PLANNER_MAX_TURNS,
    options: dict[str, Any] | None = None,
    meter: Meter | None = None,
) -> Planned:
    """The plan for `spec`, or PlanUnusable saying why (git, Docker and the model included).
    `meter`: the model calls' usage as they are made, for the caller to charge whatever this
    raises (an unexpected error carries no usage of its own)."""
    folder = workspace.private_dir(home / "plans") / secrets.token_hex(8)
    folder.mkdir()
    sandbox: Sandbox | None = None
    try:
        canonical = workspace.canonical_repo(home, repo_name, repo)
        tip = merge.rev(canonical, f"refs/heads/{repo.base_branch}")
        workspace.checkout_commit(canonical, repo.base_branch, tip, into=folder)
        sandbox = Sandbox.start(
            client,
            task_id="plan",
            executor_id=executor_id,
            workspace=folder,
            image=repo.image,
            limits=repo.limits,
            network=False,  # it reads; it has nothing to fetch
            read_only_root=True,
            env=SANDBOX_ENV,
            read_only_workspace=True,
        )
        run = Planner(
            llm, sandbox, max_turns=max_turns, options=dict(options or {}), meter=meter or Meter()
        )
        return run.propose(
            spec, repo=repo_name, previous=previous, feedback=feedback, author=author
        )
    except (GitError, workspace.WorkspaceError) as exc:
        raise PlanUnusable(f"cannot check out {repo_name} for the planner: {exc}") from None
    except SandboxError as exc:
        raise PlanUnusable(f"cannot start the planner's sandbox: {exc}") from None
    finally:
        if sandbox is not None:
            with contextlib.suppress(APIError):
                sandbox.remove()
        with contextlib.suppress(OSError, workspace.WorkspaceError):
            workspace.remove(folder)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)


def charge(
    session: Session,
    books: Books,
    *,
    repo: str,
    plan_id: int | None,
    model: str,
    usage: Usage,
) -> int | None:
    """Charge a planner run's model calls to the ledger (in the caller's transaction), as a
    task's are: the day's budgets and the digest count them. Returns the cost in nanodollars
    (None: the model has no price)."""
    nanos = cost_nanos(price_of(model, books.prices), usage)
    spend.charge_planner(
        session,
        repo=repo,
        plan_id=plan_id,
        model=model,
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        cost_nanos=nanos,
        at=books.clock(),
    )
    metrics.count_charge(usage.prompt_tokens, usage.completion_tokens, (nanos or 0) / NANOS_PER_USD)
    return nanos
