#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, the
# plugins' native tests and the end-to-end tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
EDDY_BIN="$PWD/target/release/eddy" cargo test --workspace --locked
python3 -m unittest discover -s sdk/python -v
npm test --prefix sdk/js
