"""`nightcrew plan`: a spec cut into small dependent tasks by the planner, and queued;
`nightcrew show p<id>` shows a plan (`show_plan`)."""

from __future__ import annotations

import typer
from rich.markup import escape

from bot import actions
from bot.actions import ActionError
from bot.cli.composition import (
    config,
    engine,
    llm_client,
    local_user,
    model_name,
    settings,
    signer,
)
from bot.cli.console import err, out, user_errors
from executor.config.schema import ConfigError
from storage.db import transaction


def show_plan(plan_id: str) -> None:
    """`nightcrew show p<id>`: the plan's tasks and their states, else its proposal or why
    there is none; and its page's link."""
    from bot.terminal import plans as plan_render
    from storage.plans import draft_of, get_plan, plan_tasks

    with user_errors():
        pid = actions.parse_task_id(plan_id)
        with transaction(engine()) as session:
            plan = get_plan(session, pid)
            tasks = plan_tasks(session, pid)
            shown = (
                plan_render.progress(plan, tasks)
                if tasks
                else plan_render.proposal(plan, draft_of(plan))
                if plan.proposal
                else f"plan {pid} is {plan.status}" + (f": {plan.error}" if plan.error else "")
            )
    out.print(shown)
    out.print(f"page: {signer().plan_url(pid, local_user())}", soft_wrap=True, markup=False)


def plan(
    spec: str = typer.Argument("", help="What to build; the planner cuts it into tasks."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Queue the plan's tasks at once."),
    queue: int = typer.Option(0, "--queue", help="Queue the proposed plan with this id."),
) -> None:
    """Cut a spec into small dependent tasks (a planner run, read-only in a sandbox), print
    the plan; `--yes` (or later `--queue ID`) queues all of it in one go."""
    from bot import plans as plan_actions
    from bot.terminal import plans as plan_render
    from executor.agents.planner import Meter, PlanUnusable
    from executor.costs.budget import Books
    from executor.costs.plan_estimate import estimate_nanos, over_budget, planning_refused
    from executor.pipeline.planning import charge as charge_planning
    from executor.pipeline.planning import plan_spec
    from executor.runner.fleet import connect_docker, new_executor_id
    from executor.sandbox.container import SandboxError
    from storage.plans import create_plan

    with user_errors():
        if queue:
            with transaction(engine()) as session:
                message = plan_actions.queue_all(session, queue, actor=local_user())
            out.print(message)
            return
        text = actions.clean_text(spec, what="spec")
        cfg, env = config(), settings()
        try:
            name = cfg.repo_for(repo)
        except ConfigError as exc:
            raise ActionError(str(exc)) from None
        model = model_name(cfg, env)
        books = Books.of(cfg)
        with transaction(engine()) as session:
            refused = planning_refused(session, books, name)
        if refused:
            raise ActionError(refused)
        llm = llm_client(cfg, env)
        meter = Meter()  # what the planner's model calls used, however its run ends
        try:
            try:
                with llm:
                    planned = plan_spec(
                        client=connect_docker(),
                        llm=llm,
                        home=env.home,
                        repo_name=name,
                        repo=cfg.repos[name],
                        spec=text,
                        executor_id=new_executor_id(engine()),
                        meter=meter,
                    )
            except BaseException:  # no plan (unusable, a crash, Ctrl-C), but the calls were made
                with transaction(engine()) as session:
                    charge_planning(
                        session, books, repo=name, plan_id=None, model=model, usage=meter.usage
                    )
                raise
        except (PlanUnusable, SandboxError) as exc:
            raise ActionError(str(exc)) from None
        with transaction(engine()) as session:
            made = create_plan(
                session, repo=name, spec=text, draft=planned.draft, requester=local_user()
            )
            assert made.id is not None
            charge_planning(
                session, books, repo=name, plan_id=made.id, model=model, usage=meter.usage
            )
            estimate = estimate_nanos(planned.draft, cfg.repos[name])
            note = over_budget(session, books, name, estimate)
        out.print(plan_render.proposal(made, planned.draft))
        if note:  # said before anything is queued
            err.print(f"[yellow]warning:[/yellow] {escape(note)}")
        message = None
        if yes:
            with transaction(engine()) as session:
                message = plan_actions.queue_all(session, made.id, actor=local_user())
        out.print(message or f"queue it with: nightcrew plan --queue {made.id}")
