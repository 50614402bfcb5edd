#!/usr/bin/env bash
# The long fault runs behind docs/RELIABILITY.md: kill -9 twenty times while
# 1,000,000 AsyncProcess events stream in, on the embedded log and through a
# Kafka broker; then the fixed fault scenarios (the broker restarted
# mid-stream, the store's disk full, what real producers send). CI runs the
# same tests with 20,000 / 100,000 events and 5 kills.
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
cargo test --release --locked -p eddy-tests --test disk --test kafka_producers
cargo test --release --locked -p eddy-tests --test kafka -- broker_restart
python3 - "$EDDY_CHAOS_REPORT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = ["scenario", "seed", "events", "acknowledged", "applied", "kills", "lost",
        "applied_twice", "dead_letters", "restart_ms_mean", "restart_ms_max", "seconds"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
PY
