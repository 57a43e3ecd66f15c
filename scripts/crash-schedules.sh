#!/usr/bin/env bash
# The long crash-safety run (README, Crash safety): N seeded kill schedules over real
# processes (tests/integration/crashes.py), from seed FIRST; prints one line per schedule and
# a summary, and exits non-zero if any schedule lost or changed an output (its seed is named).
# Usage: bash scripts/crash-schedules.sh [N=50] [FIRST=1]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
N="${1:-50}"
FIRST="${2:-1}"
REPORT="${CRASH_REPORT:-$(mktemp)}"  # JSON lines, one per schedule (problems in full)
[ -n "${CRASH_REPORT:-}" ] || trap 'rm -f "$REPORT"' EXIT
status=0
CRASH_SCHEDULES="$N" CRASH_SEED="$FIRST" CRASH_REPORT="$REPORT" \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_crash_schedules.py \
    || status=$?
.venv/bin/python - "$REPORT" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
bad = [r for r in rows if r["problems"]]
for r in rows:
    s = r["schedule"]
    print(f"seed {s['seed']:>4}: chunk {s['chunk']}, checkpoint every {s['every']:>2}, "
          f"{s['streams']} streams x {s['frames']} frames, "
          f"{'realtime' if s['realtime'] else 'full speed'}, kills {'+'.join(s['kills'])} "
          f"({r['kills']} done): resent {r['resent']}, duplicates {r['duplicates']}, "
          f"{r['seconds']} s, {'FAILED' if r['problems'] else 'ok'}")
kills = sum(r["kills"] for r in rows)
outputs = sum(r["schedule"]["streams"] * r["schedule"]["frames"] * 4 for r in rows)
print(f"summary: {len(rows)} schedules, {kills} worker kills, {outputs} outputs checked, "
      f"{len(bad)} failed"
      + (f" (seeds {', '.join(str(r['schedule']['seed']) for r in bad)})" if bad else "")
      + f"; median {statistics.median(r['seconds'] for r in rows):.1f} s per schedule")
PY
exit "$status"
