"""What a sandbox exec runs inside the container and how its answers are read: the shell
wrapper around every command, the cgroup kill counters, and the capped output."""

from __future__ import annotations

from collections.abc import Iterable

# Runs the command under coreutils/busybox `timeout` in its own process group, then kills what
# is left of that group, and then every other process of the agent's uid that is still there:
# what escaped the group (setsid, nohup and a double fork, a nested `timeout`, which makes a
# group of its own) dies with the command too. The keepalive (PID 1 and its sleep) runs as
# another uid, out of reach. $0 = timeout (s), $1 = command, $2 = what survives the command:
#   all     nothing: `kill -9 -1` (every process we may signal except this shell)
#   none    everything that left the group (only for Sandbox.spawn, host-written)
#   <sid>   the processes of that session and their descendants (a spawned external agent,
#           between its polls; its tools may run a command in a session of their own, e.g.
#           on a pseudo-terminal); what left that tree (a double fork: PID 1 adopts it) dies.
#           The kill pass checks each process again: one forked after the tree was listed
#           (pids grow, so its parent was seen first) is the agent's too.
# Only builtins after the command, so the cleanup works even while the PID limit is
# exhausted; a fork racing the kill fails, so two rounds finish a fork bomb. /proc/<pid>/stat
# is read from its last ")": the agent chooses its processes' names. (dash's `kill` takes no
# `--`.)
WRAPPER = """\
s=sh; command -v bash >/dev/null 2>&1 && s=bash
command -v timeout >/dev/null 2>&1 || exec "$s" -c "$1"
keep=$2
timeout -s KILL "$0" "$s" -c "$1" & p=$!
wait "$p"; rc=$?
kill -9 "-$p" 2>/dev/null
case $keep in
none) ;;
all) kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null ;;
*) for round in 1 2 3; do
     tree=" "
     for pass in 1 2 3 4 5 6 7 8; do
       grew=
       for d in /proc/[0-9]*; do
         p=${d#/proc/}
         case $tree in *" $p "*) continue ;; esac
         read -r l 2>/dev/null < "$d/stat" || continue
         set -- ${l##*) }
         case "$4:$tree" in "$keep:"*|*" $2 "*) tree="$tree$p "; grew=1 ;; esac
       done
       [ -n "$grew" ] || break
     done
     for d in /proc/[0-9]*; do
       p=${d#/proc/}
       [ "$p" = "$$" ] && continue
       case $tree in *" $p "*) continue ;; esac
       read -r l 2>/dev/null < "$d/stat" || continue
       set -- ${l##*) }
       case "$4:$tree" in "$keep:"*|*" $2 "*) tree="$tree$p "; continue ;; esac
       [ "$1" = Z ] || kill -9 "$p" 2>/dev/null
     done
   done ;;
esac
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
