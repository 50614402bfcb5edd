#!/usr/bin/env bash
# The long fault runs behind docs/RELIABILITY.md: kill -9 twenty times while
# 1,000,000 AsyncProcess events stream in, on the embedded log, through a
# Kafka broker, and in a group of three hosts (a random one killed each
# time, queries running); then the fixed fault scenarios (the broker
# restarted mid-stream, the store's disk full, what real producers send) and
# the load scenarios (5,000 stalled SSE clients, hostile plugins beside a
# healthy pipeline), and 100,000 timers firing through ten kills. CI runs
# the same tests smaller.
#
#   scripts/chaos.sh                      # a new seed per scenario
#   EDDY_CHAOS_SEED=123 scripts/chaos.sh  # the same kill schedule again
#
# EDDY_CHAOS_EVENTS, EDDY_CHAOS_KILLS and EDDY_CHAOS_RATE (events/s of the
# Kafka producer) change the size. Each run's report is a JSON line in
# target/chaos-report.jsonl, printed as a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export EDDY_BIN="$PWD/target/release/eddy"
export EDDY_CHAOS_EVENTS="${EDDY_CHAOS_EVENTS:-1000000}"
export EDDY_CHAOS_KILLS="${EDDY_CHAOS_KILLS:-20}"
export EDDY_CHAOS_RATE="${EDDY_CHAOS_RATE:-20000}"
export EDDY_CHAOS_REPORT="$PWD/target/chaos-report.jsonl"
: > "$EDDY_CHAOS_REPORT"
cargo test --release --locked -p eddy-tests --test crash --test kafka -- --nocapture kill
cargo test --release --locked -p eddy-tests --test cluster -- --nocapture hosts_killed
cargo test --release --locked -p eddy-tests --test disk --test kafka_producers
cargo test --release --locked -p eddy-tests --test kafka -- broker_restart
# The external registry unreachable for 30 s, then answering 500 and 503.
EDDY_REGISTRY_OUTAGE_SECS=30 cargo test --release --locked -p eddy-tests --test avro -- unreachable
# Load beside faults: thousands of slow and stalled SSE clients, and a
# pipeline of hostile plugins next to a healthy one (figures, same run).
env -u EDDY_CHAOS_EVENTS EDDY_SSE_STALLED="${EDDY_SSE_STALLED:-5000}" EDDY_SSE_EVENTS="${EDDY_SSE_EVENTS:-100000}" \
  cargo test --release --locked -p eddy-tests --test sse_flood -- --nocapture
env -u EDDY_CHAOS_EVENTS EDDY_NEIGHBOUR_EVENTS="${EDDY_NEIGHBOUR_EVENTS:-1000000}" \
  cargo test --release --locked -p eddy-tests --test neighbours -- --nocapture
# 100,000 timers set, the host killed while they are due and ten times
# while they fire: each fires exactly once.
env -u EDDY_CHAOS_EVENTS EDDY_TIMER_KEYS="${EDDY_TIMER_KEYS:-100000}" EDDY_TIMER_KILLS="${EDDY_TIMER_KILLS:-10}" \
  cargo test --release --locked -p eddy-tests --test timers -- --nocapture kill_9
python3 - "$EDDY_CHAOS_REPORT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = ["scenario", "seed", "events", "acknowledged", "applied", "kills", "lost",
        "applied_twice", "dead_letters", "restart_ms_mean", "restart_ms_max", "seconds"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    if "acknowledged" in r:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
print()
for r in rows:
    if "acknowledged" not in r:
        print(r["scenario"] + ": " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "scenario"))
PY
