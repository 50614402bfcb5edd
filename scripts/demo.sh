#!/usr/bin/env bash
# Builds Eddy and the AsyncProcess plugins, runs the seed-000 scenario on the
# embedded log (no broker), walks through the API with curl and keeps serving
# until Ctrl-C. `scripts/demo.sh --exit` stops after the walk-through.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
PORT=${EDDY_PORT:-8080}
URL="http://127.0.0.1:$PORT"
STORE=$(mktemp -d)
RUST_LOG=${RUST_LOG:-warn} target/release/eddy run -c examples/async-process/eddy.toml --listen "127.0.0.1:$PORT" --store "$STORE" &
EDDY=$!
trap 'kill $EDDY 2>/dev/null; wait $EDDY 2>/dev/null; rm -rf "$STORE"' EXIT
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say "POST /async-process  (creates a process: an ACCEPTED execution is produced)"
ID=$(curl -s -XPOST "$URL/async-process" -H 'content-type: application/json' \
  -d '{"description":"import customers","params":"{\"file\":\"customers.csv\"}"}' | tee /dev/stderr |
  sed -E 's/.*"id":"([^"]+)".*/\1/')
NOW=$(date +%s%3N)
say "Executions arrive on topic async-process-execution: STARTED, then DONE"
for step in "STARTED:1" "DONE:2"; do
  state=${step%%:*}; n=${step##*:}
  curl -s -XPOST "$URL/v1/topics/async-process-execution/records" -H 'content-type: application/json' \
    -d "{\"key\":\"$ID\",\"value\":{\"id\":\"exec-$n\",\"asyncProcessId\":\"$ID\",\"time\":$((NOW + n)),\"state\":\"$state\",\"description\":\"step $n\",\"log\":\"\",\"params\":\"{}\"}}"
  echo
done
sleep 0.3
say "GET /async-process/$ID"
curl -s "$URL/async-process/$ID"; echo
say "A second process is REJECTED and routed to topic rejected-process"
ID2=$(curl -s -XPOST "$URL/async-process" -d '{"description":"export invoices"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
LATER=$(( $(date +%s%3N) + 10 ))
curl -s -XPOST "$URL/v1/topics/async-process-execution/records" \
  -d "{\"value\":{\"id\":\"exec-r\",\"asyncProcessId\":\"$ID2\",\"time\":$LATER,\"state\":\"REJECTED\",\"description\":\"no quota\"}}" >/dev/null
sleep 0.3
curl -s "$URL/v1/topics/rejected-process/records"; echo
say "GET /async-process/latest"
curl -s "$URL/async-process/latest"; echo
cat <<MSG

Eddy is running the AsyncProcess example on the embedded log. Try:
  curl $URL/async-process/latest
  curl $URL/async-process/$ID
  curl -N $URL/async-process/sse/$ID          # live updates (SSE)
  curl -XPOST $URL/async-process -d '{"description":"my job"}'
  curl $URL/v1/pipelines/async-process        # progress and lag
  curl $URL/v1/pipelines/async-process/dead-letters
  open $URL/ui/ in a browser                  # the operator's console
MSG
if [ "${1:-}" = "--exit" ]; then exit 0; fi
echo "Ctrl-C stops it."
wait $EDDY
