#!/usr/bin/env bash
# Builds the eddy binary (release) and every plugin under plugins/ into
# target/plugins/<name>.wasm with the project's own `eddy plugin build`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p eddy
# The Rust plugins (Python and JavaScript ones are built by the tests and by
# `eddy plugin build plugins/python/<name>` / `plugins/js/<name>`).
for dir in plugins/*/; do
  [ -f "$dir/Cargo.toml" ] || continue
  name=$(basename "$dir")
  target/release/eddy plugin build "$dir" --out "target/plugins/$name.wasm" >/dev/null
done
