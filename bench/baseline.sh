#!/usr/bin/env bash
# Side-by-side CPU per probe: the old engine (a git commit) against this working tree.
#
#   bench/baseline.sh [--commit REV] [bench.scale arguments...]
#   bench/baseline.sh --clients 1000 --agents 4 --interval 1 --duration 20
#
# REV defaults to the last commit with the old engine: HEAD if it still has
# rpc_datasource/scheduler.py, otherwise the parent of the commit that deleted it.
#
# It checks REV out into a temporary `git worktree`, runs that tree's `python -m bench.scale`
# there (PYTHONPATH = the worktree, same .venv python: requests/flask/cheroot are installed),
# then this tree's bench.scale with the same arguments, one after the other, and prints
# CPU microseconds per probe for each: process CPU seconds / probes * 1e6 over the steady
# window. The old bench reports CPU % of one core and probes/s; the figure is computed from
# those (mean % / 100 / steady probes/s * 1e6), with and without the old bench's own
# sampling cost (it read stats() of every client every 0.5 s; the new bench does not).
# Pass only arguments both versions know (the old one has no --hung, --hung-kind).
# The worktree is removed on exit, Ctrl-C included.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
last_old_engine() {
    if git -C "$repo" cat-file -e HEAD:rpc_datasource/scheduler.py 2>/dev/null; then
        echo HEAD
    else
        echo "$(git -C "$repo" rev-list -1 HEAD -- rpc_datasource/scheduler.py)^"
    fi
}

commit="$(last_old_engine)"
if [[ "${1:-}" == "--commit" ]]; then
    commit="$2"
    shift 2
fi

tmp="$(mktemp -d -t bench-baseline-XXXXXX)"
cleanup() {
    git -C "$repo" worktree remove --force "$tmp/old" >/dev/null 2>&1 || true
    git -C "$repo" worktree prune >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git -C "$repo" worktree add --detach --quiet "$tmp/old" "$commit"
echo "== old: $commit ($(git -C "$repo" rev-parse --short "$commit")) in $tmp/old"
(cd "$tmp/old" && PYTHONPATH="$tmp/old" "$python" -m bench.scale "$@" --json "$tmp/old.json") \
    || echo "(old bench exited with $?)"
echo
echo "== new: working tree $repo"
(cd "$repo" && "$python" -m bench.scale "$@" --json "$tmp/new.json") \
    || echo "(new bench exited with $?)"
echo

"$python" - "$tmp/old.json" "$tmp/new.json" <<'EOF'
"""Print CPU us per probe of both runs from their JSON reports."""
import json
import sys
from pathlib import Path


def load(path: str) -> dict | None:
    file = Path(path)
    return json.loads(file.read_text()) if file.exists() else None


old, new = load(sys.argv[1]), load(sys.argv[2])
print("== CPU per probe (process CPU s / probes * 1e6, steady window)")
if old:
    cpu, probes = old["cpu"], old["probes"]
    rate = max(1e-9, probes["steady_per_s"])
    raw = cpu["client_process_mean_pct"] / 100 / rate * 1e6
    sampling = cpu["sampling_cost_ms"] / 1000 / 0.5  # share of one core spent sampling
    net = max(0.0, cpu["client_process_mean_pct"] / 100 - sampling) / rate * 1e6
    print(
        f"  old  {raw:8.1f} us/probe ({net:.1f} without its sampling); "
        f"{cpu['client_process_mean_pct']} % of one core, {probes['steady_per_s']} probes/s"
    )
else:
    print("  old  no report")
if new:
    cpu = new["cpu"]
    print(
        f"  new  {cpu['us_per_probe']:8.1f} us/probe; "
        f"{cpu['pct_of_one_core']} % of one core, {cpu['probes_per_s']} probes/s"
    )
else:
    print("  new  no report")
EOF
