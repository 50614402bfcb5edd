#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, the
# plugins' native tests and the end-to-end tests against the real binary.
set -euo pipefail
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cd "$(dirname "$0")/.."
scripts/build.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The tests build in the release profile: they reuse the dependencies that the
# release binary already compiled (one build of wasmtime, not two), which saves
# minutes and gigabytes.
EDDY_BIN="$PWD/target/release/eddy" cargo test --workspace --release --locked
# The benchmark harness and the criterion benchmarks build (they run in scripts/bench.sh).
cargo bench --locked -p eddy-bench --bench micro --no-run
python3 -m unittest discover -s sdk/python -v
npm test --prefix sdk/js
