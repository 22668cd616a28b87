"""What a sandbox exec runs inside the container and how its answers are read: the shell
wrapper around every command, the cgroup kill counters, and the capped output."""

from __future__ import annotations

from collections.abc import Iterable

# Runs the command under coreutils/busybox `timeout` in its own process group, then kills what
# is left of that group: a command's background processes (a fork bomb's included) do not
# outlive it; only processes that detach with `setsid` do. Only builtins after the command,
# so the cleanup works even while the PID limit is exhausted. $0 = timeout (s), $1 = command.
# (dash's `kill` takes no `--`.)
WRAPPER = """\
s=sh; command -v bash >/dev/null 2>&1 && s=bash
command -v timeout >/dev/null 2>&1 || exec "$s" -c "$1"
timeout -s KILL "$0" "$s" -c "$1" & p=$!
wait "$p"; rc=$?
kill -9 "-$p" 2>/dev/null
exit "$rc"
"""

# The container's cgroup counts OOM kills and refused forks; these only grow, so a command
# that raised one was killed by that limit. cgroup v1 and v2 paths; builtins only (see above).
COUNTERS = """\
echo counters
for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events \\
         /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do
    [ -r "$f" ] && while read -r k v; do echo "${f##*/} $k $v"; done < "$f"
done
true
"""
_COUNTER_KEYS = {
    ("memory.oom_control", "oom_kill"): "oom",
    ("memory.events", "oom_kill"): "oom",
    ("pids.events", "max"): "pids",
}
NO_COUNTS = {"oom": 0, "pids": 0}


def parse_counters(raw: str) -> dict[str, int] | None:
    """`{"oom": kills by the OOM killer, "pids": forks refused at the PID limit}` (0 where
    the host has no such counter), or None when the probe did not run (e.g. no free PID)."""
    lines = raw.splitlines()
    if "counters" not in lines:
        return None
    counts = dict(NO_COUNTS)
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit() and (parts[0], parts[1]) in _COUNTER_KEYS:
            counts[_COUNTER_KEYS[parts[0], parts[1]]] = int(parts[2])
    return counts


class CappedOutput:
    """The head and tail halves of a stream; the middle of a flood is counted, not kept."""

    def __init__(self, limit: int) -> None:
        self.half = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0

    def drain(self, stream: Iterable[bytes]) -> None:
        try:
            for chunk in stream:
                self.add(chunk)
        except Exception:  # a stream broken by kill/restart: keep what arrived; the
            pass  # exit code (or its absence) tells the rest

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if (excess := len(self.tail) - self.half) > 0:
            del self.tail[:excess]
            self.cut += excess

    def text(self) -> str:
        middle = f"\n[... {self.cut} bytes of output cut ...]\n" if self.cut else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")
