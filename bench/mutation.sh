#!/usr/bin/env bash
# How strong are the tests? mutmut (v3) mutates the lifecycle checks, the shared user actions
# and the Slack command handlers ([tool.mutmut] in pyproject.toml says which files and which
# fast tests), runs the tests that cover each mutant, and this prints the share killed.
# CPU heavy: not part of CI; the machine is shared, so it runs niced on two children.
# A mutant that survives is a change no test noticed: `uv run mutmut show NAME` shows it.
# mutmut 3 mutates function bodies only: the TRANSITIONS table itself (module level) is
# guarded by tests/test_lifecycle.py's hand-written table instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI=true
# --fresh: start over; else mutmut reuses the results it still trusts. Mutant names after it
# (from `uv run mutmut results`) re-check just those, e.g. survivors after new tests.
if [[ "${1:-}" == "--fresh" ]]; then
  rm -rf mutants
  shift
fi
# Its progress line rewrites itself thousands of times: keep only the last lines.
nice -n 10 uv run mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@" 2>&1 | tail -n 3 || true
uv run mutmut export-cicd-stats >/dev/null
uv run python - <<'PY'
import json
from pathlib import Path

stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
killed = stats["killed"] + stats.get("timeout", 0) + stats.get("segfault", 0)
judged = killed + stats["survived"]
print(
    f"mutants: {stats['total']}; killed {killed}, survived {stats['survived']}, "
    f"no tests {stats.get('no_tests', 0)}, skipped {stats.get('skipped', 0)}, "
    f"suspicious {stats.get('suspicious', 0)}"
)
print(f"mutation score: {100 * killed / max(judged, 1):.1f}% killed")
PY
echo "survivors: uv run mutmut results"
