"""Docker sandboxes: the locked-down container per task (container), command execution with
timeouts, caps and kill reasons (execution), the sandbox image (image) and what it is built
from (recipe), and warm spares started ahead of demand (warm). Imports `config` and `git` (a
sandbox owns its workspace folder)."""
