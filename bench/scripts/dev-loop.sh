#!/usr/bin/env bash
# Save → live with `eddy dev`: scaffolds a Rust aggregator, runs a host with
# it, starts `eddy dev` against the host, then saves N edits that change the
# plugin's code (each keeps its fixture passing) and reports the times
# `eddy dev` printed from save to live (after the first build), with their
# split into build, fixtures and deploy.
#
#   bench/scripts/dev-loop.sh [EDITS]      (default 10)
set -euo pipefail
edits=${1:-10}
root=$(cd "$(dirname "$0")/../.." && pwd)
eddy="$root/target/release/eddy"
[ -x "$eddy" ] || cargo build --release -p eddy --manifest-path "$root/Cargo.toml"
export CARGO_TARGET_DIR="$root/target"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
"$eddy" plugin new --lang rust dev-bench >/dev/null
sed -i '1a match = "partial"' dev-bench/fixtures/example.toml
python3 - <<'PY'
p = "dev-bench/src/lib.rs"
s = open(p).read()
s = s.replace("    pub last: serde_json::Value,\n", "    pub last: serde_json::Value,\n    #[serde(default)]\n    pub rev: u64,\n", 1)
s = s.replace("state.count += 1;", "state.count += 1;\n        state.rev = 0;", 1)
open(p, "w").write(s)
PY
"$eddy" plugin build dev-bench >/dev/null 2>&1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > eddy.toml <<TOML
[store]
path = "store"
[http]
listen = "127.0.0.1:$port"
[[plugin]]
name = "dev-bench"
path = "$root/target/plugins/dev-bench.wasm"
[[pipeline]]
name = "tally"
topic = "in"
aggregator = "dev-bench"
TOML
EDDY_ADMIN_TOKEN=bench "$eddy" run -c eddy.toml >host.log 2>&1 &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
EDDY_ADMIN_TOKEN=bench "$eddy" dev dev-bench --to "http://127.0.0.1:$port" >dev.log 2>&1 &
# The first round builds the standard library for the dev profile once.
for _ in $(seq 1200); do grep -q "^live: \|not deployed" dev.log && break; sleep 0.5; done
grep -q "^live: " dev.log || { cat dev.log; exit 1; }
for i in $(seq "$edits"); do
  sed -i "s/state.rev = [0-9]*;/state.rev = $i;/" dev-bench/src/lib.rs
  for _ in $(seq 200); do [ "$(grep -c '^live: ' dev.log)" -gt "$i" ] && break; sleep 0.1; done
  sleep 0.5
done
grep '^live: ' dev.log | tail -n +2 | python3 -c '
import re, statistics, sys
rows = [tuple(int(x) for x in re.search(r"in (\d+) ms from save \(build (\d+) ms, fixtures (\d+) ms, deploy (\d+) ms\)", l).groups()) for l in sys.stdin]
if not rows:
    sys.exit("no round went live")
for name, i in (("save to live", 0), ("build", 1), ("fixtures", 2), ("deploy", 3)):
    v = sorted(r[i] for r in rows)
    print(f"{name:>13}: median {statistics.median(v):.0f} ms, min {v[0]} ms, max {v[-1]} ms ({len(v)} saves)")
'
