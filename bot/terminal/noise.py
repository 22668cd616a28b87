"""What reaches the console from logging and `warnings`: nightcrew's own warnings and errors,
and the libraries' errors; the libraries' warnings and notes (Slack Bolt, APScheduler, httpx,
Docker, Alembic, ...) only with `nightcrew --verbose`. A person running `nightcrew up` should
see what nightcrew says, not "As you gave client as well, token will be unused"."""

from __future__ import annotations

import logging
import warnings

OURS = ("bot", "executor", "storage")
FORMAT = "%(levelname)s %(name)s: %(message)s"


class _OnlyOursBelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return record.name.split(".", 1)[0] in OURS


def configure(verbose: bool) -> None:
    """Set up the console's logging once per process, before anything logs."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "nightcrew", False)]:
        root.removeHandler(old)  # configured again (tests run many commands in one process)
    handler.nightcrew = True  # type: ignore[attr-defined]
    if verbose:
        root.setLevel(logging.INFO)
    else:
        root.setLevel(logging.WARNING)
        handler.addFilter(_OnlyOursBelowError())
        warnings.simplefilter("ignore")  # deprecation notes and the like are the libraries'
    root.addHandler(handler)
