"""The terminal front end's pieces: rich renderings of tasks, events, budgets and the digest
(render, pure), and `nightcrew doctor`'s checks (doctor). The typer commands that use them are
in bot/cli/, the composition root."""
